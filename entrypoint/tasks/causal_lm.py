"""causal-lm: next-token prediction on plain text (FT_TEXT_COLUMN, optionally packed into full
blocks), on instruction data (FT_PROMPT_COLUMN + FT_RESPONSE_COLUMN: loss on the response only) or
on chat data (FT_MESSAGES_COLUMN: loss on the assistant turns only); perplexity from the eval loss.
Batches are padding-free where the model keeps flattened examples apart (padding_free.py), else padded."""

from __future__ import annotations

import dataclasses
import json
import logging

import torch
from transformers import AutoModelForCausalLM, TrainingArguments, set_seed

from entrypoint.errors import UserError
from entrypoint.job import modeling, preprocess

from . import Prepared, Task, padding_free
from .perplexity import PerplexityTrainer

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips (torch.nn.CrossEntropyLoss's ignore_index)


def mode(settings) -> str:
    """'chat', 'instruction' or 'text': which columns shape the examples."""
    if settings.messages_column:
        return "chat"
    if settings.prompt_column:
        return "instruction"
    return "text"


def columns(settings) -> dict[str, str | None]:
    kind = mode(settings)
    if kind == "chat":
        return {"FT_MESSAGES_COLUMN": settings.messages_column}
    if kind == "instruction":
        return {"FT_PROMPT_COLUMN": settings.prompt_column, "FT_RESPONSE_COLUMN": settings.response_column}
    return {"FT_TEXT_COLUMN": settings.text_column}


def prepare(splits, settings) -> Prepared:
    return Prepared(splits.train, splits.eval, {})


def load_model(folder, uri: str, info: dict, settings, seed: int):
    """The causal LM, seeded so that anything initialised afterwards (LoRA adapters) is the same in
    every attempt of the job."""
    kwargs = modeling.model_kwargs(settings)
    set_seed(seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"FT_MODEL: cannot load {uri} as a causal-lm model: {exc}") from exc
    modeling.log_attention(model, getattr(settings, "attn_implementation", None))
    return model


def ensure_pad_token(tokenizer) -> None:
    """Many decoder tokenizers have no pad token; padding is masked anyway, so EOS serves."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(
                "FT_MODEL: the tokenizer has neither a pad nor an EOS token. "
                "Set one (tokenizer.eos_token) and save it with the model."
            )
        tokenizer.pad_token = tokenizer.eos_token


def with_eos(ids: list[int], eos_id: int | None) -> list[int]:
    return ids if eos_id is None or (ids and ids[-1] == eos_id) else ids + [eos_id]


def pack(input_ids: list[list[int]], labels: list[list[int]], block: int) -> dict[str, list[list[int]]]:
    """Concatenate the examples and cut them into blocks of exactly `block` tokens; the tail shorter
    than a block is dropped. Pure and order-preserving, so every attempt sees the same blocks."""
    flat_ids = [t for ids in input_ids for t in ids]
    flat_labels = [t for ls in labels for t in ls]
    usable = len(flat_ids) // block * block
    return {
        "input_ids": [flat_ids[i : i + block] for i in range(0, usable, block)],
        "labels": [flat_labels[i : i + block] for i in range(0, usable, block)],
    }


def encode_text(texts: list, tokenizer, length: int, packing: bool) -> dict[str, list[list[int]]]:
    """Plain text: every token is a target; each document ends with EOS (so the model learns where
    documents end, and packed documents stay apart)."""
    eos = tokenizer.eos_token_id
    if packing:
        ids = [with_eos(x, eos) for x in tokenizer([str(t) if t is not None else "" for t in texts])["input_ids"]]
        return pack(ids, [list(x) for x in ids], length)
    ids = tokenizer([str(t) if t is not None else "" for t in texts], truncation=True, max_length=length - 1)[
        "input_ids"
    ]
    ids = [with_eos(x, eos)[:length] for x in ids]
    return {"input_ids": ids, "labels": [list(x) for x in ids]}


def encode_instruction(prompts: list, responses: list, tokenizer, length: int) -> dict[str, list[list[int]]]:
    """prompt + response + EOS; the prompt's labels are IGNORE. The two are tokenized separately
    (so the boundary is exact) and joined as given: put any separator (a newline, "Answer:") in
    the data."""
    eos = tokenizer.eos_token_id
    out = {"input_ids": [], "labels": []}
    for prompt, response in zip(prompts, responses, strict=True):
        p = tokenizer(str(prompt) if prompt is not None else "")["input_ids"]
        r = with_eos(
            tokenizer(str(response) if response is not None else "", add_special_tokens=False)["input_ids"], eos
        )
        out["input_ids"].append((p + r)[:length])
        out["labels"].append(([IGNORE] * len(p) + r)[:length])
    return out


def as_messages(value) -> list[dict]:
    """A chat as a list of {role, content} (a JSON string is accepted, e.g. from csv)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise UserError(
            f"FT_MESSAGES_COLUMN: every row must be a list of {{role, content}} messages; got {str(value)[:200]!r}."
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of its assistant turns (content and end-of-turn
    marker). Each span lies between the render of the chat before the turn (with the generation
    prompt) and the render including it; this needs the template to render prefixes as prefixes."""

    def render(msgs, prompt=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], True) if i else "", render(messages[: i + 1])
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise UserError(
                "FT_MESSAGES_COLUMN: the tokenizer's chat template does not render a conversation's start as a prefix "
                "of the whole, so assistant turns cannot be located. Use FT_PROMPT_COLUMN/FT_RESPONSE_COLUMN instead."
            )
        spans.append((len(before), len(through)))
    return text, spans


def encode_chat(chats: list, tokenizer, length: int) -> dict[str, list[list[int]]]:
    """The chat rendered by the tokenizer's template; only tokens that start inside an assistant turn
    are targets."""
    out = {"input_ids": [], "labels": []}
    for chat in chats:
        text, spans = assistant_spans(as_messages(chat), tokenizer)
        # The template writes the special tokens (BOS, turn markers) itself.
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [
            t if any(a <= start < b for a, b in spans) else IGNORE
            for t, (start, _) in zip(ids, enc["offset_mapping"], strict=True)
        ]
        out["input_ids"].append(ids[:length])
        out["labels"].append(labels[:length])
    return out


def tokenize(ds, tokenizer, settings, info):
    """input_ids and labels (IGNORE where no loss applies); examples left with no target after
    truncation are dropped (an all-IGNORE batch has no loss)."""
    ensure_pad_token(tokenizer)
    kind = mode(settings)
    length = preprocess.max_length(tokenizer, settings.max_length)
    if kind == "chat":
        if not tokenizer.chat_template:
            raise UserError(
                "FT_MESSAGES_COLUMN needs a tokenizer with a chat template, and this model's tokenizer has none. "
                "Set tokenizer.chat_template and save it with the model, or use FT_PROMPT_COLUMN/FT_RESPONSE_COLUMN."
            )
        if not tokenizer.is_fast:
            raise UserError("FT_MESSAGES_COLUMN needs a fast tokenizer (tokenizer.json) to locate assistant turns.")

    # Plain values in the closure (not the settings object), so `datasets` can fingerprint it.
    cols, packing = list(columns(settings).values()), settings.packing

    def encode(batch):
        if kind == "chat":
            encoded = encode_chat(batch[cols[0]], tokenizer, length)
        elif kind == "instruction":
            encoded = encode_instruction(batch[cols[0]], batch[cols[1]], tokenizer, length)
        else:
            return encode_text(batch[cols[0]], tokenizer, length, packing)
        return pack(encoded["input_ids"], encoded["labels"], length) if packing else encoded

    # Packed blocks follow the batch boundaries, which several processes' shards would move.
    parallel = {} if packing else preprocess.map_options(ds, settings)
    out = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize", **parallel)
    kept = out.filter(lambda ex: any(t != IGNORE for t in ex["labels"][1:]), desc="drop examples without targets")
    if len(kept) < len(out):
        log.warning(
            "dropped %d of %d examples with no target tokens left after truncation to %d tokens (raise FT_MAX_LENGTH?)",
            len(out) - len(kept),
            len(out),
            length,
        )
    if len(kept) == 0:
        raise UserError(
            f"causal-lm: no example has a target token within FT_MAX_LENGTH={length}"
            f"{' (packing needs at least one full block of text)' if settings.packing else ''}."
        )
    return kept


@dataclasses.dataclass
class PadCollator:
    """Right-pads input_ids (pad token), attention_mask (0) and labels (IGNORE) to the longest
    example, rounded up to a multiple of 8 (tensor cores)."""

    pad_token_id: int
    multiple: int = 8

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        size = -(-longest // self.multiple) * self.multiple

        def padded(key, value):
            return torch.tensor([list(f[key]) + [value] * (size - len(f[key])) for f in features], dtype=torch.long)

        batch = {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", IGNORE)}
        batch["attention_mask"] = torch.tensor(
            [[1] * len(f["input_ids"]) + [0] * (size - len(f["input_ids"])) for f in features], dtype=torch.long
        )
        return batch


def batch_plan(model, settings) -> padding_free.Plan:
    """Padding-free or padded batches (padding_free.plan), running the model probe only when the
    settings leave padding-free open."""
    batch = getattr(settings, "per_device_train_batch_size", None) or TrainingArguments.per_device_train_batch_size
    use_cache = bool(getattr(settings, "use_cache", None))
    facts = (settings.padding_free, settings.packing, batch, use_cache, padding_free.attention_of(model))
    if model is None:
        return padding_free.plan(*facts, apart=None)
    if not (open_to_it := padding_free.plan(*facts, apart=True)).padding_free:
        return open_to_it
    return padding_free.plan(*facts, apart=padding_free.keeps_examples_apart(model))


def collator(tokenizer, model, settings):
    ensure_pad_token(tokenizer)
    chosen = batch_plan(model, settings)
    explicit_but_refused = settings.padding_free == "true" and not chosen.padding_free
    log.log(logging.WARNING if explicit_but_refused else logging.INFO, "%s", chosen.message)
    return padding_free.flattening_collator() if chosen.padding_free else PadCollator(tokenizer.pad_token_id)


TASK = Task(
    name="causal-lm",
    columns=columns,
    prepare=prepare,
    load_model=load_model,
    tokenize=tokenize,
    collator=collator,
    metrics=lambda tokenizer, settings, info: None,
    trainer=lambda settings, info: (PerplexityTrainer, {}),
    metric_for_best_model="loss",
)
