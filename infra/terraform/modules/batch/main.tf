data "aws_region" "current" {}

locals {
  retry_rules = jsondecode(file("${path.module}/retry_rules.json"))

  # Batch's own secrets: the ECS agent reads them with the execution role before the container
  # starts. IAM matches a secret's own ARN, without valueFrom's :json-key:version-stage:version-id.
  secretsmanager_arns = distinct([
    for v in values(var.secrets) : join(":", slice(split(":", v), 0, 7)) if try(split(":", v)[2], "") == "secretsmanager"
  ])
  ssm_parameter_arns = distinct([for v in values(var.secrets) : v if try(split(":", v)[2], "") == "ssm"])
  # No keys at all without secrets (a list of none or one, expanded into merge: a conditional
  # cannot choose between objects of different attributes).
  secrets_container = [
    for role in aws_iam_role.execution : {
      executionRoleArn = role.arn
      secrets          = [for k in sort(keys(var.secrets)) : { name = k, valueFrom = var.secrets[k] }]
    }
  ]

  ft_environment = merge(
    # The job must have its stop checkpoint durable before the ECS agent's SIGKILL.
    { FT_STOP_GRACE_SECONDS = tostring(var.stop_timeout_seconds) },
    var.extra_environment,
    {
      FT_MODEL          = var.model
      FT_TRAIN_DATA     = var.train_data
      FT_OUTPUT_URI     = var.output_uri
      FT_CHECKPOINT_URI = var.checkpoint_uri
    },
    var.eval_data == null ? {} : { FT_EVAL_DATA = var.eval_data },
  )

  # Sorted by name: Batch returns the list sorted, and any other order is a perpetual diff.
  container = merge({
    image      = var.image
    jobRoleArn = var.job_role_arn
    environment = [
      for k in sort(keys(local.ft_environment)) : { name = k, value = local.ft_environment[k] }
    ]
    resourceRequirements = [
      { type = "GPU", value = tostring(var.gpus) },
      { type = "MEMORY", value = tostring(var.memory_mib) },
      { type = "VCPU", value = tostring(var.vcpus) },
    ]
    linuxParameters = { sharedMemorySize = var.shared_memory_mib }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.this.name
        "awslogs-region"        = data.aws_region.current.name
        "awslogs-stream-prefix" = var.name
      }
    }
  }, local.secrets_container...)

  # Batch only accepts MIME multi-part user data in launch templates.
  user_data = <<-EOT
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="==BOUNDARY=="

    --==BOUNDARY==
    Content-Type: text/x-shellscript; charset="us-ascii"

    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'EOF'
    ECS_ENABLE_SPOT_INSTANCE_DRAINING=true
    ECS_CONTAINER_STOP_TIMEOUT=${var.stop_timeout_seconds}s
    EOF

    --==BOUNDARY==--
  EOT
}

resource "aws_iam_role" "execution" {
  count = length(var.secrets) == 0 ? 0 : 1

  name = "${var.name}-batch-execution"
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

# Exactly the secrets of the job definitions; the container itself never gets this role.
resource "aws_iam_role_policy" "execution_secrets" {
  count = length(var.secrets) == 0 ? 0 : 1

  name = "read-secrets"
  role = aws_iam_role.execution[0].id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      length(local.secretsmanager_arns) == 0 ? [] : [{
        Sid      = "ReadSecrets"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = local.secretsmanager_arns
      }],
      length(local.ssm_parameter_arns) == 0 ? [] : [{
        Sid      = "ReadParameters"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.ssm_parameter_arns
      }],
      length(var.secrets_kms_key_arns) == 0 ? [] : [{
        Sid       = "DecryptSecrets"
        Effect    = "Allow"
        Action    = ["kms:Decrypt"]
        Resource  = var.secrets_kms_key_arns
        Condition = { StringLike = { "kms:ViaService" = ["secretsmanager.*.amazonaws.com", "ssm.*.amazonaws.com"] } }
      }],
    )
  })
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Job logs hold metrics, step counts and S3 URIs, no secrets; CloudWatch encrypts them at rest with its own keys.
  name              = "/aws/batch/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_launch_template" "this" {
  #checkov:skip=CKV_AWS_341:Hop limit 2 lets the container (one network hop past the host) read the spot interruption notice over IMDSv2.
  name_prefix = "${var.name}-"
  user_data   = base64encode(local.user_data)
  tags        = var.tags

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.root_volume_size_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }
}

resource "aws_batch_compute_environment" "spot" {
  compute_environment_name_prefix = "${var.name}-spot-"
  type                            = "MANAGED"
  service_role                    = var.service_role_arn
  tags                            = var.tags

  compute_resources {
    type                = "SPOT"
    allocation_strategy = "SPOT_CAPACITY_OPTIMIZED"
    bid_percentage      = 100
    instance_type       = var.instance_types
    instance_role       = var.instance_profile_arn
    min_vcpus           = 0
    max_vcpus           = var.spot_max_vcpus
    subnets             = var.subnet_ids
    security_group_ids  = var.security_group_ids
    tags                = var.tags

    ec2_configuration {
      image_type = "ECS_AL2_NVIDIA"
    }

    launch_template {
      launch_template_id = aws_launch_template.this.id
      version            = aws_launch_template.this.latest_version
    }
  }

  # A changed compute environment is replaced; the queue must switch to the new one first.
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_batch_compute_environment" "on_demand" {
  compute_environment_name_prefix = "${var.name}-on-demand-"
  type                            = "MANAGED"
  service_role                    = var.service_role_arn
  tags                            = var.tags

  compute_resources {
    type                = "EC2"
    allocation_strategy = "BEST_FIT_PROGRESSIVE"
    instance_type       = coalesce(var.on_demand_instance_types, var.instance_types)
    instance_role       = var.instance_profile_arn
    min_vcpus           = 0
    max_vcpus           = var.on_demand_max_vcpus
    subnets             = var.subnet_ids
    security_group_ids  = var.security_group_ids
    tags                = var.tags

    ec2_configuration {
      image_type = "ECS_AL2_NVIDIA"
    }

    launch_template {
      launch_template_id = aws_launch_template.this.id
      version            = aws_launch_template.this.latest_version
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_batch_job_queue" "this" {
  name     = var.name
  state    = "ENABLED"
  priority = 1
  tags     = var.tags

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.spot.arn
  }

  compute_environment_order {
    order               = 2
    compute_environment = aws_batch_compute_environment.on_demand.arn
  }
}

# Multi-node parallel jobs are not supported on spot compute environments.
resource "aws_batch_job_queue" "multinode" {
  name     = "${var.name}-multinode"
  state    = "ENABLED"
  priority = 1
  tags     = var.tags

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.on_demand.arn
  }
}

resource "aws_batch_job_definition" "this" {
  name                  = var.name
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true
  container_properties  = jsonencode(local.container)
  tags                  = var.tags

  lifecycle {
    precondition {
      condition     = length(setintersection(keys(var.secrets), keys(var.extra_environment))) == 0
      error_message = "A variable is either in secrets or in extra_environment, not both."
    }
  }

  retry_strategy {
    attempts = var.retry_attempts

    dynamic "evaluate_on_exit" {
      for_each = local.retry_rules
      content {
        action           = evaluate_on_exit.value.action
        on_exit_code     = lookup(evaluate_on_exit.value, "on_exit_code", null)
        on_status_reason = lookup(evaluate_on_exit.value, "on_status_reason", null)
        on_reason        = lookup(evaluate_on_exit.value, "on_reason", null)
      }
    }
  }

  timeout {
    attempt_duration_seconds = var.timeout_seconds
  }
}

resource "aws_batch_job_definition" "multinode" {
  name                  = "${var.name}-multinode"
  type                  = "multinode"
  platform_capabilities = ["EC2"]
  propagate_tags        = true
  tags                  = var.tags

  node_properties = jsonencode({
    mainNode = 0
    numNodes = var.multinode_num_nodes
    nodeRangeProperties = [
      { targetNodes = "0:", container = local.container },
    ]
  })

  retry_strategy {
    attempts = var.retry_attempts

    dynamic "evaluate_on_exit" {
      for_each = local.retry_rules
      content {
        action           = evaluate_on_exit.value.action
        on_exit_code     = lookup(evaluate_on_exit.value, "on_exit_code", null)
        on_status_reason = lookup(evaluate_on_exit.value, "on_status_reason", null)
        on_reason        = lookup(evaluate_on_exit.value, "on_reason", null)
      }
    }
  }

  timeout {
    attempt_duration_seconds = var.timeout_seconds
  }
}
