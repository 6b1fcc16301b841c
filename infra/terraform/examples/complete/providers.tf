provider "aws" {
  region                      = var.region
  skip_credentials_validation = var.skip_credentials_validation
  skip_requesting_account_id  = var.skip_requesting_account_id
  skip_metadata_api_check     = var.skip_metadata_api_check
  # Test endpoints serve buckets by path, not by bucket.host names.
  s3_use_path_style = var.aws_endpoint_url != null

  dynamic "endpoints" {
    for_each = var.aws_endpoint_url == null ? [] : [var.aws_endpoint_url]
    content {
      batch          = endpoints.value
      cloudwatchlogs = endpoints.value
      codebuild      = endpoints.value
      ec2            = endpoints.value
      ecr            = endpoints.value
      iam            = endpoints.value
      s3             = endpoints.value
      sts            = endpoints.value
    }
  }

  default_tags {
    tags = {
      Project = "finetune"
    }
  }
}
