output "project_name" {
  description = "Name of the CodeBuild project."
  value       = aws_codebuild_project.this.name
}

output "project_arn" {
  description = "ARN of the CodeBuild project."
  value       = aws_codebuild_project.this.arn
}

output "role_arn" {
  description = "ARN of the CodeBuild role, which may push to the ECR repository only."
  value       = aws_iam_role.this.arn
}
