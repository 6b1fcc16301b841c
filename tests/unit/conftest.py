"""Fixtures of the unit tests."""

import importlib

import pytest

from tests.support.fake_hub import FakeHub, point_this_process_at


@pytest.fixture
def fake_hub(monkeypatch, tmp_path_factory):
    """The fake Hub on 127.0.0.1, with huggingface_hub in this process pointed at it."""
    import huggingface_hub.constants

    with FakeHub() as server:
        point_this_process_at(server, monkeypatch, tmp_path_factory.mktemp("hf-home"))
        yield server
    monkeypatch.undo()
    importlib.reload(huggingface_hub.constants)
