variable "bucket_name" {
  description = "Name of the S3 bucket for training data, models, checkpoints and outputs. Must be globally unique."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket and the ECR repository while they still hold objects and images. Keep false outside tests and examples."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "ARN of a KMS key for SSE-KMS on the bucket and the ECR repository. Null uses SSE-S3 (AES256) and ECR's AES256, which need no key policy or kms:* grants on the job roles."
  type        = string
  default     = null
}

variable "checkpoint_prefix" {
  description = "Key prefix (no leading slash, ending in '/') under which jobs write checkpoints; the lifecycle rule that expires old versions of checkpoints applies to it."
  type        = string
  default     = "checkpoints/"

  validation {
    condition     = can(regex("^[^/].*/$", var.checkpoint_prefix))
    error_message = "checkpoint_prefix must not start with '/' and must end with '/', e.g. \"checkpoints/\"."
  }
}

variable "noncurrent_checkpoint_expiration_days" {
  description = "Days after which overwritten or deleted checkpoint object versions are removed. Checkpoints are rewritten often and are large (a MiniLM checkpoint is ~260 MB), so old versions add up fast."
  type        = number
  default     = 7
}

variable "noncurrent_expiration_days" {
  description = "Days after which noncurrent versions of any other object (data, models, outputs) are removed."
  type        = number
  default     = 90
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which multipart uploads that never completed (e.g. a checkpoint upload cut off by a spot interruption) are aborted and their parts deleted."
  type        = number
  default     = 2
}

variable "repository_name" {
  description = "Name of the ECR repository for the finetune container image."
  type        = string
}

variable "image_tag_mutability" {
  description = "ECR tag mutability. IMMUTABLE (default) guarantees that a tag a job definition names is the image that ran; CI then tags images by commit, never `latest`."
  type        = string
  default     = "IMMUTABLE"

  validation {
    condition     = contains(["IMMUTABLE", "MUTABLE"], var.image_tag_mutability)
    error_message = "image_tag_mutability must be IMMUTABLE or MUTABLE."
  }
}

variable "max_image_count" {
  description = "Number of tagged images the ECR lifecycle policy keeps; older ones are expired."
  type        = number
  default     = 30
}

variable "untagged_image_expiration_days" {
  description = "Days after which untagged images (build leftovers) are expired."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags added to every resource of the module."
  type        = map(string)
  default     = {}
}
