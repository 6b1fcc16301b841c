"""Launch the same job as `finetune submit sagemaker`, with the SageMaker Python SDK's ModelTrainer.

An optional route for people who already use the SDK; `finetune submit` needs only boto3.
Install the SDK in its own environment (it is large):

    pip install sagemaker    # a 2.x release whose ModelTrainer has with_metric_definitions(), or 3.x

Run:

    python examples/sagemaker_sdk.py \\
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/finetune:latest \\
        --role arn:aws:iam::123456789012:role/finetune-sagemaker \\
        --bucket my-bucket --set FT_MODEL=distilbert-base-uncased --set FT_LEARNING_RATE=3e-5

The settings and metric regexes come from the finetune package itself (run from the repository
root, or install it), so this script and `finetune submit sagemaker` cannot drift apart.
"""

from __future__ import annotations

import argparse
import datetime
import sys

from entrypoint.reporting import STANDARD_METRICS, metric_definitions
from entrypoint.submit.command import collect_settings
from entrypoint.submit.sagemaker import (
    CHECKPOINT_LOCAL_PATH,
    default_job_name,
    default_max_wait_seconds,
    hyperparameters,
)

try:  # sagemaker 2.x; the 3.x SDK moved ModelTrainer to sagemaker.train
    from sagemaker.modules.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        MetricDefinition,
        OutputDataConfig,
        StoppingCondition,
    )
    from sagemaker.modules.train import ModelTrainer
except ImportError:  # pragma: no cover - depends on the installed SDK
    try:
        from sagemaker.train import ModelTrainer
        from sagemaker.train.configs import (
            CheckpointConfig,
            Compute,
            InputData,
            MetricDefinition,
            OutputDataConfig,
            StoppingCondition,
        )
    except ImportError:
        sys.exit("this example needs the SageMaker SDK's ModelTrainer: pip install sagemaker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--role", required=True)
    parser.add_argument("--bucket", required=True, help="holds data/train, data/eval, jobs/ and checkpoints")
    parser.add_argument("--instance-type", default="ml.g5.xlarge")
    parser.add_argument("--max-runtime-seconds", type=int, default=24 * 3600)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FT_NAME=VALUE")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    # The same checks as `finetune submit`: unknown FT_ names fail here, with a did-you-mean.
    settings, problems = collect_settings(("--set", *pair.split("=", 1)) for pair in args.settings)
    if problems:
        sys.exit("\n".join(problems))
    # The SDK appends its own timestamp to base_job_name when it names the job; this run id also
    # names the checkpoint prefix, so a new launch never resumes an older run's checkpoints.
    run = default_job_name(datetime.datetime.now(datetime.timezone.utc))
    trainer = ModelTrainer(
        training_image=args.image,
        role=args.role,
        base_job_name=run,
        compute=Compute(
            instance_type=args.instance_type,
            instance_count=1,
            volume_size_in_gb=100,
            # Spot: SageMaker restarts an interrupted job; the container resumes from the newest
            # complete checkpoint it finds in CHECKPOINT_LOCAL_PATH (synced from s3_uri below).
            enable_managed_spot_training=True,
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=args.max_runtime_seconds,
            max_wait_time_in_seconds=default_max_wait_seconds(args.max_runtime_seconds),
        ),
        output_data_config=OutputDataConfig(s3_output_path=f"s3://{args.bucket}/jobs"),
        checkpoint_config=CheckpointConfig(
            s3_uri=f"s3://{args.bucket}/checkpoints/{run}",
            local_path=CHECKPOINT_LOCAL_PATH,
        ),
        # FT_LEARNING_RATE=3e-5 -> {"learning_rate": "3e-5"}, read by the container from hyperparameters.json.
        hyperparameters=hyperparameters(settings),
        environment=dict(pair.split("=", 1) for pair in args.env),
    ).with_metric_definitions(
        [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in metric_definitions(STANDARD_METRICS)]
    )

    print(f"run {run}: checkpoints under s3://{args.bucket}/checkpoints/{run}", file=sys.stderr)
    trainer.train(
        input_data_config=[
            InputData(channel_name="train", data_source=f"s3://{args.bucket}/data/train"),
            InputData(channel_name="eval", data_source=f"s3://{args.bucket}/data/eval"),
        ],
        wait=False,
    )


if __name__ == "__main__":
    main()
