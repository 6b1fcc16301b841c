"""finetune: fine-tune Hugging Face models as spot-resilient cloud batch jobs."""

__version__ = "0.1.0"
