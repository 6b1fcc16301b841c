"""The documentation's tables are the code's tables, and its links lead somewhere.

The exit-code table lives in README.md, the settings table in docs/settings.md; every page under
docs/ is linked from the README, and every relative link in the README and in docs/ points to a
file that exists.
"""

import contextlib
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

from entrypoint.__main__ import main, markdown_exit_codes

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
