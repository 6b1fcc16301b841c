from __future__ import annotations

import pytest

from tests.infra.terraform_support import copy_tree, init


@pytest.fixture(scope="session")
def example_root(tmp_path_factory):
    """The example root, initialised, in a scratch copy of infra/terraform."""
    root = copy_tree(tmp_path_factory.mktemp("tf") / "terraform")
    init(root)
    return root
