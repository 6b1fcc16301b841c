# Plans and mock-applies the modules and the example with no AWS account: `terraform test`.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_resource "aws_batch_compute_environment" {
    defaults = { arn = "arn:aws:batch:us-east-1:123456789012:compute-environment/mock" }
  }
  mock_resource "aws_batch_job_queue" {
    defaults = { arn = "arn:aws:batch:us-east-1:123456789012:job-queue/mock" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/mock" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::finetune-test" }
  }
}

variables {
  bucket_arn     = "arn:aws:s3:::finetune-test"
  repository_arn = "arn:aws:ecr:us-east-1:123456789012:repository/finetune"
}

run "storage_protects_and_expires" {
  command = apply

  module {
    source = "../../modules/storage"
  }

  variables {
    bucket_name     = "finetune-test"
    repository_name = "finetune"
  }

  assert {
    condition     = aws_s3_bucket_versioning.this.versioning_configuration[0].status == "Enabled"
    error_message = "Bucket versioning must be enabled."
  }

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.this.block_public_acls,
      aws_s3_bucket_public_access_block.this.block_public_policy,
      aws_s3_bucket_public_access_block.this.ignore_public_acls,
      aws_s3_bucket_public_access_block.this.restrict_public_buckets,
    ])
    error_message = "All public access must be blocked."
  }

  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.this.rule).apply_server_side_encryption_by_default).sse_algorithm == "AES256"
    error_message = "Without a KMS key the bucket must use SSE-S3."
  }

  assert {
    condition = anytrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule :
      try(one(r.filter).prefix == "checkpoints/" && one(r.noncurrent_version_expiration).noncurrent_days == 7, false)
    ])
    error_message = "Old checkpoint versions must expire after 7 days."
  }

  assert {
    condition = anytrue([
      for r in aws_s3_bucket_lifecycle_configuration.this.rule :
      try(r.abort_incomplete_multipart_upload[0].days_after_initiation, null) == 2
    ])
    error_message = "Stale multipart uploads must be aborted."
  }

  assert {
    condition     = aws_ecr_repository.this.image_tag_mutability == "IMMUTABLE" && aws_ecr_repository.this.image_scanning_configuration[0].scan_on_push
    error_message = "The ECR repository must have immutable tags and scan on push."
  }
}

run "iam_scopes_s3_to_prefixes" {
  command = apply

  module {
    source = "../../modules/iam"
  }

  variables {
    name = "finetune"
  }

  assert {
    condition = [
      for s in jsondecode(aws_iam_role_policy.job_s3.policy).Statement : s.Resource if contains(s.Action, "s3:PutObject")
      ] == [[
        "arn:aws:s3:::finetune-test/checkpoints/*",
        "arn:aws:s3:::finetune-test/outputs/*",
    ]]
    error_message = "The job role may write only under the checkpoint and output prefixes."
  }

  assert {
    condition = [
      for s in jsondecode(aws_iam_role_policy.job_s3.policy).Statement : s.Resource if s.Sid == "ReadInputs"
      ] == [[
        "arn:aws:s3:::finetune-test/data/*",
        "arn:aws:s3:::finetune-test/models/*",
    ]]
    error_message = "The job role may read inputs only under the data and model prefixes."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.sagemaker.policy).Statement :
      contains(s.Resource, "*") == contains(["EcrLogin", "TrainingJobMetrics"], s.Sid)
    ])
    error_message = "Only the actions without resource-level permissions may have Resource \"*\"."
  }

  assert {
    condition = jsonencode(jsondecode(aws_iam_role_policy.job_s3.policy).Statement) == jsonencode(
      slice(jsondecode(aws_iam_role_policy.sagemaker.policy).Statement, 0, 3)
    )
    error_message = "The SageMaker role must have the same S3 scoping as the Batch job role."
  }

  assert {
    condition     = length(aws_iam_role_policy.job_secrets) == 0 && !strcontains(aws_iam_role_policy.sagemaker.policy, "secretsmanager")
    error_message = "Without secret_arns no role may read secrets."
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.instance_ecs.policy).Statement : s.Sid => s.Resource if s.Sid != "EcsAgent" && s.Sid != "EcsAgentTagsItsInstance"
      } == {
      EcsAgentReadsTags = [
        "arn:aws:ecs:us-east-1:123456789012:task/*/*",
        "arn:aws:ecs:us-east-1:123456789012:container-instance/*/*",
      ]
      EcrLogin      = ["*"]
      PullImage     = ["arn:aws:ecr:us-east-1:123456789012:repository/finetune"]
      ContainerLogs = ["arn:aws:logs:us-east-1:123456789012:log-group:/aws/batch/*"]
    }
    error_message = "The Batch hosts (and through IMDS their containers) may pull only the project's image and log only to Batch's log groups."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.instance_ecs.policy).Statement :
      alltrue([for a in s.Action : startswith(a, "ecs:") || contains(["ec2:DescribeTags", "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "logs:CreateLogStream", "logs:PutLogEvents"], a)])
      && !contains(s.Action, "ecs:CreateCluster")
    ])
    error_message = "The instance role holds only what the ECS agent needs, and not ecs:CreateCluster."
  }
}

run "iam_roles_read_exactly_the_ft_secrets_arns" {
  command = apply

  module {
    source = "../../modules/iam"
  }

  variables {
    name = "finetune"
    secret_arns = [
      "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf",
      "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-keys-GhIjKl:wandb::",
      "arn:aws:ssm:us-east-1:123456789012:parameter/team/db-password",
    ]
    secret_kms_key_arns = ["arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.job_secrets[0].policy).Statement : s.Sid => [s.Action, s.Resource]
      } == {
      ReadJobSecrets = [["secretsmanager:GetSecretValue"], [
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:hf-token-AbCdEf",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-keys-GhIjKl",
      ]]
      ReadJobParameters = [["ssm:GetParameter"], ["arn:aws:ssm:us-east-1:123456789012:parameter/team/db-password"]]
      DecryptJobSecrets = [["kms:Decrypt"], ["arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]]
    }
    error_message = "The Batch job role must read exactly the FT_SECRETS ARNs (a secret's own ARN, without a JSON key), and decrypt with the given keys."
  }

  assert {
    condition = jsonencode(jsondecode(aws_iam_role_policy.job_secrets[0].policy).Statement) == jsonencode(
      slice(jsondecode(aws_iam_role_policy.sagemaker.policy).Statement, 3, 6)
    )
    error_message = "The SageMaker execution role must read the same secrets as the Batch job role."
  }
}

run "iam_rejects_what_is_no_secret_arn" {
  command = plan

  module {
    source = "../../modules/iam"
  }

  variables {
    name        = "finetune"
    secret_arns = ["hf_not_an_arn"]
  }

  expect_failures = [var.secret_arns]
}

run "batch_spot_first_with_retry_table" {
  command = apply

  module {
    source = "../../modules/batch"
  }

  variables {
    name                 = "finetune"
    subnet_ids           = ["subnet-1"]
    security_group_ids   = ["sg-1"]
    instance_types       = ["g5.xlarge", "g6.xlarge"]
    instance_profile_arn = "arn:aws:iam::123456789012:instance-profile/finetune"
    service_role_arn     = "arn:aws:iam::123456789012:role/finetune-batch-service"
    job_role_arn         = "arn:aws:iam::123456789012:role/finetune-batch-job"
    image                = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:abc123"
    model                = "s3://finetune-test/models/minilm/"
    train_data           = "s3://finetune-test/data/train.jsonl"
    output_uri           = "s3://finetune-test/outputs/run1/"
    checkpoint_uri       = "s3://finetune-test/checkpoints/run1/"
    extra_environment    = { FT_NUM_TRAIN_EPOCHS = "3" }
  }

  override_resource {
    target = aws_batch_compute_environment.spot
    values = { arn = "arn:aws:batch:us-east-1:123456789012:compute-environment/finetune-spot-1" }
  }

  override_resource {
    target = aws_batch_compute_environment.on_demand
    values = { arn = "arn:aws:batch:us-east-1:123456789012:compute-environment/finetune-on-demand-1" }
  }

  assert {
    condition = (
      aws_batch_compute_environment.spot.compute_resources[0].type == "SPOT" &&
      aws_batch_compute_environment.spot.compute_resources[0].allocation_strategy == "SPOT_CAPACITY_OPTIMIZED" &&
      aws_batch_compute_environment.spot.compute_resources[0].ec2_configuration[0].image_type == "ECS_AL2_NVIDIA" &&
      aws_batch_compute_environment.spot.compute_resources[0].instance_type == toset(["g5.xlarge", "g6.xlarge"])
    )
    error_message = "The spot compute environment must be SPOT_CAPACITY_OPTIMIZED on the given GPU types with the NVIDIA AMI."
  }

  assert {
    condition = [for o in aws_batch_job_queue.this.compute_environment_order : o.compute_environment] == [
      aws_batch_compute_environment.spot.arn, aws_batch_compute_environment.on_demand.arn,
    ]
    error_message = "The job queue must try spot first and fall back to on-demand."
  }

  assert {
    condition     = [for o in aws_batch_job_queue.multinode.compute_environment_order : o.compute_environment] == [aws_batch_compute_environment.on_demand.arn]
    error_message = "The multi-node queue must hold only on-demand capacity."
  }

  assert {
    condition = jsonencode([
      for r in aws_batch_job_definition.this.retry_strategy[0].evaluate_on_exit :
      [upper(r.action), r.on_exit_code, r.on_status_reason, r.on_reason]
      ]) == jsonencode([
      for r in jsondecode(file("../../modules/batch/retry_rules.json")) :
      [r.action, lookup(r, "on_exit_code", null), lookup(r, "on_status_reason", null), lookup(r, "on_reason", null)]
    ])
    error_message = "The retry rules must be those of retry_rules.json, in order."
  }

  assert {
    condition     = aws_batch_job_definition.this.retry_strategy[0].attempts == 5 && aws_batch_job_definition.this.timeout[0].attempt_duration_seconds == 86400
    error_message = "The job definition must retry 5 times and time out each attempt."
  }

  assert {
    condition = {
      for e in jsondecode(aws_batch_job_definition.this.container_properties).environment : e.name => e.value
      } == {
      FT_MODEL            = "s3://finetune-test/models/minilm/"
      FT_TRAIN_DATA       = "s3://finetune-test/data/train.jsonl"
      FT_OUTPUT_URI       = "s3://finetune-test/outputs/run1/"
      FT_CHECKPOINT_URI   = "s3://finetune-test/checkpoints/run1/"
      FT_NUM_TRAIN_EPOCHS = "3"
      # the ECS stop timeout (stop_timeout_seconds), so the job knows its time after SIGTERM
      FT_STOP_GRACE_SECONDS = "110"
    }
    error_message = "The job definition must pass the FT_* settings, the stop grace, and FT_EVAL_DATA only when set."
  }

  assert {
    condition = {
      for r in jsondecode(aws_batch_job_definition.this.container_properties).resourceRequirements : r.type => r.value
    } == { GPU = "1", VCPU = "4", MEMORY = "14336" }
    error_message = "The job definition must request GPU, VCPU and MEMORY."
  }

  assert {
    condition = (
      aws_batch_job_definition.multinode.type == "multinode" &&
      jsondecode(aws_batch_job_definition.multinode.node_properties).numNodes == 2 &&
      jsondecode(aws_batch_job_definition.multinode.node_properties).nodeRangeProperties[0].container == jsondecode(aws_batch_job_definition.this.container_properties) &&
      length(aws_batch_job_definition.multinode.retry_strategy[0].evaluate_on_exit) == length(aws_batch_job_definition.this.retry_strategy[0].evaluate_on_exit)
    )
    error_message = "The multi-node job definition must run the same container on 2 nodes with the same retry rules."
  }

  assert {
    condition = (
      length(aws_iam_role.execution) == 0 &&
      !contains(keys(jsondecode(aws_batch_job_definition.this.container_properties)), "secrets") &&
      !contains(keys(jsondecode(aws_batch_job_definition.this.container_properties)), "executionRoleArn")
    )
    error_message = "Without secrets the module creates no execution role and the job definition has neither."
  }
}

run "batch_secrets_come_from_the_job_definition_with_an_execution_role" {
  command = apply

  module {
    source = "../../modules/batch"
  }

  variables {
    name                 = "finetune"
    subnet_ids           = ["subnet-1"]
    security_group_ids   = ["sg-1"]
    instance_profile_arn = "arn:aws:iam::123456789012:instance-profile/finetune"
    service_role_arn     = "arn:aws:iam::123456789012:role/finetune-batch-service"
    job_role_arn         = "arn:aws:iam::123456789012:role/finetune-batch-job"
    image                = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:abc123"
    model                = "s3://finetune-test/models/minilm/"
    train_data           = "s3://finetune-test/data/train.jsonl"
    output_uri           = "s3://finetune-test/outputs/run1/"
    checkpoint_uri       = "s3://finetune-test/checkpoints/run1/"
    secrets = {
      WANDB_API_KEY = "arn:aws:ssm:us-east-1:123456789012:parameter/team/wandb-key"
      HF_TOKEN      = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-keys-GhIjKl:hf::"
    }
  }

  override_resource {
    target = aws_iam_role.execution
    values = { arn = "arn:aws:iam::123456789012:role/finetune-batch-execution" }
  }

  assert {
    condition = [for c in [jsondecode(aws_batch_job_definition.this.container_properties), jsondecode(aws_batch_job_definition.multinode.node_properties).nodeRangeProperties[0].container] : [c.executionRoleArn, c.secrets]] == [for i in range(2) : [
      "arn:aws:iam::123456789012:role/finetune-batch-execution",
      [
        { name = "HF_TOKEN", valueFrom = "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-keys-GhIjKl:hf::" },
        { name = "WANDB_API_KEY", valueFrom = "arn:aws:ssm:us-east-1:123456789012:parameter/team/wandb-key" },
      ],
    ]]
    error_message = "Both job definitions must take the secrets by ARN, sorted by name, with the execution role."
  }

  assert {
    condition = !anytrue([
      for e in jsondecode(aws_batch_job_definition.this.container_properties).environment : contains(["HF_TOKEN", "WANDB_API_KEY"], e.name)
    ])
    error_message = "Secrets must not also be in the plain environment."
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.execution_secrets[0].policy).Statement : s.Sid => [s.Action, s.Resource]
      } == {
      ReadSecrets    = [["secretsmanager:GetSecretValue"], ["arn:aws:secretsmanager:us-east-1:123456789012:secret:team-keys-GhIjKl"]]
      ReadParameters = [["ssm:GetParameters"], ["arn:aws:ssm:us-east-1:123456789012:parameter/team/wandb-key"]]
    }
    error_message = "The execution role must read exactly the secrets' ARNs and nothing else."
  }

  assert {
    condition     = jsondecode(aws_iam_role.execution[0].assume_role_policy).Statement[0].Principal.Service == "ecs-tasks.amazonaws.com"
    error_message = "The execution role is assumed by ECS (the agent), not by the container."
  }
}

run "batch_refuses_secrets_as_plain_settings" {
  command = plan

  module {
    source = "../../modules/batch"
  }

  variables {
    name                 = "finetune"
    subnet_ids           = ["subnet-1"]
    security_group_ids   = ["sg-1"]
    instance_profile_arn = "arn:aws:iam::123456789012:instance-profile/finetune"
    service_role_arn     = "arn:aws:iam::123456789012:role/finetune-batch-service"
    job_role_arn         = "arn:aws:iam::123456789012:role/finetune-batch-job"
    image                = "finetune:abc123"
    model                = "s3://finetune-test/models/minilm/"
    train_data           = "s3://finetune-test/data/train.jsonl"
    output_uri           = "s3://finetune-test/outputs/run1/"
    checkpoint_uri       = "s3://finetune-test/checkpoints/run1/"
    extra_environment    = { FT_HUB_TOKEN = "hf_planted", FT_AVERAGE_TOKENS_ACROSS_DEVICES = "true" }
    secrets              = { HF_TOKEN = "hf_planted", AWS_SESSION_TOKEN = "arn:aws:ssm:us-east-1:123456789012:parameter/x" }
  }

  expect_failures = [var.extra_environment, var.secrets]
}

run "batch_rejects_non_ft_settings" {
  command = plan

  module {
    source = "../../modules/batch"
  }

  variables {
    name                 = "finetune"
    subnet_ids           = ["subnet-1"]
    security_group_ids   = ["sg-1"]
    instance_profile_arn = "arn:aws:iam::123456789012:instance-profile/finetune"
    service_role_arn     = "arn:aws:iam::123456789012:role/finetune-batch-service"
    job_role_arn         = "arn:aws:iam::123456789012:role/finetune-batch-job"
    image                = "finetune:abc123"
    model                = "s3://finetune-test/models/minilm/"
    train_data           = "s3://finetune-test/data/train.jsonl"
    output_uri           = "s3://finetune-test/outputs/run1/"
    checkpoint_uri       = "s3://finetune-test/checkpoints/run1/"
    extra_environment    = { HF_TOKEN = "not-a-setting" }
    retry_attempts       = 11
  }

  expect_failures = [var.extra_environment, var.retry_attempts]
}

run "ci_caches_layers_locally_and_grants_no_batch_without_smoke_job" {
  command = apply

  module {
    source = "../../modules/ci"
  }

  variables {
    name            = "finetune"
    source_location = "https://github.com/example/finetune.git"
    repository_url  = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune"
  }

  assert {
    condition = (
      aws_codebuild_project.this.cache[0].type == "LOCAL" &&
      contains(aws_codebuild_project.this.cache[0].modes, "LOCAL_DOCKER_LAYER_CACHE")
    )
    error_message = "The CodeBuild project must keep a local Docker layer cache: ECR tags are immutable, so there is no moving tag to pull as cache."
  }

  assert {
    condition = (
      length(aws_iam_role_policy.smoke) == 0 &&
      [for v in aws_codebuild_project.this.environment[0].environment_variable : v.name] == ["ECR_REPOSITORY_URL"]
    )
    error_message = "Without smoke_job the build gets no Batch permissions and no SMOKE_* variables."
  }
}

run "ci_smoke_job_permissions_are_scoped" {
  command = apply

  module {
    source = "../../modules/ci"
  }

  variables {
    name            = "finetune"
    source_location = "https://github.com/example/finetune.git"
    repository_url  = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune"
    smoke_job = {
      job_queue_arn       = "arn:aws:batch:us-east-1:123456789012:job-queue/finetune"
      job_definition_name = "finetune"
      job_role_arn        = "arn:aws:iam::123456789012:role/finetune-batch-job"
      model               = "s3://finetune-test/models/minilm/"
      train_data          = "s3://finetune-test/data/sst2/train.jsonl"
      output_prefix       = "s3://finetune-test/outputs/smoke/"
    }
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.smoke[0].policy).Statement : s.Sid => s.Resource
      } == {
      RegisterSmokeJobDefinition = [
        "arn:aws:batch:us-east-1:123456789012:job-definition/finetune",
        "arn:aws:batch:us-east-1:123456789012:job-definition/finetune:*",
      ]
      SubmitSmokeJob = [
        "arn:aws:batch:us-east-1:123456789012:job-queue/finetune",
        "arn:aws:batch:us-east-1:123456789012:job-definition/finetune:*",
      ]
      FollowSmokeJob   = ["*"]
      PassSmokeJobRole = ["arn:aws:iam::123456789012:role/finetune-batch-job"]
      # `finetune check` before the smoke job: read the model and data, probe the output prefix
      CheckSmokeJobInputs = [
        "arn:aws:s3:::finetune-test/models/minilm/*",
        "arn:aws:s3:::finetune-test/data/sst2/train.jsonl*",
      ]
      ListSmokeJobBuckets = ["arn:aws:s3:::finetune-test"]
      ProbeSmokeJobOutput = ["arn:aws:s3:::finetune-test/outputs/smoke/*"]
    }
    error_message = "Smoke job permissions must be scoped to the queue, the definition's revisions, the job role and the smoke job's S3 prefixes; only the Describe calls get \"*\"."
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.smoke[0].policy).Statement :
      contains(s.Resource, "*") ? toset(s.Action) == toset(["batch:DescribeJobDefinitions", "batch:DescribeJobs"]) : true
    ])
    error_message = "Only actions without resource-level permissions may have Resource \"*\"."
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.smoke[0].policy).Statement : s.Condition if s.Sid == "PassSmokeJobRole"
    ]) == { StringEquals = { "iam:PassedToService" = "batch.amazonaws.com" } }
    error_message = "The build may pass the job role to Batch only."
  }

  assert {
    condition = {
      for v in aws_codebuild_project.this.environment[0].environment_variable : v.name => v.value
      } == {
      ECR_REPOSITORY_URL   = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune"
      SMOKE_JOB_QUEUE      = "arn:aws:batch:us-east-1:123456789012:job-queue/finetune"
      SMOKE_JOB_DEFINITION = "finetune"
      SMOKE_MODEL          = "s3://finetune-test/models/minilm/"
      SMOKE_TRAIN_DATA     = "s3://finetune-test/data/sst2/train.jsonl"
      SMOKE_OUTPUT_PREFIX  = "s3://finetune-test/outputs/smoke"
    }
    error_message = "The project must pass the smoke job's queue, definition and data to buildspec.yml."
  }
}

run "ci_rejects_a_smoke_job_definition_with_revision" {
  command = plan

  module {
    source = "../../modules/ci"
  }

  variables {
    name            = "finetune"
    source_location = "https://github.com/example/finetune.git"
    repository_url  = "123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune"
    smoke_job = {
      job_queue_arn       = "arn:aws:batch:us-east-1:123456789012:job-queue/finetune"
      job_definition_name = "finetune:3"
      job_role_arn        = "arn:aws:iam::123456789012:role/finetune-batch-job"
      model               = "s3://finetune-test/models/minilm/"
      train_data          = "s3://finetune-test/data/sst2/train.jsonl"
      output_prefix       = "s3://finetune-test/outputs/smoke/"
    }
  }

  expect_failures = [var.smoke_job]
}

run "complete_example" {
  command = apply

  assert {
    condition     = output.bucket_name == "finetune-example-123456789012-us-east-1"
    error_message = "The example derives the bucket name from name, account and region."
  }

  assert {
    condition = (
      module.ci.project_name == "finetune-example" &&
      output.codebuild_project_name == module.ci.project_name
    )
    error_message = "The example must expose the CodeBuild project."
  }

  assert {
    condition = (
      module.ci.smoke_environment.SMOKE_JOB_QUEUE == module.batch.job_queue_arn &&
      module.ci.smoke_environment.SMOKE_JOB_DEFINITION == module.batch.job_definition_name &&
      startswith(module.ci.smoke_environment.SMOKE_OUTPUT_PREFIX, "${local.bucket_uri}/outputs/")
    )
    error_message = "The example's builds must run the smoke job on its single-node queue and definition, writing under outputs/."
  }

  assert {
    condition = alltrue([
      for v in [output.job_queue_name, output.job_definition_arn, output.multinode_job_queue_name, output.multinode_job_definition_arn, output.sagemaker_role_arn, output.log_group_name, output.repository_url] :
      v != null && v != ""
    ])
    error_message = "The example must expose every output the launchers need."
  }
}
