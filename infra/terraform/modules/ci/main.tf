resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Build logs hold compiler and docker output, no secrets; CloudWatch encrypts them at rest with its own keys.
  name              = "/aws/codebuild/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_iam_role" "this" {
  name = "${var.name}-codebuild"
  tags = var.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "codebuild.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "this" {
  name = "push-image-and-log"
  role = aws_iam_role.this.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # GetAuthorizationToken has no resource-level permissions.
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = ["ecr:GetAuthorizationToken"]
        Resource = ["*"]
      },
      {
        Sid    = "PushImage"
        Effect = "Allow"
        Action = [
          "ecr:BatchCheckLayerAvailability",
          "ecr:BatchGetImage",
          "ecr:CompleteLayerUpload",
          "ecr:GetDownloadUrlForLayer",
          "ecr:InitiateLayerUpload",
          "ecr:PutImage",
          "ecr:UploadLayerPart",
        ]
        Resource = [var.repository_arn]
      },
      {
        Sid      = "BuildLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["${aws_cloudwatch_log_group.this.arn}:*"]
      },
    ]
  })
}

resource "aws_codebuild_project" "this" {
  #checkov:skip=CKV_AWS_316:Privileged mode is what lets the build run the Docker daemon to build and push the image.
  #checkov:skip=CKV_AWS_147:Builds produce no artifacts (the image goes to ECR, encrypted there); the AWS-managed key covers the build cache and logs.
  name          = var.name
  description   = "Builds the finetune container image and pushes it to ECR."
  service_role  = aws_iam_role.this.arn
  build_timeout = var.build_timeout_minutes
  tags          = var.tags

  source {
    type      = var.source_type
    location  = var.source_location
    buildspec = var.buildspec
  }

  source_version = var.source_version

  artifacts {
    type = "NO_ARTIFACTS"
  }

  environment {
    type            = "LINUX_CONTAINER"
    compute_type    = var.compute_type
    image           = var.build_image
    privileged_mode = true

    environment_variable {
      name  = "ECR_REPOSITORY_URL"
      value = var.repository_url
    }
  }

  logs_config {
    cloudwatch_logs {
      group_name = aws_cloudwatch_log_group.this.name
      status     = "ENABLED"
    }

    s3_logs {
      status = "DISABLED"
    }
  }
}
