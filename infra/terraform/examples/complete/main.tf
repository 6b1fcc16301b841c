data "aws_caller_identity" "current" {}

locals {
  bucket_name = coalesce(var.bucket_name, "${var.name}-${data.aws_caller_identity.current.account_id}-${var.region}")
  bucket_uri  = "s3://${module.storage.bucket_name}"
}

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:An example network; production deployments bring their own VPC with flow logs.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = var.name }
}

resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "this" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, 0)
  availability_zone = coalesce(var.availability_zone, "${var.region}a")
  tags              = { Name = "${var.name}-private" }
}

resource "aws_security_group" "this" {
  name        = "${var.name}-batch"
  description = "finetune Batch GPU hosts: HTTPS out to S3, ECR, CloudWatch and the Hugging Face Hub"
  vpc_id      = aws_vpc.this.id

  egress {
    description = "HTTPS to AWS APIs and the Hugging Face Hub"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  # Multi-node jobs talk to each other (NCCL, torch.distributed) on any port.
  egress {
    description = "Traffic between the nodes of a multi-node job"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    self        = true
  }

  ingress {
    description = "Traffic between the nodes of a multi-node job"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    self        = true
  }
}

module "storage" {
  source = "../../modules/storage"

  bucket_name     = local.bucket_name
  repository_name = var.name
  force_destroy   = true
}

module "iam" {
  source = "../../modules/iam"

  name           = var.name
  bucket_arn     = module.storage.bucket_arn
  repository_arn = module.storage.repository_arn
  secret_arns    = var.secret_arns
}

module "batch" {
  source = "../../modules/batch"

  name                 = var.name
  subnet_ids           = [aws_subnet.this.id]
  security_group_ids   = [aws_security_group.this.id]
  instance_profile_arn = module.iam.instance_profile_arn
  service_role_arn     = module.iam.batch_service_role_arn
  job_role_arn         = module.iam.job_role_arn
  image                = "${module.storage.repository_url}:${var.image_tag}"

  model          = "${local.bucket_uri}/models/minilm/"
  train_data     = "${local.bucket_uri}/data/sst2/train.jsonl"
  eval_data      = "${local.bucket_uri}/data/sst2/validation.jsonl"
  output_uri     = "${local.bucket_uri}/outputs/example/"
  checkpoint_uri = "${local.bucket_uri}/checkpoints/example/"

  extra_environment = {
    FT_NUM_TRAIN_EPOCHS = "1"
  }
  secrets = var.secrets
}

module "ci" {
  source = "../../modules/ci"

  name            = var.name
  source_location = var.source_location
  repository_url  = module.storage.repository_url
  repository_arn  = module.storage.repository_arn

  smoke_job = {
    job_queue_arn       = module.batch.job_queue_arn
    job_definition_name = module.batch.job_definition_name
    job_role_arn        = module.iam.job_role_arn
    model               = "${local.bucket_uri}/models/minilm/"
    train_data          = "${local.bucket_uri}/data/sst2/train.jsonl"
    output_prefix       = "${local.bucket_uri}/outputs/smoke/"
  }
}
