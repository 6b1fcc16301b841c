"""`finetune submit`: launch the job on AWS Batch or SageMaker. Needs boto3 and pydantic only."""
