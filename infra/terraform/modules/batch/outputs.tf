output "job_queue_name" {
  description = "Name of the job queue for single-node jobs: spot capacity first, on-demand as fallback."
  value       = aws_batch_job_queue.this.name
}

output "job_queue_arn" {
  description = "ARN of the job queue for single-node jobs."
  value       = aws_batch_job_queue.this.arn
}

output "multinode_job_queue_name" {
  description = "Name of the job queue for multi-node parallel jobs: on-demand capacity only, as AWS Batch does not run multi-node jobs on spot."
  value       = aws_batch_job_queue.multinode.name
}

output "multinode_job_queue_arn" {
  description = "ARN of the job queue for multi-node parallel jobs (on-demand only)."
  value       = aws_batch_job_queue.multinode.arn
}

output "job_definition_arn" {
  description = "ARN (with revision) of the single-node job definition."
  value       = aws_batch_job_definition.this.arn
}

output "job_definition_name" {
  description = "Name of the single-node job definition; submitting by name uses its newest active revision."
  value       = aws_batch_job_definition.this.name
}

output "multinode_job_definition_arn" {
  description = "ARN (with revision) of the multi-node parallel job definition. Submit it to multinode_job_queue_name only: multi-node jobs cannot run on spot."
  value       = aws_batch_job_definition.multinode.arn
}

output "multinode_job_definition_name" {
  description = "Name of the multi-node parallel job definition."
  value       = aws_batch_job_definition.multinode.name
}

output "spot_compute_environment_arn" {
  description = "ARN of the spot GPU compute environment."
  value       = aws_batch_compute_environment.spot.arn
}

output "on_demand_compute_environment_arn" {
  description = "ARN of the on-demand GPU compute environment."
  value       = aws_batch_compute_environment.on_demand.arn
}

output "log_group_name" {
  description = "Name of the CloudWatch log group of the jobs."
  value       = aws_cloudwatch_log_group.this.name
}

output "retry_rules" {
  description = "The evaluate_on_exit rules of both job definitions, as read from retry_rules.json."
  value       = local.retry_rules
}

output "execution_role_arn" {
  description = "ARN of the execution role with which ECS reads the job definitions' secrets; null without secrets."
  value       = one(aws_iam_role.execution[*].arn)
}
