"""`store.environ` sets a variable for a block and puts back exactly what was there, also when the block fails."""

from __future__ import annotations

import os

import pytest

from pipeline import store

NAME = "HOUSING_MLOPS_TEST_ENVIRON"


@pytest.mark.parametrize("before", [None, "old", ""])
def test_the_variable_is_set_in_the_block_and_restored_after_it_even_on_error(monkeypatch, before) -> None:
    if before is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, before)
    with pytest.raises(RuntimeError), store.environ(NAME, "new"):
        assert os.environ[NAME] == "new"
        raise RuntimeError("the block failed")
    assert os.environ.get(NAME) == before
