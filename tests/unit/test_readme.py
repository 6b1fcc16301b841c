"""The documentation's tables are the code's tables, and its links lead somewhere.

The exit-code table lives in README.md, the settings table in docs/settings.md; every page under
docs/ is linked from the README, and every relative link in the README and in docs/ points to a
file that exists. The other way round, every FT_ name the pages mention is a setting (or listed
here with the reason it is not), and what the prose says beyond the tables (the order of the Batch
retry rules, which exit codes are not retried, defaults quoted in sentences) is what the code does.
"""

import contextlib
import fnmatch
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

from entrypoint.__main__ import main, markdown_exit_codes
from entrypoint.config import settings as config
from entrypoint.config.trainer_fields import REFUSED
from entrypoint.errors import EXIT_CODES, RETRY_RULES

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def command_output(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv, {}) == 0
    return out.getvalue()


def relative_links(page: Path) -> list[str]:
    """The link targets in a markdown page that are paths in this repository (code spans and
    fenced blocks are not markdown, so they are left out)."""
    text = INLINE_CODE.sub("", FENCED.sub("", page.read_text()))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def missing_lines(table: str, page: Path) -> list[str]:
    """The lines of `table` that are not, verbatim, lines of `page`."""
    lines = set(page.read_text().splitlines())
    return [line for line in table.splitlines() if line not in lines]


def test_settings_table_matches_the_code():
    missing = missing_lines(command_output(["settings"]), DOCS / "settings.md")
    assert not missing, "docs/settings.md lacks (regenerate with `finetune settings`):\n" + "\n".join(missing)


def test_trainer_fields_table_matches_the_code():
    missing = missing_lines(command_output(["settings", "--trainer-fields"]), DOCS / "settings.md")
    assert not missing, "docs/settings.md lacks (regenerate with `finetune settings --trainer-fields`):\n" + "\n".join(
        missing
    )


def test_exit_code_table_matches_the_code():
    missing = missing_lines(markdown_exit_codes(), README)
    assert not missing, "README.md lacks (regenerate with `finetune exit-codes`):\n" + "\n".join(missing)


def test_exit_codes_json_carries_the_retry_rules():
    data = json.loads(command_output(["exit-codes", "--json"]))
    assert {"code": 64, "name": "USER_ERROR"}.items() <= data["exit_codes"][3].items()
    assert data["batch_retry_rules"][0] == {"action": "RETRY", "on_status_reason": "Host EC2*"}


def test_every_relative_link_points_to_an_existing_file():
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"README.md's Documentation list lacks: {', '.join(sorted(missing))}"


def test_the_link_check_sees_links(tmp_path):
    """Guards the guard: links are found, those in code are not, external ones are skipped."""
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](a.md), [b](../b.md#part "title"), ![c](img/c.png), [d](#here),\n'
        "[e](https://example.com) and `[f](f.md)`.\n\n```\n[g](g.md)\n```\n\n[h]: docs/h.md\n"
    )
    assert relative_links(page) == ["a.md", "../b.md#part", "img/c.png", "docs/h.md"]
    assert "docs/settings.md" in relative_links(README)


# --- FT_ names in the prose ------------------------------------------------------------------

FT_NAME = re.compile(r"\bFT_[A-Z0-9_]+\*?")
# FT_ names the pages may mention that are not settings, and why.
NOT_SETTINGS = {
    "FT_LERNING_RATE": "a misspelling of FT_LEARNING_RATE: the example of the did-you-mean message",
}
# TrainingArguments fields finetune refuses: the pages name them to say so (docs/settings.md).
REFUSED_NAMES = {f"FT_{name.upper()}" for name in REFUSED}


def mentioned_names() -> dict[str, set[str]]:
    """{FT_ name (a prefix ends in `_`, from `FT_TUNE_*`): the pages that mention it}."""
    found: dict[str, set[str]] = {}
    for page in PAGES:
        for name in FT_NAME.findall(page.read_text()):
            found.setdefault(name.rstrip("*"), set()).add(str(page.relative_to(ROOT)))
    return found


def test_every_ft_name_in_the_docs_is_a_setting():
    settings = {f"FT_{name.upper()}" for name in config.setting_names()}
    unknown = []
    for name, pages in sorted(mentioned_names().items()):
        if name.endswith("_"):  # a family, e.g. FT_TUNE_*
            known = any(s.startswith(name) for s in settings)
        else:
            known = name in settings or name in NOT_SETTINGS or name in REFUSED_NAMES
        if not known:
            unknown.append(f"{name} ({', '.join(sorted(pages))})")
    assert not unknown, "the docs name settings that do not exist:\n" + "\n".join(unknown)


def test_the_names_allowed_besides_settings_are_still_needed():
    mentioned = mentioned_names()
    stale = [name for name in NOT_SETTINGS if name not in mentioned]
    assert not stale, f"NOT_SETTINGS lists names no page mentions any more: {stale}"
    assert not set(NOT_SETTINGS) & {f"FT_{n.upper()}" for n in config.setting_names()}, "they became settings"


def test_the_name_check_sees_names():
    """Guards the guard: names, families and names in code are found."""
    text = "Set `FT_LEARNING_RATE=1e-4`; the `FT_TUNE_*` settings; FT_NOT_A_SETTING, see [x](FT_X.md)."
    assert FT_NAME.findall(text) == ["FT_LEARNING_RATE", "FT_TUNE_*", "FT_NOT_A_SETTING", "FT_X"]


# --- claims in sentences ---------------------------------------------------------------------


def prose(page: Path) -> str:
    """A page's text with its lines joined, so that a sentence wrapped over lines reads as one."""
    return re.sub(r"\s*\n\s*", " ", page.read_text())


def claim(page: Path, pattern: str) -> re.Match:
    found = re.search(pattern, prose(page))
    assert found, f"{page.relative_to(ROOT)} no longer says {pattern!r}: make this test check what it says now"
    return found


def batch_action(exit_code: int | None, status_reason: str = "Essential container in task exited") -> str:
    """What AWS Batch does with RETRY_RULES: the first rule whose patterns all match decides; none
    matching means a retry."""
    for rule in RETRY_RULES:
        if rule.on_exit_code is not None and not fnmatch.fnmatchcase(str(exit_code), rule.on_exit_code):
            continue
        if rule.on_status_reason is not None and not fnmatch.fnmatchcase(status_reason, rule.on_status_reason):
            continue
        if rule.on_reason is not None and not fnmatch.fnmatchcase("", rule.on_reason):
            continue
        return rule.action
    return "RETRY"


def test_the_readme_states_the_retry_rules_in_their_order():
    sentence = claim(README, r"The Batch retry rules, in order \(first match wins\): ([^.]*)\.").group(1)
    stated = []
    for item in sentence.split(";"):
        condition, _, action = item.partition("→")
        if reason := re.search(r"status reason `([^`]+)`", condition):
            stated.append(("status reason", reason.group(1), action.strip()))
        elif code := re.search(r"exit (\d+)", condition):
            stated.append(("exit code", code.group(1), action.strip()))
        elif "anything else" in condition:
            stated.append(("reason", "*", action.strip()))
        else:
            stated.append(("?", condition.strip(), action.strip()))
    rules = []
    for rule in RETRY_RULES:
        if rule.on_status_reason is not None:
            rules.append(("status reason", rule.on_status_reason, rule.action.lower()))
        elif rule.on_exit_code is not None:
            rules.append(("exit code", rule.on_exit_code, rule.action.lower()))
        else:
            rules.append(("reason", rule.on_reason, rule.action.lower()))
    assert stated == rules


def test_retried_by_batch_in_the_exit_code_table_is_what_the_rules_do():
    for doc in EXIT_CODES:
        assert doc.retried == (batch_action(doc.code) == "RETRY"), doc
    claim(README, r"Killed by SIGKILL .*?Retried only when Batch reports a spot reclamation")
    assert batch_action(137, status_reason="Host EC2 (instance i-0123) terminated.") == "RETRY"


def test_exit_codes_said_not_to_be_retried_are_not():
    said = []
    for page in PAGES:
        for sentence in re.split(r"(?<=[.!?])\s", prose(page)):
            for phrase in re.finditer(r"\b(?:not|never) retried", sentence):
                before = sentence[: phrase.start()]
                codes = re.findall(r"\b(?:exit(?: code)?|exits|stays|code) (\d{2,3})\b", before)
                if codes:
                    said.append((page.name, int(codes[-1])))
    assert said, "no sentence says an exit code is not retried: make this test check what the pages say now"
    retried = [(page, code) for page, code in said if batch_action(code) != "EXIT"]
    assert not retried, f"said not to be retried, but Batch retries them: {retried}"


def field_default(name: str):
    return config.JobSettings.model_fields[name].default


def test_defaults_quoted_in_sentences_are_the_codes():
    task = claim(DOCS / "tasks.md", r"`FT_TASK` \(default `([^`]+)`\)").group(1)
    assert task == field_default("task")
    dropout = claim(DOCS / "tasks.md", r"`FT_LORA_DROPOUT` \(([0-9.]+)\)").group(1)
    assert float(dropout) == field_default("lora_dropout")

    grace = claim(
        DOCS / "checkpoints.md", r"`FT_STOP_GRACE_SECONDS` after the request: SageMaker (\d+) s, AWS Batch (\d+) s"
    )
    assert {"sagemaker": float(grace.group(1)), "batch": float(grace.group(2))} == config.STOP_GRACE_SECONDS

    from entrypoint.io import aws

    retries = claim(DOCS / "settings.md", r"\(default: botocore's `(\w+)` mode, (\d+) attempts\)")
    assert (retries.group(1), int(retries.group(2))) == (aws.RETRY_MODE, aws.MAX_ATTEMPTS)

    from entrypoint.parallel.launch import launch_plan

    claim(DOCS / "distributed.md", r"set `FT_NUM_PROCESSES` to choose; without GPUs it defaults to 1")
    assert launch_plan(config.Runtime("local"), None, 0, {}) is None  # one process: this one


def test_the_tune_defaults_in_sentences_are_the_codes():
    from entrypoint.tune import space  # pure: needs no optuna

    covered = claim(
        DOCS / "tune.md",
        r"the search covers the learning rate \(([0-9e.-]+)–([0-9e.-]+), log\), epochs \(([0-9, ]+)\), "
        r"weight decay \(([0-9.]+)–([0-9.]+)\) and warmup \(([0-9.]+)–([0-9.]+) of the steps\)",
    ).groups()
    assert {
        "learning_rate": {"low": float(covered[0]), "high": float(covered[1]), "log": True},
        "num_train_epochs": {"choices": [int(n) for n in covered[2].split(",")]},
        "weight_decay": {"low": float(covered[3]), "high": float(covered[4])},
        "warmup_steps": {"low": float(covered[5]), "high": float(covered[6])},
    } == space.DEFAULT_SPACE
    claim(
        DOCS / "tune.md",
        r"FT_TUNE_DIRECTION defaults to maximize for accuracy/F1/BLEU and minimize for losses and perplexity",
    )
    for metric in ("eval_accuracy", "eval_f1_macro", "eval_bleu"):
        assert space.default_direction(metric) == "maximize", metric
    for metric in ("eval_loss", "eval_perplexity"):
        assert space.default_direction(metric) == "minimize", metric
