"""The real California Housing data set: its shape, names and values, and how the default split cuts it."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import data
from pipeline.config import FEATURES, TARGET
from pipeline.errors import DataError, PipelineError


def test_real_data_shape_names_and_values(california: data.Dataset) -> None:
    assert california.X.shape == (20640, 8)
    assert list(california.X.columns) == list(FEATURES)
    assert california.y.name == TARGET
    assert not california.X.isna().any().any()
    assert not california.y.isna().any()
    assert (california.X.dtypes == "float64").all()
    assert california.y.between(0.14, 5.00001).all()


def test_default_split_sizes_are_sklearns(california: data.Dataset) -> None:
    split = data.split(california, test_size=0.2, random_state=42)
    assert (len(split.X_train), len(split.X_test)) == (16512, 4128)
    assert set(split.train_index).isdisjoint(split.test_index)
    rebuilt = data.split_by_index(california, split.train_index, split.test_index)
    pd.testing.assert_frame_equal(rebuilt.X_test, split.X_test)


@pytest.mark.parametrize("random_state", [-1, 2**32])
def test_random_state_numpy_cannot_seed_with_is_refused(california: data.Dataset, random_state: int) -> None:
    message = rf"^--random-state must be an integer from 0 to 4294967295, got {random_state}$"
    with pytest.raises(PipelineError, match=message):
        data.split(california, test_size=0.2, random_state=random_state)


@pytest.mark.parametrize(
    ("test_size", "n_train", "n_test"), [(0.99999, 0, 20640), (0.9999, 2, 20638), (0.00001, 20639, 1)]
)
def test_a_test_size_that_leaves_a_side_too_small_is_one_line(
    california: data.Dataset, test_size: float, n_train: int, n_test: int
) -> None:
    # 0.99999 of 20,640 rows used to reach scikit-learn, whose refusal was a traceback.
    message = rf"test_size={test_size} on 20640 rows leaves {n_train} training and {n_test} test rows"
    with pytest.raises(DataError, match=message):
        data.split(california, test_size=test_size, random_state=42)
