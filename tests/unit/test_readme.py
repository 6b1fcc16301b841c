"""The README's tables are the code's tables."""
import contextlib
import io
from pathlib import Path

from entrypoint.__main__ import main, markdown_exit_codes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_matches_the_code():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["settings"], {}) == 0
    for line in out.getvalue().splitlines():
        assert line in README, f"README lacks: {line}"


def test_exit_code_table_matches_the_code():
    for line in markdown_exit_codes().splitlines():
        assert line in README, f"README lacks: {line}"


def test_exit_codes_json_carries_the_retry_rules():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["exit-codes", "--json"], {}) == 0
    import json

    data = json.loads(out.getvalue())
    assert {"code": 64, "name": "USER_ERROR"}.items() <= data["exit_codes"][3].items()
    assert data["batch_retry_rules"][0] == {"action": "RETRY", "on_status_reason": "Host EC2*"}
