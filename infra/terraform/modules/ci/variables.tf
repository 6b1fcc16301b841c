variable "name" {
  description = "Name of the CodeBuild project; also the prefix of its role and log group."
  type        = string
}

variable "source_type" {
  description = "CodeBuild source type: GITHUB, GITHUB_ENTERPRISE, BITBUCKET, CODECOMMIT or S3. NO_SOURCE is not offered: the build runs the repository's buildspec.yml."
  type        = string
  default     = "GITHUB"

  validation {
    condition     = contains(["GITHUB", "GITHUB_ENTERPRISE", "BITBUCKET", "CODECOMMIT", "S3"], var.source_type)
    error_message = "source_type must be one of GITHUB, GITHUB_ENTERPRISE, BITBUCKET, CODECOMMIT, S3."
  }
}

variable "source_location" {
  description = "Location of the repository: its clone URL (e.g. \"https://github.com/acme/finetune.git\"), or bucket/key of a zip for S3."
  type        = string
}

variable "source_version" {
  description = "Branch, tag or commit built when a build is started without one."
  type        = string
  default     = "main"
}

variable "buildspec" {
  description = "Path of the buildspec in the repository."
  type        = string
  default     = "buildspec.yml"
}

variable "repository_url" {
  description = "URL of the ECR repository the build pushes the image to; passed to the build as ECR_REPOSITORY_URL."
  type        = string
}

variable "repository_arn" {
  description = "ARN of the ECR repository the build may push to (and no other)."
  type        = string
}

variable "compute_type" {
  description = "CodeBuild compute type. Building a CUDA + PyTorch image needs the disk and memory of a large one."
  type        = string
  default     = "BUILD_GENERAL1_LARGE"
}

variable "build_image" {
  description = "CodeBuild build image."
  type        = string
  default     = "aws/codebuild/standard:7.0"
}

variable "build_timeout_minutes" {
  description = "Time limit of one build in minutes."
  type        = number
  default     = 60
}

variable "log_retention_days" {
  description = "Days the build logs are kept in CloudWatch Logs."
  type        = number
  default     = 365
}

variable "smoke_job" {
  description = "The Batch job a build from main submits with the image it just pushed (see buildspec.yml); null submits none and grants no Batch or IAM permissions. job_queue_arn and job_definition_name (no revision) name the queue and the single-node job definition, of which the build registers a revision with the new image; job_role_arn is the role that definition runs as (the build passes it to Batch); model and train_data are the job's FT_MODEL and FT_TRAIN_DATA; output_prefix is an s3:// prefix the job role may write, under which each commit's job writes <commit>/output/ and <commit>/checkpoints/."
  type = object({
    job_queue_arn       = string
    job_definition_name = string
    job_role_arn        = string
    model               = string
    train_data          = string
    output_prefix       = string
  })
  default = null

  validation {
    # Terraform 1.11 evaluates both sides of `||`: the conditional keeps null away from the checks.
    condition = var.smoke_job == null ? true : (
      can(regex("^arn:[^:]+:batch:[^:]+:[0-9]{12}:job-queue/.+", var.smoke_job.job_queue_arn)) &&
      can(regex("^[A-Za-z0-9_-]{1,128}$", var.smoke_job.job_definition_name)) &&
      can(regex("^arn:[^:]+:iam::[0-9]{12}:role/.+", var.smoke_job.job_role_arn)) &&
      alltrue([for uri in [var.smoke_job.model, var.smoke_job.train_data, var.smoke_job.output_prefix] : startswith(uri, "s3://")])
    )
    error_message = "smoke_job needs a job queue ARN, a job definition name without revision, an IAM role ARN, and s3:// URIs for model, train_data and output_prefix."
  }
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
