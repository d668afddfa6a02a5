"""The `california-housing` registered model: versions and the aliases that pin them."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Container
from functools import partial
from typing import TypeVar

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_QUANTIZED, MODEL_NAME
from pipeline.errors import PipelineError
from pipeline.mlflow_compat import registry_messages, retry_lost_race

log = logging.getLogger(__name__)

T = TypeVar("T")

# The command that sets each alias, named in the error when an alias is missing.
_ALIAS_SOURCE = {
    ALIAS_CHALLENGER: "python -m pipeline train",
    ALIAS_QUANTIZED: "python -m pipeline quantize",
    ALIAS_CHAMPION: "python -m pipeline promote (or the whole pipeline: mlflow run .)",
}
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def register(model_uri: str, alias: str, tags: dict[str, str]) -> ModelVersion:
    """Registers a logged model as a new version of `california-housing`, tagged with `tags`, and
    points `alias` at it.

    Call this last, after every metric and artifact is logged, so a failed step never leaves a
    registered version behind.
    """
    with registry_messages():
        version = mlflow.register_model(model_uri, MODEL_NAME, tags={k: str(v) for k, v in tags.items()})
    set_alias(alias, version.version)
    log.info("registered %s version %s, alias %r", MODEL_NAME, version.version, alias)
    return version


def set_alias(alias: str, version: str | int) -> None:
    """Points `alias` of `california-housing` at `version`.

    Two processes moving the same alias at once can make one fail on the table's unique key
    (`mlflow_compat.retry_lost_race`); moving an alias is idempotent, so that one tries again.
    """
    retry_lost_race(lambda: MlflowClient().set_registered_model_alias(MODEL_NAME, alias, version), f"alias {alias!r}")


def unless_absent(call: Callable[[], T], codes: Container[str] = ("RESOURCE_DOES_NOT_EXIST",)) -> T | None:
    """`call()`, or None when MLflow answers it with one of the error `codes` (by default: no such object)."""
    try:
        return call()
    except MlflowException as err:
        if err.error_code in codes:
            return None
        raise


def version_by_alias(alias: str, name: str = MODEL_NAME) -> ModelVersion | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    call = partial(MlflowClient().get_model_version_by_alias, name, alias)
    return unless_absent(call, ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"))


def resolve(model_uri: str) -> ModelVersion | None:
    """The registered version a `models:/name@alias` or `models:/name/N` URI names; None for URIs
    outside the registry (`runs:/`, a path, `models:/m-...`).

    Raises:
        PipelineError: The model, alias or version does not exist; the message names it and, for
            our aliases, the command that sets it.
    """
    match = _MODELS_URI.match(model_uri)
    if match is None:
        return None
    name, alias, number = match["name"], match["alias"], match["version"]
    if alias:
        version = version_by_alias(alias, name)
        if version is None:
            if unless_absent(partial(MlflowClient().get_registered_model, name)) is None:
                raise PipelineError(
                    f"the tracking store {mlflow.get_tracking_uri()} holds no model {name!r}; run the pipeline "
                    "first (python -m pipeline main), or set MLFLOW_TRACKING_URI to the store that holds it"
                )
            hint = _ALIAS_SOURCE.get(alias) if name == MODEL_NAME else None
            fix = f"; run '{hint}' to set it" if hint else ""
            raise PipelineError(f"registered model {name!r} has no alias {alias!r}{fix}")
        return version
    try:
        return MlflowClient().get_model_version(name, number)
    except MlflowException:
        raise PipelineError(f"registered model {name!r} has no version {number}") from None


def version_uri(version: ModelVersion) -> str:
    """`models:/name/N`: a URI that names this version whatever the aliases do later."""
    return f"models:/{version.name}/{version.version}"


def pin(model_uri: str) -> tuple[ModelVersion | None, str]:
    """The version a URI resolves to now (None outside the registry), and a URI to load exactly it by.

    An alias can move while a step runs (a concurrent pipeline promotes); loading by version
    number keeps the model that is used and the version that is recorded the same.

    Raises:
        PipelineError: As `resolve`.
    """
    version = resolve(model_uri)
    return version, version_uri(version) if version else model_uri
