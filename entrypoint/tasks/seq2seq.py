"""seq2seq: source text → target text (translation, summarisation). An encoder-decoder model
(T5, BART, Marian, ...), or an encoder alone (BERT, MiniLM) warm-started on both sides of an
EncoderDecoderModel. Metric: eval_loss, plus corpus BLEU of generated text with
FT_PREDICT_WITH_GENERATE=true."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EncoderDecoderModel,
    Seq2SeqTrainer,
    set_seed,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

from entrypoint.errors import UserError
from entrypoint.job import modeling, preprocess

from . import Prepared, Task, lengths

log = logging.getLogger(__name__)


def columns(settings) -> dict[str, str | None]:
    return {"FT_SOURCE_COLUMN": settings.source_column, "FT_TARGET_COLUMN": settings.target_column}


def prepare(splits, settings) -> Prepared:
    return Prepared(splits.train, splits.eval, {})


def load_model(folder, uri: str, info: dict, settings, seed: int):
    """A sequence-to-sequence model; an encoder-only folder becomes both halves of an
    EncoderDecoderModel (new cross-attention, seeded so two runs start from equal weights)."""
    set_seed(seed)
    try:
        config = AutoConfig.from_pretrained(str(folder))
        if config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            return AutoModelForSeq2SeqLM.from_pretrained(str(folder), **modeling.model_kwargs(settings))
        return encoder_decoder(folder, uri, config.model_type)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"FT_MODEL: cannot load {uri} as a seq2seq model (an encoder-decoder such as T5 or BART, "
            f"or an encoder such as BERT to warm-start one): {exc}"
        ) from exc


def encoder_decoder(folder, uri: str, model_type: str):
    """`folder`'s encoder on both sides (the bert2bert recipe): the decoder starts from [CLS] and
    ends with [SEP], the tokenizer's own markers."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if None in (start, end, tokenizer.pad_token_id):
        raise UserError(
            f"FT_MODEL: {uri} is an encoder only ({model_type}); warm-starting an encoder-decoder from it needs "
            "a tokenizer with start (CLS/BOS), end (SEP/EOS) and padding tokens, and this one lacks some."
        )
    log.info(
        "FT_MODEL is an encoder only (%s): training an EncoderDecoderModel with this encoder on both sides "
        "(the decoder's cross-attention is new); the output loads with AutoModelForSeq2SeqLM",
        model_type,
    )
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(folder), str(folder))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = start
        config.bos_token_id = start
        config.eos_token_id = end
        config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    return model


def tokenize(ds, tokenizer, settings, info):
    """input_ids from the source column, labels from the target column, each truncated."""
    length = preprocess.max_length(tokenizer, settings.max_length)
    source, target = settings.source_column, settings.target_column

    def encode(batch):
        sources = [str(t) if t is not None else "" for t in batch[source]]
        targets = [str(t) if t is not None else "" for t in batch[target]]
        return tokenizer(sources, text_target=targets, truncation=True, max_length=length)

    return ds.map(
        encode, batched=True, remove_columns=ds.column_names, desc="tokenize", **preprocess.map_options(ds, settings)
    )


@dataclasses.dataclass
class Seq2SeqCollator(DataCollatorForSeq2Seq):
    """Pads inputs with the pad token and labels with -100 (ignored by the loss), and drops a
    label sequence's leading decoder-start token: the model prepends that token itself, and a
    BERT tokenizer's targets already begin with it ([CLS]), which would teach the decoder to
    produce it twice."""

    decoder_start_token_id: int | None = None

    def __call__(self, features, return_tensors=None):
        start = self.decoder_start_token_id
        if start is not None:
            features = [
                dict(f, labels=list(f["labels"])[1:]) if len(f["labels"]) > 1 and f["labels"][0] == start else f
                for f in features
            ]
        return super().__call__(features, return_tensors)


def collator(tokenizer, model, settings):
    return Seq2SeqCollator(
        tokenizer,
        model=model,
        label_pad_token_id=-100,
        pad_to_multiple_of=lengths.pad_multiple(torch.cuda.is_available()),
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    )


# sacreBLEU's default tokenizer ("13a", from mteval-v13a.pl), so scores compare with published ones.
_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(line: str) -> list[str]:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A:
        line = pattern.sub(replacement, line)
    return line.split()


def corpus_bleu(hypotheses: list[str], references: list[str], max_order: int = 4) -> float:
    """Corpus BLEU (0-100) with one reference per hypothesis, as sacreBLEU computes it by default:
    13a tokenization, case-sensitive, brevity penalty, 'exp' smoothing of zero n-gram matches."""
    correct, total = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = tokenize_13a(hyp), tokenize_13a(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_order + 1):
            h_ngrams = collections.Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            r_ngrams = collections.Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            correct[n - 1] += sum((h_ngrams & r_ngrams).values())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or not any(correct) or not all(total):
        return 0.0  # no match at all, or a corpus shorter than max_order tokens: sacreBLEU says 0
    log_precisions, smooth = [], 1.0
    for n in range(max_order):
        if correct[n] == 0:
            smooth *= 2
            log_precisions.append(math.log(100.0 / (smooth * total[n])))
        else:
            log_precisions.append(math.log(100.0 * correct[n] / total[n]))
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(sum(log_precisions) / max_order)


def bleu_metrics(tokenizer):
    """compute_metrics for generated token ids: corpus BLEU against the decoded labels, and the
    mean generated length in tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def compute(eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        predictions = predictions[0] if isinstance(predictions, tuple) else predictions
        # Batches are padded with -100 when gathered; the tokenizer cannot decode that.
        predictions = np.where(np.asarray(predictions) < 0, pad, predictions)
        labels = np.where(np.asarray(labels) < 0, pad, labels)
        hypotheses = [t.strip() for t in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        references = [t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        lengths = [int(np.count_nonzero(row != pad)) for row in predictions]
        return {"bleu": corpus_bleu(hypotheses, references), "gen_len": float(np.mean(lengths))}

    return compute


class GroupedSeq2SeqTrainer(lengths.LengthSampling, Seq2SeqTrainer):
    """Training batches of similar (source) length; evaluation in the data's order (eval_loss is a
    mean over each batch's tokens, so sorting would change it)."""


def metrics(tokenizer, settings, info):
    return bleu_metrics(tokenizer) if settings.predict_with_generate else None


TASK = Task(
    name="seq2seq",
    columns=columns,
    prepare=prepare,
    load_model=load_model,
    tokenize=tokenize,
    collator=collator,
    metrics=metrics,
    trainer=lambda settings, info: (GroupedSeq2SeqTrainer, {}),
    seq2seq_arguments=True,
    metric_for_best_model="loss",
    argument_defaults={"train_sampling_strategy": "group_by_length"},
)
