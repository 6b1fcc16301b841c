output "job_role_arn" {
  description = "ARN of the Batch job role (the container's own credentials), scoped to the bucket prefixes."
  value       = aws_iam_role.this.arn
}

output "instance_profile_arn" {
  description = "ARN of the instance profile of the Batch GPU hosts."
  value       = aws_iam_instance_profile.instance.arn

  # Batch must not create or delete compute environments while the hosts lack their policy.
  depends_on = [aws_iam_role_policy.instance_ecs]
}

output "instance_role_name" {
  description = "Name of the role of the Batch GPU hosts."
  value       = aws_iam_role.instance.name
}

output "batch_service_role_arn" {
  description = "ARN of the Batch service role."
  value       = aws_iam_role.batch_service.arn

  # Detaching the policy before the compute environments are gone leaves them stuck in INVALID.
  depends_on = [aws_iam_role_policy_attachment.batch_service]
}

output "sagemaker_role_arn" {
  description = "ARN of the SageMaker execution role for training jobs, with the same bucket scoping as the Batch job role plus ECR pull and CloudWatch logs."
  value       = aws_iam_role.sagemaker.arn
}
