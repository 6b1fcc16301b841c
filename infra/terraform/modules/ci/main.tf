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

locals {
  # Job definitions live beside the queue: same partition, region and account.
  smoke_batch_arn_prefix = var.smoke_job == null ? null : regex("^(arn:[^:]+:batch:[^:]+:[0-9]+):job-queue/", var.smoke_job.job_queue_arn)[0]
  smoke_environment = var.smoke_job == null ? tomap({}) : tomap({
    SMOKE_JOB_QUEUE      = var.smoke_job.job_queue_arn
    SMOKE_JOB_DEFINITION = var.smoke_job.job_definition_name
    SMOKE_MODEL          = var.smoke_job.model
    SMOKE_TRAIN_DATA     = var.smoke_job.train_data
    SMOKE_OUTPUT_PREFIX  = trimsuffix(var.smoke_job.output_prefix, "/")
  })
  # `finetune check` runs in the build before the smoke job: it reads the model and the data and
  # writes (then deletes) a probe object under the output prefix. {name: [bucket, key prefix]}.
  smoke_s3 = var.smoke_job == null ? {} : {
    for name, uri in {
      model  = var.smoke_job.model
      data   = var.smoke_job.train_data
      output = var.smoke_job.output_prefix
    } : name => regex("^s3://([^/]+)/?(.*)$", uri)
  }
}

# `finetune submit batch --image`: describe the job definition, register a revision of it with the
# new image, submit against that and follow the job.
resource "aws_iam_role_policy" "smoke" {
  count = var.smoke_job == null ? 0 : 1
  name  = "submit-smoke-job"
  role  = aws_iam_role.this.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # A revision's ARN ends in :N; the registration may be authorized on the bare name.
        # Registering copies the definition's tags, which Batch may also authorize as TagResource.
        Sid    = "RegisterSmokeJobDefinition"
        Effect = "Allow"
        Action = ["batch:RegisterJobDefinition", "batch:TagResource"]
        Resource = [
          "${local.smoke_batch_arn_prefix}:job-definition/${var.smoke_job.job_definition_name}",
          "${local.smoke_batch_arn_prefix}:job-definition/${var.smoke_job.job_definition_name}:*",
        ]
      },
      {
        # SubmitJob is authorized on both the queue and the definition revision.
        Sid    = "SubmitSmokeJob"
        Effect = "Allow"
        Action = ["batch:SubmitJob"]
        Resource = [
          var.smoke_job.job_queue_arn,
          "${local.smoke_batch_arn_prefix}:job-definition/${var.smoke_job.job_definition_name}:*",
        ]
      },
      {
        # DescribeJobDefinitions and DescribeJobs have no resource-level permissions.
        Sid      = "FollowSmokeJob"
        Effect   = "Allow"
        Action   = ["batch:DescribeJobDefinitions", "batch:DescribeJobs"]
        Resource = ["*"]
      },
      {
        Sid      = "CheckSmokeJobInputs"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = [for name in ["model", "data"] : "arn:aws:s3:::${local.smoke_s3[name][0]}/${local.smoke_s3[name][1]}*"]
      },
      {
        Sid      = "ListSmokeJobBuckets"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = distinct([for loc in values(local.smoke_s3) : "arn:aws:s3:::${loc[0]}"])
      },
      {
        Sid      = "ProbeSmokeJobOutput"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:DeleteObject", "s3:GetObject"]
        Resource = ["arn:aws:s3:::${local.smoke_s3.output[0]}/${local.smoke_s3.output[1]}*"]
      },
      {
        Sid       = "PassSmokeJobRole"
        Effect    = "Allow"
        Action    = ["iam:PassRole"]
        Resource  = [var.smoke_job.job_role_arn]
        Condition = { StringEquals = { "iam:PassedToService" = "batch.amazonaws.com" } }
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

  # The ECR tags are immutable, so there is no moving tag to pull as cache: the Docker layers (and
  # the clone) stay on the build host for the next build that lands there soon after.
  cache {
    type  = "LOCAL"
    modes = ["LOCAL_DOCKER_LAYER_CACHE", "LOCAL_SOURCE_CACHE"]
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

    dynamic "environment_variable" {
      for_each = local.smoke_environment
      content {
        name  = environment_variable.key
        value = environment_variable.value
      }
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
