variable "region" {
  description = "AWS region of everything the example creates."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of the names of the resources."
  type        = string
  default     = "finetune-example"
}

variable "bucket_name" {
  description = "Name of the S3 bucket. Null derives one from name, account ID and region."
  type        = string
  default     = null
}

variable "image_tag" {
  description = "Tag of the image in the ECR repository that the job definitions run. CI tags images by commit."
  type        = string
  default     = "main"
}

variable "source_location" {
  description = "Clone URL of the finetune repository that CodeBuild builds."
  type        = string
  default     = "https://github.com/example/finetune.git"
}

variable "availability_zone" {
  description = "Availability zone of the example subnet. Null uses the region's zone \"a\"."
  type        = string
  default     = null
}

variable "vpc_cidr" {
  description = "CIDR block of the example VPC."
  type        = string
  default     = "10.42.0.0/16"
}

variable "secrets" {
  description = "Environment variables of the Batch job definitions filled from Secrets Manager or SSM, name to ARN, e.g. { HF_TOKEN = \"arn:aws:secretsmanager:...\" } (batch module's secrets)."
  type        = map(string)
  default     = {}
}

variable "secret_arns" {
  description = "ARNs of the secrets and parameters jobs name in FT_SECRETS, which the Batch job role and the SageMaker execution role may read (iam module's secret_arns)."
  type        = list(string)
  default     = []
}

variable "aws_endpoint_url" {
  description = "Send every AWS API call to this URL instead of AWS, e.g. a moto server in tests. Null talks to AWS."
  type        = string
  default     = null
}

variable "skip_credentials_validation" {
  description = "Skip the provider's STS check of the credentials (for test endpoints)."
  type        = bool
  default     = false
}

variable "skip_requesting_account_id" {
  description = "Skip the provider's account ID lookup (for test endpoints)."
  type        = bool
  default     = false
}

variable "skip_metadata_api_check" {
  description = "Skip the provider's EC2 instance metadata lookup for credentials (for test machines)."
  type        = bool
  default     = false
}
