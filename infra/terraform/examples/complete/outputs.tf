output "region" {
  description = "AWS region of the resources."
  value       = var.region
}

output "bucket_name" {
  description = "S3 bucket for data, models, checkpoints and outputs."
  value       = module.storage.bucket_name
}

output "repository_url" {
  description = "ECR repository URL the image is pushed to."
  value       = module.storage.repository_url
}

output "job_queue_name" {
  description = "Batch job queue for single-node jobs (spot first, on-demand fallback)."
  value       = module.batch.job_queue_name
}

output "job_queue_arn" {
  description = "ARN of the Batch job queue for single-node jobs."
  value       = module.batch.job_queue_arn
}

output "job_definition_arn" {
  description = "ARN of the single-node Batch job definition."
  value       = module.batch.job_definition_arn
}

output "multinode_job_queue_name" {
  description = "Batch job queue for multi-node parallel jobs (on-demand only: Batch does not run multi-node jobs on spot)."
  value       = module.batch.multinode_job_queue_name
}

output "multinode_job_definition_arn" {
  description = "ARN of the multi-node parallel Batch job definition; submit it to multinode_job_queue_name."
  value       = module.batch.multinode_job_definition_arn
}

output "job_role_arn" {
  description = "ARN of the role the Batch job container runs as."
  value       = module.iam.job_role_arn
}

output "sagemaker_role_arn" {
  description = "ARN of the SageMaker execution role for training jobs."
  value       = module.iam.sagemaker_role_arn
}

output "log_group_name" {
  description = "CloudWatch log group of the Batch jobs."
  value       = module.batch.log_group_name
}

output "codebuild_project_name" {
  description = "CodeBuild project that builds and pushes the image."
  value       = module.ci.project_name
}
