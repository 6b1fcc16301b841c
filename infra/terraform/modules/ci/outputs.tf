output "project_name" {
  description = "Name of the CodeBuild project."
  value       = aws_codebuild_project.this.name
}

output "project_arn" {
  description = "ARN of the CodeBuild project."
  value       = aws_codebuild_project.this.arn
}

output "role_arn" {
  description = "ARN of the CodeBuild role, which may push to the ECR repository and, with smoke_job, submit that job only."
  value       = aws_iam_role.this.arn
}

output "smoke_environment" {
  description = "The SMOKE_* variables the project passes to buildspec.yml; empty without smoke_job."
  value       = local.smoke_environment
}
