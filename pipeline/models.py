"""What train and quantize share when they log a model: its serving code, pinned requirements and file sizes."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from pipeline import served_model
from pipeline.config import MODEL_REQUIREMENTS
from pipeline.errors import PipelineError

# The file both logged models carry and MLflow runs to serve them.
SERVED_CODE = Path(served_model.__file__)


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged model: the versions installed here.

    Given explicitly: MLflow infers them by loading the model in a subprocess, slow for every logged model.
    """
    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def model_file_bytes(model_info: ModelInfo, filename: str) -> int:
    """Size of one file of a logged model as stored, `filename` its path inside the model
    (`model.skops`, `artifacts/params.json`).

    Raises:
        PipelineError: The logged model has no such file.
    """
    folder, _, name = filename.rpartition("/")
    for artifact in MlflowClient().list_logged_model_artifacts(model_info.model_id, folder or None):
        if artifact.path.rsplit("/", 1)[-1] == name:
            return int(artifact.file_size)
    raise PipelineError(f"logged model {model_info.model_uri} has no file {filename!r}")
