"""Every parameter of every step, defined once: flag, type, default, allowed range and help.

The steps' command lines are built from these (`cli.build_parser`), the step functions take
their defaults from them and check their values with them before anything is loaded or
logged, and MLproject's entry points must agree with them (tests/code/test_params.py checks all
six entry points against the command lines and the function signatures).

No MLflow here: `pipeline.data` and `pipeline.quantization` check values with these too.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline import config
from pipeline.errors import PipelineError


def parse_bool(text: str) -> bool:
    """Parses an MLproject boolean parameter ("true"/"false", "1"/"0", "yes"/"no")."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def optional_path(text: str) -> str | None:
    """A file path, or None for "" (MLproject cannot leave a string parameter out)."""
    return text or None


def comma_list(text: str) -> tuple[str, ...]:
    """Comma-separated names, blanks dropped: "challenger, quantized" -> ("challenger", "quantized")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Param:
    """One parameter of one or more steps."""

    name: str  # the MLproject parameter; the flag is `--name` with dashes
    type: Callable[[str], Any]  # turns the command line's text into the value the step function takes
    default: Any  # the step function's default (None: not given; `required`: no default)
    help: str  # what it is, for `--help`
    dest: str | None = None  # the step function's argument, when it is named differently
    low: float | None = None  # smallest and largest allowed value (numbers only)
    high: float | None = None
    exclusive: bool = False  # `low` and `high` themselves are not allowed
    required: bool = False  # the step cannot run without it
    choices: tuple[str, ...] | None = None  # the only values allowed (text parameters only)

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. `--test-size`."""
        return "--" + self.name.replace("_", "-")

    @property
    def argument(self) -> str:
        """The step function's argument that takes this parameter."""
        return self.dest or self.name

    def allowed(self) -> str | None:
        """The allowed values in words, or None when any value of the type is allowed."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.type is int:
            return f"an integer from {self.low} to {self.high}" if self.high is not None else f"an integer ≥ {self.low}"
        if self.type is not float:
            return None
        if self.exclusive:
            return f"a number between {self.low} and {self.high} (exclusive)"
        if self.low is None:
            return f"a finite number ≤ {self.high}"
        return f"a finite number ≥ {self.low}"

    def check(self, value: Any) -> None:
        """Raises PipelineError naming the flag and the value unless the value is allowed.

        NaN and ±inf are never allowed, and an integer parameter takes whole numbers only.
        """
        if self.choices:
            if value not in self.choices:
                raise PipelineError(f"{self.flag} must be {self.allowed()}, got {value!r}")
            return
        if self.type is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        else:
            return
        if ok and self.low is not None:
            ok = value > self.low if self.exclusive else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.exclusive else value <= self.high
        if not ok:
            shown = value if isinstance(value, numbers.Real) else repr(value)
            raise PipelineError(f"{self.flag} must be {self.allowed()}, got {shown}")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Adds the flag to a step's parser."""
        words = [self.help]
        if self.allowed():
            words.append(self.allowed())
        if not self.required and self.default is not None:
            words.append(f"default {_spelled(self.default)}")
        # A bare boolean flag (`--sweep`) means true.
        optional_value = {"nargs": "?", "const": True} if self.type is parse_bool else {}
        if self.choices:
            optional_value["choices"] = self.choices
        parser.add_argument(
            self.flag,
            dest=self.argument,
            metavar=self.name.upper(),
            type=self.type,
            default=self.default,
            required=self.required,
            help="; ".join(words).replace("%", "%%"),
            **optional_value,
        )


def _spelled(value: Any) -> str:
    """A default as it is written on the command line and in MLproject."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


EXPERIMENT_NAME = Param(
    "experiment_name", str, config.EXPERIMENT_NAME, "experiment for runs started outside 'mlflow run'"
)
DATA = Param(
    "data",
    optional_path,
    None,
    "CSV with the 8 features and MedHouseVal (default: scikit-learn's California Housing)",
    dest="data_path",
)
TEST_SIZE = Param("test_size", float, 0.2, "share of rows held out", low=0, high=1, exclusive=True)
# numpy seeds its generator with an unsigned 32-bit integer.
RANDOM_STATE = Param("random_state", int, 42, "seed of the split", low=0, high=2**32 - 1)
# Symmetric signed integers: 1 bit has no level but 0; int8 is what the model stores.
BITS = Param("bits", int, 8, "bit width of the quantized model", low=2, high=8)
QUANTIZE_MODEL_URI = Param("model_uri", str, config.CHALLENGER_URI, "the float model to quantize")
SWEEP = Param("sweep", parse_bool, False, "also quantize at 8, 6, 4, 3, 2 bits as nested runs and log the frontier")
CANDIDATES = Param(
    "candidates",
    comma_list,
    (config.ALIAS_CHALLENGER, config.ALIAS_QUANTIZED),
    "comma-separated aliases of the candidates",
)
# R² is at most 1; a gate above it could never pass.
MIN_R2 = Param("min_r2", float, 0.57, "lowest test R² a candidate may have", high=1)
MAX_R2_DROP = Param("max_r2_drop", float, 0.005, "how far below the champion's test R² a candidate may be", low=0)
QUANTIZED_TOLERANCE = Param(
    "quantized_tolerance", float, 0.001, "how far the quantized model may trail the float one and still win", low=0
)
ROLLBACK = Param("rollback", parse_bool, False, "swap champion and previous-champion back instead of promoting")
MODEL_URI = Param(
    "model_uri", str, config.CHAMPION_URI, "the model: models:/name@alias, models:/name/N or any URI MLflow loads"
)
INPUT = Param(
    "input",
    optional_path,
    None,
    "CSV with the 8 features, MedHouseVal optional (default: the model's held-out rows)",
    dest="input_path",
)
OUTPUT = Param("output", str, "predictions.csv", "predictions CSV to write", dest="output_path")
# Where `--engine spark` writes when --output is left at its default (a CSV name would mislead).
SPARK_OUTPUT = "predictions.parquet"
# Smaller chunks pay more per-call costs; larger ones hold more rows in memory for no gain
# (benchmarks/bench_predict_parts.py --chunksize N compares them).
CHUNKSIZE = Param("chunksize", int, 50_000, "how many rows are read and scored at a time", low=1)
ENGINE_PANDAS = "pandas"
ENGINE_SPARK = "spark"
ENGINE = Param(
    "engine",
    str,
    ENGINE_PANDAS,
    f"what scores the rows: pandas in this process, or Spark (needs the [spark] extra and Java 17/21); "
    f"with spark the input may be a CSV or Parquet file or folder and the output is a Parquet folder "
    f"({SPARK_OUTPUT} unless --output is given)",
    choices=(ENGINE_PANDAS, ENGINE_SPARK),
)
# Any Spark master URL; `local[*]` uses every core of this machine.
SPARK_MASTER = Param("spark_master", str, "local[*]", "Spark master URL (--engine spark only)")
# How Spark's workers get the model's Python packages (mlflow.pyfunc.spark_udf's env_manager):
# `local` takes this environment's; virtualenv and uv rebuild the model's own, for clusters whose
# Python differs.
SPARK_ENV_MANAGER = Param(
    "spark_env_manager",
    str,
    "local",
    "how Spark's workers get the model's packages: this environment's (local), or the model's own rebuilt "
    "(--engine spark only)",
    choices=("local", "virtualenv", "uv"),
)
BATCH = Param(
    "batch", str, None, "CSV of new rows: the 8 features, MedHouseVal optional", dest="batch_path", required=True
)
REFERENCE = Param(
    "reference",
    optional_path,
    None,
    "CSV of reference rows (default: the rows that trained the model)",
    dest="reference_path",
)
FAIL_ON_DRIFT = Param("fail_on_drift", parse_bool, False, "exit with code 3 when drift is found, after logging")
# Fewer rows than this and the drift tests have too little to go on.
MIN_BATCH = Param("min_batch", int, 200, "fewest rows accepted in the batch and the reference", low=1)
# Every step takes it (`pipeline.cli` adds it to each command line, MLproject to each entry point).
VERBOSE = Param("verbose", parse_bool, False, "show the INFO log lines of the steps and of MLflow on stderr")
