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
  description = "ARN of the ECR repository the SageMaker execution role pulls the image from."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
