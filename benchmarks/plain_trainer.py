"""The baseline of benchmarks/throughput.py: fine-tuning a text classifier with the plain Trainer,
as a user would write it from the Hugging Face course (tokenize with truncation, pad each batch
with DataCollatorWithPadding, evaluate each epoch, accuracy with numpy).

    python benchmarks/plain_trainer.py --model DIR --train train.csv --eval eval.csv --out metrics.json
    ... --padding max_length --max-length 512   # the seed recipe: every example padded to 512

Prints, and writes to --out, the Trainer's train and final evaluation metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--padding", choices=("longest", "max_length"), default="longest")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", type=Path, default=Path("plain-trainer-output"))
    args = p.parse_args()

    data = load_dataset("csv", data_files={"train": args.train, "eval": args.eval})
    num_labels = len(set(data["train"]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    padding = "max_length" if args.padding == "max_length" else False  # longest: the collator pads each batch

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length, padding=padding)

    data = data.map(tokenize, batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    training_args = TrainingArguments(
        output_dir=str(args.work),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        eval_strategy="epoch",
        seed=args.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    metrics = dict(trainer.train().metrics)
    metrics.update(trainer.evaluate())
    print(json.dumps(metrics))
    args.out.write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
