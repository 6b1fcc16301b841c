"""A tiny random-initialised decoder (Llama architecture) with a byte-level BPE tokenizer and a
ChatML-style chat template, for causal-lm and LoRA tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: list[str], chat_template: bool = True):
    """Byte-level BPE trained on `texts` (deterministic, unlike WordPiece); no pad token, like most
    decoder tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [EOS, "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, model_max_length=128)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(folder: Path, texts: list[str], chat_template: bool = True) -> Path:
    """A 2-layer Llama with hidden size 32, saved with its tokenizer in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(texts, chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sst2_as(kind: str, rows: list[dict]) -> list[dict]:
    """SST-2 rows as plain text, instruction or chat data for a causal LM."""
    word = {"0": " negative", "1": " positive"}
    if kind == "text":
        return [{"text": r["text"]} for r in rows]
    if kind == "instruction":
        return [{"prompt": f"Review: {r['text']}\nSentiment:", "response": word[r["label"]]} for r in rows]
    return [
        {
            "messages": [
                {"role": "user", "content": r["text"]},
                {"role": "assistant", "content": word[r["label"]].strip()},
            ]
        }
        for r in rows
    ]


def build_assets(root: Path, rows: int = 400) -> Path:
    """`root`/model (tiny Llama) and `root`/{text,instruction,chat}-{train,eval}.jsonl from SST-2."""
    from tests.support import tiny

    sst2 = tiny.sst2_rows("train", rows)
    build_tiny_llama(root / "model", [r["text"] for r in sst2])
    cut = rows * 4 // 5
    for kind in ("text", "instruction", "chat"):
        write_jsonl(root / f"{kind}-train.jsonl", sst2_as(kind, sst2[:cut]))
        write_jsonl(root / f"{kind}-eval.jsonl", sst2_as(kind, sst2[cut:]))
    return root
