data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition = data.aws_partition.current.partition

  all_prefixes = concat(var.read_prefixes, var.write_prefixes)

  # The same S3 scoping for the Batch job role and the SageMaker execution role.
  s3_statements = [
    {
      Sid       = "ListOwnPrefixes"
      Effect    = "Allow"
      Action    = ["s3:ListBucket"]
      Resource  = [var.bucket_arn]
      Condition = { StringLike = { "s3:prefix" = [for p in local.all_prefixes : "${p}*"] } }
    },
    {
      Sid      = "ReadInputs"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = [for p in var.read_prefixes : "${var.bucket_arn}/${p}*"]
    },
    {
      Sid    = "ReadWriteCheckpointsAndOutputs"
      Effect = "Allow"
      Action = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
      ]
      Resource = [for p in var.write_prefixes : "${var.bucket_arn}/${p}*"]
    },
  ]

  sagemaker_log_group_arn = "arn:${local.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/aws/sagemaker/TrainingJobs"
}

# Batch job role: what the training container itself may do.
resource "aws_iam_role" "this" {
  name = "${var.name}-batch-job"
  tags = var.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "job_s3" {
  name   = "s3-prefixes"
  role   = aws_iam_role.this.id
  policy = jsonencode({ Version = "2012-10-17", Statement = local.s3_statements })
}

resource "aws_iam_role" "instance" {
  name = "${var.name}-batch-instance"
  tags = var.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# ECS agent on the GPU hosts: register with the cluster, pull from ECR, ship container logs.
resource "aws_iam_role_policy_attachment" "instance_ecs" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "instance" {
  name = "${var.name}-batch-instance"
  role = aws_iam_role.instance.name
  tags = var.tags
}

resource "aws_iam_role" "batch_service" {
  name = "${var.name}-batch-service"
  tags = var.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "batch.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "batch_service" {
  role       = aws_iam_role.batch_service.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSBatchServiceRole"
}

resource "aws_iam_role" "sagemaker" {
  name = "${var.name}-sagemaker-execution"
  tags = var.tags

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "sagemaker.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "sagemaker" {
  name = "s3-ecr-logs"
  role = aws_iam_role.sagemaker.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(local.s3_statements, [
      {
        Sid      = "PullImage"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
        Resource = [var.repository_arn]
      },
      {
        # GetAuthorizationToken has no resource-level permissions.
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = ["ecr:GetAuthorizationToken"]
        Resource = ["*"]
      },
      {
        Sid      = "TrainingJobLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
        Resource = [local.sagemaker_log_group_arn, "${local.sagemaker_log_group_arn}:*"]
      },
      {
        # PutMetricData has no resource-level permissions; the namespace condition scopes it.
        Sid       = "TrainingJobMetrics"
        Effect    = "Allow"
        Action    = ["cloudwatch:PutMetricData"]
        Resource  = ["*"]
        Condition = { StringLike = { "cloudwatch:namespace" = ["/aws/sagemaker/*"] } }
      },
    ])
  })
}
