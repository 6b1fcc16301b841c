variable "name" {
  description = "Prefix of the names of the roles and the instance profile, e.g. \"finetune\"."
  type        = string
}

variable "bucket_arn" {
  description = "ARN of the S3 bucket the jobs read from and write to."
  type        = string
}

variable "read_prefixes" {
  description = "Key prefixes of the bucket the jobs may only read: training data and base models. Each ends in '/'."
  type        = list(string)
  default     = ["data/", "models/"]

  validation {
    condition     = alltrue([for p in var.read_prefixes : can(regex("^[^/*].*/$", p))])
    error_message = "Each read prefix must end in '/' and start with neither '/' nor '*', e.g. \"data/\"."
  }
}

variable "write_prefixes" {
  description = "Key prefixes of the bucket the jobs may read, write and delete in: checkpoints and outputs. Each ends in '/'."
  type        = list(string)
  default     = ["checkpoints/", "outputs/"]

  validation {
    condition     = alltrue([for p in var.write_prefixes : can(regex("^[^/*].*/$", p))])
    error_message = "Each write prefix must end in '/' and start with neither '/' nor '*', e.g. \"checkpoints/\"."
  }
}

variable "repository_arn" {
  description = "ARN of the ECR repository of the image: the SageMaker execution role and the Batch hosts pull from it, and from no other."
  type        = string
}

variable "secret_arns" {
  description = "ARNs of the Secrets Manager secrets and SSM parameters that jobs name in FT_SECRETS (read by the job with its own role): the Batch job role and the SageMaker execution role may read exactly these. Give a secret's full ARN, with its 6-character suffix."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([
      for a in var.secret_arns :
      can(regex("^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^:]+(:[^:]*){0,3}|ssm:[a-z0-9-]+:[0-9]{12}:parameter/.+)$", a))
    ])
    error_message = "Each of secret_arns must be the ARN of a Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME) or an SSM parameter (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME)."
  }
}

variable "secret_kms_key_arns" {
  description = "ARNs of customer-managed KMS keys that encrypt those secrets: the job roles may decrypt with them through Secrets Manager and SSM only. Empty for AWS-managed keys."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
