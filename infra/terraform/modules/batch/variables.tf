variable "name" {
  description = "Prefix of the names of the compute environments, job queues, job definitions and log group."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the GPU hosts. They need a route to S3, ECR and CloudWatch Logs (NAT gateway or VPC endpoints)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the GPU hosts."
  type        = list(string)
}

variable "instance_types" {
  description = "GPU instance types of the spot compute environment. Several types deepen the spot pools SPOT_CAPACITY_OPTIMIZED can choose from."
  type        = list(string)
  default     = ["g5.xlarge", "g5.2xlarge", "g6.xlarge", "g6.2xlarge", "g4dn.xlarge", "g4dn.2xlarge"]
}

variable "on_demand_instance_types" {
  description = "GPU instance types of the on-demand compute environment, the queue's fallback and the only capacity multi-node jobs run on. Null uses instance_types."
  type        = list(string)
  default     = null
}

variable "spot_max_vcpus" {
  description = "Upper bound of vCPUs the spot compute environment scales to."
  type        = number
  default     = 64
}

variable "on_demand_max_vcpus" {
  description = "Upper bound of vCPUs the on-demand compute environment scales to. 0 disables the fallback in practice."
  type        = number
  default     = 16
}

variable "root_volume_size_gib" {
  description = "Size of the hosts' encrypted root volume, which holds the image, the model and local checkpoints."
  type        = number
  default     = 200
}

variable "stop_timeout_seconds" {
  description = "Seconds the ECS agent waits between SIGTERM and SIGKILL, for the final checkpoint upload (the job gets it as FT_STOP_GRACE_SECONDS). Spot gives a 2-minute notice, so stay below 120."
  type        = number
  default     = 110
}

variable "instance_profile_arn" {
  description = "ARN of the instance profile of the GPU hosts (iam module output instance_profile_arn)."
  type        = string
}

variable "service_role_arn" {
  description = "ARN of the Batch service role (iam module output batch_service_role_arn)."
  type        = string
}

variable "job_role_arn" {
  description = "ARN of the role the training container runs as (iam module output job_role_arn)."
  type        = string
}

variable "image" {
  description = "Container image of the job definitions, repository URL and tag, e.g. \"123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:abc123\"."
  type        = string
}

variable "gpus" {
  description = "GPUs per job (per node for multi-node jobs)."
  type        = number
  default     = 1
}

variable "vcpus" {
  description = "vCPUs per job (per node for multi-node jobs)."
  type        = number
  default     = 4
}

variable "memory_mib" {
  description = "Memory in MiB per job. Keep it below the instance's memory minus what the ECS agent reserves, or the job never leaves RUNNABLE."
  type        = number
  default     = 14336
}

variable "shared_memory_mib" {
  description = "Size of /dev/shm in MiB. Docker's 64 MiB default crashes PyTorch DataLoader workers."
  type        = number
  default     = 4096
}

variable "timeout_seconds" {
  description = "Time limit of one attempt in seconds; Batch stops the attempt after it (SIGTERM, so a checkpoint is saved) and the retry rules decide what follows."
  type        = number
  default     = 86400

  validation {
    condition     = var.timeout_seconds >= 60
    error_message = "timeout_seconds must be at least 60 (the Batch minimum)."
  }
}

variable "retry_attempts" {
  description = "Attempts per job, the first included. Spot reclamations and world errors (exit codes 143, 75) retry; every attempt resumes from the newest complete checkpoint."
  type        = number
  default     = 5

  validation {
    condition     = var.retry_attempts >= 1 && var.retry_attempts <= 10
    error_message = "retry_attempts must be between 1 and 10 (the Batch limits)."
  }
}

variable "model" {
  description = "Default FT_MODEL: Hugging Face model id or s3:// URI of the base model. Launchers override it per job."
  type        = string
}

variable "train_data" {
  description = "Default FT_TRAIN_DATA: s3:// URI of the training data."
  type        = string
}

variable "eval_data" {
  description = "Default FT_EVAL_DATA: s3:// URI of the evaluation data. Null leaves it unset."
  type        = string
  default     = null
}

variable "output_uri" {
  description = "Default FT_OUTPUT_URI: s3:// URI the model and metrics.json are written to."
  type        = string
}

variable "checkpoint_uri" {
  description = "Default FT_CHECKPOINT_URI: s3:// URI checkpoints are synced to. Give each job its own at submission, or jobs resume each other's checkpoints."
  type        = string
}

variable "extra_environment" {
  description = "Further finetune settings passed to the job as environment variables, e.g. { FT_NUM_TRAIN_EPOCHS = \"3\" }. Every key must start with FT_."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : startswith(k, "FT_")])
    error_message = "Every key of extra_environment must start with FT_, the prefix of finetune's settings."
  }

  # The names entrypoint/config/sensitive.py calls secret, as settings can be named.
  validation {
    condition = alltrue([
      for k in keys(var.extra_environment) :
      !can(regex("(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|APIKEY|API_KEY|PRIVATE_KEY)(_|$)", upper(k)))
    ])
    error_message = "extra_environment is stored in the job definition, where DescribeJobDefinitions shows it: pass secrets with the secrets variable (or FT_SECRETS), not as a setting."
  }
}

variable "secrets" {
  description = "Environment variables the job definitions fill from AWS Secrets Manager or SSM Parameter Store (containerProperties.secrets): a map of variable name to the ARN of a secret (optionally ending in :json-key:version-stage:version-id) or a parameter, e.g. { HF_TOKEN = \"arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf\" }. ECS reads them before the container starts, with an execution role this module creates that may read exactly these ARNs; DescribeJobDefinitions shows the ARNs only."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.secrets :
      can(regex("^[A-Za-z_][A-Za-z0-9_]*$", k)) && !startswith(upper(k), "AWS_") &&
      can(regex("^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[^:]+(:[^:]*){0,3}|ssm:[a-z0-9-]+:[0-9]{12}:parameter/.+)$", v))
    ])
    error_message = "Each key of secrets must be an environment variable name (not AWS_*: the job's credentials come from its role), each value the ARN of a Secrets Manager secret or an SSM parameter."
  }
}

variable "secrets_kms_key_arns" {
  description = "ARNs of customer-managed KMS keys that encrypt the secrets: the execution role may decrypt with them through Secrets Manager and SSM only. Empty for AWS-managed keys."
  type        = list(string)
  default     = []
}

variable "multinode_num_nodes" {
  description = "Nodes of the multi-node parallel job definition. Multi-node jobs run on the on-demand compute environment only: AWS Batch does not run them on spot."
  type        = number
  default     = 2

  validation {
    condition     = var.multinode_num_nodes >= 2
    error_message = "multinode_num_nodes must be at least 2; use the single-node job definition otherwise."
  }
}

variable "log_retention_days" {
  description = "Days the job logs are kept in CloudWatch Logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
