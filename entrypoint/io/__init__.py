"""Storage: the one boto3 adaptor (aws.py) and the S3 and local stores behind one interface."""
