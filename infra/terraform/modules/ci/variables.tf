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

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
