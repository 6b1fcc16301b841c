"""seq2seq: tokenization of source/target, the collator's labels, BLEU, and the model choice
(an encoder-decoder as is; an encoder alone warm-starts an EncoderDecoderModel)."""

import json

import numpy as np
import pytest
import torch

from entrypoint.config.platform import Runtime
from entrypoint.config.settings import load_settings
from entrypoint.tasks import seq2seq
from tests.support import tiny


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return tiny.build_tiny_bert(tmp_path_factory.mktemp("bert"), [r["text"] for r in tiny.sst2_rows("train", 300)])


@pytest.fixture(scope="module")
def tokenizer(bert_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bert_folder)


def settings(**extra):
    env = {
        "FT_MODEL": "m",
        "FT_TRAIN_DATA": "t.jsonl",
        "FT_TASK": "seq2seq",
        **{f"FT_{k.upper()}": v for k, v in extra.items()},
    }
    return load_settings(env, Runtime("local"))


def tokenized(tokenizer, pairs, **extra):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"en": [p[0] for p in pairs], "de": [p[1] for p in pairs], "id": list(range(len(pairs)))}
    )
    return [
        dict(r) for r in seq2seq.tokenize(ds, tokenizer, settings(source_column="en", target_column="de", **extra), {})
    ]


def test_source_becomes_inputs_and_target_labels_truncated(tokenizer):
    rows = tokenized(tokenizer, [("a good film", "a bad film"), ("the story " * 30, None)], max_length="10")
    assert set(rows[0]) == {"input_ids", "attention_mask", "labels"}  # other columns dropped
    assert rows[0]["input_ids"] == tokenizer("a good film")["input_ids"]
    assert rows[0]["labels"] == tokenizer("a bad film")["input_ids"]
    assert len(rows[1]["input_ids"]) == 10 and rows[1]["labels"] == [tokenizer.cls_token_id, tokenizer.sep_token_id]


def test_encoder_only_folder_becomes_an_encoder_decoder_that_reloads(bert_folder, tokenizer, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    model = seq2seq.load_model(bert_folder, "s3://b/m/", {}, settings(), 7)
    assert isinstance(model, EncoderDecoderModel)
    assert model.config.decoder_start_token_id == tokenizer.cls_token_id
    assert model.generation_config.eos_token_id == tokenizer.sep_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    again = seq2seq.load_model(bert_folder, "s3://b/m/", {}, settings(), 7)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )  # seeded
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert isinstance(reloaded, EncoderDecoderModel)
    assert reloaded.generation_config.decoder_start_token_id == tokenizer.cls_token_id
    state = reloaded.state_dict()
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    ids = torch.tensor([tokenizer("a good film")["input_ids"]])
    assert reloaded.generate(ids, max_length=6)[0, 0].item() == tokenizer.cls_token_id


def test_an_encoder_decoder_folder_loads_as_itself(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=50,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
    )
    BartForConditionalGeneration(config).save_pretrained(tmp_path)
    assert isinstance(seq2seq.load_model(tmp_path, "m", {}, settings(), 1), BartForConditionalGeneration)


def test_collator_pads_labels_with_minus_100_and_drops_the_decoder_start_token(bert_folder, tokenizer):
    model = seq2seq.load_model(bert_folder, "m", {}, settings(), 1)
    rows = tokenized(tokenizer, [("a good film", "a bad film"), ("fine", "the worst film of the year")])
    batch = seq2seq.collator(tokenizer, model, settings())(rows)
    short = tokenizer("a bad film")["input_ids"][1:]  # [CLS] dropped: the model starts from it
    assert batch["labels"].shape[1] == len(tokenizer("the worst film of the year")["input_ids"]) - 1  # the longest
    assert batch["labels"][0, : len(short)].tolist() == short
    assert (batch["labels"][0, len(short) :] == -100).all()
    fine = len(tokenizer("fine")["input_ids"])
    assert (batch["input_ids"][1, fine:] == tokenizer.pad_token_id).all() and (
        batch["attention_mask"][1, fine:] == 0
    ).all()
    decoder_inputs = batch["decoder_input_ids"][0, : len(short)].tolist()
    assert decoder_inputs == [tokenizer.cls_token_id] + short[:-1]  # teacher forcing: shifted right
    assert torch.isfinite(model(**batch).loss)


def test_collator_keeps_labels_that_do_not_start_with_the_decoder_start_token(tokenizer):
    class T5Like:
        class config:
            decoder_start_token_id = 0  # T5 starts from <pad>; its targets never begin with it

    collate = seq2seq.collator(tokenizer, T5Like, settings())
    batch = collate([{"input_ids": [5, 6, 7], "labels": [8, 9, 1]}])
    assert batch["labels"].tolist() == [[8, 9, 1]]  # CPU: no padding to a multiple of 8


def test_bleu_on_known_strings():
    assert seq2seq.corpus_bleu(["the cat sat on the mat ."], ["the cat sat on the mat ."]) == pytest.approx(100)
    # precisions 4/5, 3/4, 2/3, 1/2 and no brevity penalty: 100 * 0.2 ** 0.25
    assert seq2seq.corpus_bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(100 * 0.2**0.25)
    # brevity: hypothesis 4 tokens against 8 (e ** (1 - 8/4))
    assert seq2seq.corpus_bleu(["a b c d"], ["a b c d e f g h"]) == pytest.approx(100 * np.exp(-1.0))
    assert seq2seq.corpus_bleu(["x y z w"], ["a b c d"]) == 0.0
    assert seq2seq.corpus_bleu([""], ["a b c d"]) == 0.0
    assert seq2seq.tokenize_13a('Ein Mann, 3.5 m groß, sagt: "Hallo!"') == [
        "Ein",
        "Mann",
        ",",
        "3.5",
        "m",
        "groß",
        ",",
        "sagt",
        ":",
        '"',
        "Hallo",
        "!",
        '"',
    ]


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    rows = (
        [
            json.loads(line)
            for line in (tiny.REPO.parent / "shared" / "data" / "multi30k_en_de" / "validation.jsonl")
            .read_text()
            .splitlines()[:60]
        ]
        if (tiny.REPO.parent / "shared" / "data").is_dir()
        else None
    )
    refs = [r["target"] for r in rows] if rows else [f"Ein Mann mit {i} Hunden geht, am Strand." for i in range(60)]
    # Degraded hypotheses: dropped words, swapped neighbours, one empty line, some exact.
    hyps = []
    for i, ref in enumerate(refs):
        words = ref.split()
        if i % 5 == 1:
            words = words[:-2]
        elif i % 5 == 2 and len(words) > 3:
            words[1], words[2] = words[2], words[1]
        elif i % 5 == 3:
            words = words[::2]
        hyps.append(" ".join(words) if i != 7 else "")
    assert seq2seq.corpus_bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    low = [h.split()[0] if h else "" for h in hyps]
    assert seq2seq.corpus_bleu(low, refs) == pytest.approx(sacrebleu.corpus_bleu(low, [refs]).score, abs=1e-9)


def test_bleu_metric_decodes_generated_ids_and_minus_100_padding(tokenizer):
    from transformers import EvalPrediction

    refs = ["a good film with a fine story", "the worst film of the year"]

    def padded(texts, strip_first):
        out = np.full((len(texts), 16), -100)  # how the evaluation loop pads batches together
        for i, ids in enumerate(tokenizer(texts)["input_ids"]):
            ids = ids[1:] if strip_first else ids
            out[i, : len(ids)] = ids
        return out

    labels = padded(refs, strip_first=True)  # what the collator leaves: no leading [CLS]
    compute = seq2seq.bleu_metrics(tokenizer)
    exact = compute(EvalPrediction(predictions=padded(refs, strip_first=False), label_ids=labels))
    assert exact["bleu"] == pytest.approx(100)
    assert exact["gen_len"] == pytest.approx(np.mean([len(ids) for ids in tokenizer(refs)["input_ids"]]))
    hyps = ["a good film with a fine story", "the good film of the year"]
    worse = compute(EvalPrediction(predictions=padded(hyps, strip_first=False), label_ids=labels))["bleu"]
    # (tests/support/tiny.py's tokenizer has no WordPiece decoder: "fine" decodes as "fin ##e")
    decoded = [tokenizer.decode(tokenizer(t)["input_ids"], skip_special_tokens=True) for t in hyps + refs]
    assert worse == pytest.approx(seq2seq.corpus_bleu(decoded[:2], decoded[2:]))
    assert 0 < worse < 100


def test_metrics_only_with_generation(tokenizer):
    assert seq2seq.metrics(tokenizer, settings(), {}) is None
    assert callable(seq2seq.metrics(tokenizer, settings(predict_with_generate="true"), {}))
