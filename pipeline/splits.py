"""Which rows trained and tested a model: recorded by its run (`split.json`), rebuilt by later steps.

quantize, promote, predict and monitor reuse the split the training run recorded, so every
model is evaluated on the same held-out rows.
"""

from __future__ import annotations

from typing import Any

import mlflow

from pipeline import data
from pipeline.config import SPLIT_ARTIFACT
from pipeline.errors import PipelineError


def log_split(split: data.Split, dataset: data.Dataset, test_size: float, random_state: int) -> None:
    """Records which rows trained and tested the model, so later steps reuse the same split."""
    record = {
        "source": dataset.source,
        "digest": dataset.digest,
        "n_rows": len(dataset.X),
        "test_size": test_size,
        "random_state": random_state,
        "train_index": split.train_index,
        "test_index": split.test_index,
    }
    log_split_record(record)


def log_split_record(record: dict[str, Any]) -> None:
    """Logs a split record (as `load_split` returns it) to the active run, e.g. to pass it on."""
    mlflow.log_dict(record, SPLIT_ARTIFACT)


def load_split(run_id: str) -> tuple[data.Split, dict[str, Any]]:
    """Rebuilds the split a run recorded with `log_split`.

    Returns:
        The split and the record (source, digest, test_size, random_state, indices).

    Raises:
        PipelineError: The run recorded no split, or its data changed since.
    """
    record = load_split_record(run_id)
    return split_from_record(record, run_id), record


def load_split_record(run_id: str) -> dict[str, Any]:
    """The split record a run logged (`split.json`), without loading its data.

    Raises:
        PipelineError: The run recorded no split.
    """
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPLIT_ARTIFACT}")
    except Exception as err:  # MLflow raises several types for a missing artifact
        raise PipelineError(f"run {run_id} recorded no {SPLIT_ARTIFACT}: {err}") from None


def split_from_record(record: dict[str, Any], run_id: str) -> data.Split:
    """Loads the data a split record names and rebuilds the split from its row labels.

    Raises:
        PipelineError: The data changed since run `run_id` recorded the split.
    """
    dataset = data.load(record["source"])
    if dataset.digest != record["digest"]:
        raise PipelineError(
            f"the data at {record['source']} changed since run {run_id} recorded its split "
            f"(digest {dataset.digest}, recorded {record['digest']})"
        )
    return data.split_by_index(dataset, record["train_index"], record["test_index"])
