"""The operator's view of a run: `finetune status` (where a run stands)."""
