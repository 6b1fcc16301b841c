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
  region_account          = "${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"

  # FT_SECRETS: the job reads these with its own role. A Secrets Manager ARN given with Batch's
  # :json-key:version-stage:version-id suffix is cut to the secret's own ARN, which IAM matches.
  secretsmanager_arns = distinct([
    for a in var.secret_arns : join(":", slice(split(":", a), 0, 7)) if try(split(":", a)[2], "") == "secretsmanager"
  ])
  ssm_parameter_arns = [for a in var.secret_arns : a if try(split(":", a)[2], "") == "ssm"]
  secret_statements = concat(
    length(local.secretsmanager_arns) == 0 ? [] : [{
      Sid      = "ReadJobSecrets"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = local.secretsmanager_arns
    }],
    length(local.ssm_parameter_arns) == 0 ? [] : [{
      Sid      = "ReadJobParameters"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = local.ssm_parameter_arns
    }],
    length(var.secret_kms_key_arns) == 0 ? [] : [{
      Sid       = "DecryptJobSecrets"
      Effect    = "Allow"
      Action    = ["kms:Decrypt"]
      Resource  = var.secret_kms_key_arns
      Condition = { StringLike = { "kms:ViaService" = ["secretsmanager.*.amazonaws.com", "ssm.*.amazonaws.com"] } }
    }],
  )
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

resource "aws_iam_role_policy" "job_secrets" {
  count = length(local.secret_statements) == 0 ? 0 : 1

  name   = "ft-secrets"
  role   = aws_iam_role.this.id
  policy = jsonencode({ Version = "2012-10-17", Statement = local.secret_statements })
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

# The ECS agent on the GPU hosts: what AmazonEC2ContainerServiceforEC2Role (v10) allows, narrowed.
# The job container reaches these credentials too, through the instance metadata service (hop
# limit 2, for the spot notice; see the README): image pulls from this project's repository only,
# container logs to Batch's log groups only, and no ecs:CreateCluster (the agent creates only the
# default cluster; Batch names its own).
resource "aws_iam_role_policy" "instance_ecs" {
  #checkov:skip=CKV_AWS_290:The ECS agent's own calls (register, poll, submit state changes) are scoped by ECS to the instance's cluster; AWS's managed policy grants them on "*" as well.
  #checkov:skip=CKV_AWS_355:DescribeTags, DiscoverPollEndpoint and GetAuthorizationToken have no resource-level permissions; the agent's other calls are scoped by ECS itself.
  name = "ecs-agent"
  role = aws_iam_role.instance.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "EcsAgent"
        Effect = "Allow"
        Action = [
          "ec2:DescribeTags",
          "ecs:DeregisterContainerInstance",
          "ecs:DiscoverPollEndpoint",
          "ecs:Poll",
          "ecs:RegisterContainerInstance",
          "ecs:StartTelemetrySession",
          "ecs:Submit*",
          "ecs:UpdateContainerInstancesState",
        ]
        Resource = ["*"]
      },
      {
        Sid       = "EcsAgentTagsItsInstance"
        Effect    = "Allow"
        Action    = ["ecs:TagResource"]
        Resource  = ["*"]
        Condition = { StringEquals = { "ecs:CreateAction" = ["RegisterContainerInstance"] } }
      },
      {
        Sid    = "EcsAgentReadsTags"
        Effect = "Allow"
        Action = ["ecs:ListTagsForResource"]
        Resource = [
          "arn:${local.partition}:ecs:${local.region_account}:task/*/*",
          "arn:${local.partition}:ecs:${local.region_account}:container-instance/*/*",
        ]
      },
      {
        # GetAuthorizationToken has no resource-level permissions.
        Sid      = "EcrLogin"
        Effect   = "Allow"
        Action   = ["ecr:GetAuthorizationToken"]
        Resource = ["*"]
      },
      {
        Sid      = "PullImage"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
        Resource = [var.repository_arn]
      },
      {
        # The awslogs driver of the job definitions (the batch module's /aws/batch/<name>).
        Sid      = "ContainerLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["arn:${local.partition}:logs:${local.region_account}:log-group:/aws/batch/*"]
      },
    ]
  })
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
    Statement = concat(local.s3_statements, local.secret_statements, [
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
