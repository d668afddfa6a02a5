"""Code: each parameter defined once (pipeline/params.py), and every way in agrees with it.

The six entry points of MLproject, the command line of `python -m pipeline <step>` and the step
functions' signatures must name the same parameters with the same types and defaults; every
numeric parameter refuses NaN, ±inf and out-of-range values with one line and exit code 2
before anything is logged, from the command line and when the function is called directly.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import shlex
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli, main, monitor, params, predict, promote, quantize, train
from pipeline.__main__ import STEPS
from pipeline.errors import PipelineError
from pipeline.params import (
    BITS,
    CHUNKSIZE,
    MAX_R2_DROP,
    MIN_BATCH,
    MIN_R2,
    QUANTIZED_TOLERANCE,
    RANDOM_STATE,
    TEST_SIZE,
    Param,
)
from tests.conftest import ROOT

# The function each entry point runs.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "train": train.train,
    "quantize": quantize.quantize,
    "promote": promote.promote,
    "predict": predict.predict,
    "monitor": monitor.monitor,
    "main": main.run_pipeline,
}
# `mlflow run` chooses the experiment itself (--experiment-name), so no entry point takes one.
NOT_IN_MLPROJECT = {"experiment_name"}
# `promote --rollback` runs `promote.rollback` instead of `promote.promote`.
NOT_ARGUMENTS = {("promote", "rollback")}
# Function arguments that are not parameters of the entry point: predict's progress bar is
# drawn when stderr is a terminal.
NOT_PARAMETERS = {("predict", "progress")}
MLPROJECT_TYPES = {int: "int", float: "float"}
# A value `monitor` needs on every command line.
REQUIRED = {"batch": "new.csv"}


@cache
def entry_points() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]


def step_params(step: str) -> tuple[Param, ...]:
    return importlib.import_module(f"pipeline.{step}").PARAMS


def entry_params(step: str) -> tuple[Param, ...]:
    """The step's parameters and those every step takes (`--verbose`), in MLproject's order."""
    return (*step_params(step), *cli.COMMON_PARAMS)


def parsed_value(parsed: dict[str, Any], param: Param) -> Any:
    """A parsed parameter: the step function's argument, or what `cli` kept of a common one."""
    if param in cli.COMMON_PARAMS:
        assert param.argument not in parsed  # the step functions do not take it
        return cli.verbose_requested()
    return parsed[param.argument]


def parse(step: str, argv: list[str]) -> argparse.Namespace:
    return importlib.import_module(f"pipeline.{step}").build_parser().parse_args(argv)


def mlproject_argv(step: str, values: dict[str, Any]) -> list[str]:
    """The entry point's command with these parameter values, as `mlflow run` starts it (shell-quoted)."""
    command = entry_points()[step]["command"]
    argv = shlex.split(command.format(**{name: shlex.quote(str(value)) for name, value in values.items()}))
    assert argv[:4] == ["python", "-m", "pipeline", step]
    return argv[4:]


def other_value(param: Param) -> str:
    """A value unlike the default, as text, to see that each placeholder reaches its own flag."""
    if param.choices:
        return next(choice for choice in param.choices if choice != param.default)
    if param.type is int:
        return str(param.default + 1)
    if param.type is float:
        return str(param.default + 0.125)
    if param.type is params.parse_bool:
        return "true"
    if param.type is params.comma_list:
        return f"{param.name}-a,{param.name}-b"
    return f"{param.name}-value.csv"


def test_every_step_is_an_entry_point() -> None:
    assert set(entry_points()) == set(STEPS) == set(FUNCTIONS)


@pytest.mark.parametrize("step", STEPS)
def test_mlproject_names_types_and_defaults_agree_with_the_parameters(step: str) -> None:
    entry = entry_points()[step]["parameters"]
    expected = {p.name: p for p in entry_params(step) if p.name not in NOT_IN_MLPROJECT}
    assert list(entry) == list(expected)
    for name, param in expected.items():
        spec = entry[name]
        assert spec["type"] == MLPROJECT_TYPES.get(param.type, "path" if param.required else "string"), name
        # A required parameter has no default, so `mlflow run` insists on it.
        assert ("default" in spec) is not param.required, name
        if not param.required:
            # MLflow passes the default through the command line: it must parse to the same value.
            assert param.type(str(spec["default"])) == param.default, name


@pytest.mark.parametrize("step", STEPS)
def test_mlproject_command_passes_each_parameter_to_its_own_flag(step: str) -> None:
    entry = entry_points()[step]["parameters"]
    defaults = {name: spec.get("default", REQUIRED.get(name)) for name, spec in entry.items()}
    # With MLproject's defaults, the command parses to the command line's defaults.
    from_mlproject = vars(parse(step, mlproject_argv(step, defaults)))
    verbose = cli.verbose_requested()
    assert from_mlproject == vars(parse(step, _required_flags(step)))
    assert verbose is cli.verbose_requested() is False
    # With a different value for each parameter, each one arrives at its own argument.
    by_name = {p.name: p for p in entry_params(step)}
    values = {name: other_value(by_name[name]) for name in entry}
    parsed = vars(parse(step, mlproject_argv(step, values)))
    for name, text in values.items():
        assert parsed_value(parsed, by_name[name]) == by_name[name].type(text), name


def _required_flags(step: str) -> list[str]:
    return [part for p in step_params(step) if p.required for part in (p.flag, REQUIRED[p.name])]


@pytest.mark.parametrize("step", STEPS)
def test_command_line_and_function_defaults_agree_with_the_parameters(step: str) -> None:
    signature = inspect.signature(FUNCTIONS[step]).parameters
    parsed = vars(parse(step, _required_flags(step)))
    arguments = set()
    for param in step_params(step):
        if not param.required:
            assert parsed[param.argument] == param.default, param.name
        if (step, param.name) in NOT_ARGUMENTS:
            continue
        arguments.add(param.argument)
        expected = inspect.Parameter.empty if param.required else param.default
        assert signature[param.argument].default == expected, param.name
    assert set(signature) - arguments == {name for s, name in NOT_PARAMETERS if s == step}
    # The command line's values are the function's arguments: `step(**vars(args))` runs it.
    assert set(parsed) - {p.argument for p in step_params(step) if (step, p.name) in NOT_ARGUMENTS} <= set(signature)


@pytest.mark.parametrize("step", STEPS)
def test_help_states_each_range_and_default(step: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(step, ["--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for param in entry_params(step):
        assert param.flag in shown
        if param.allowed():
            assert param.allowed() in shown


# Each numeric parameter, the steps that take it, and values it must refuse.
STEPS_OF = {
    TEST_SIZE: ("train", "main"),
    RANDOM_STATE: ("train", "main"),
    BITS: ("quantize", "main"),
    MIN_R2: ("promote", "main"),
    MAX_R2_DROP: ("promote", "main"),
    QUANTIZED_TOLERANCE: ("promote", "main"),
    CHUNKSIZE: ("predict",),
    MIN_BATCH: ("monitor",),
}
BAD_VALUES = {
    TEST_SIZE: ["nan", "inf", "-inf", "0", "1", "-0.1", "1.5"],
    RANDOM_STATE: ["-1", "4294967296", "nan", "4.5"],
    BITS: ["1", "9", "0", "-8", "nan"],
    MIN_R2: ["nan", "inf", "-inf", "1.01"],
    MAX_R2_DROP: ["nan", "inf", "-0.001"],
    QUANTIZED_TOLERANCE: ["nan", "inf", "-0.001"],
    CHUNKSIZE: ["0", "-5", "nan"],
    MIN_BATCH: ["0", "-1", "nan"],
}
BAD_CASES = [
    pytest.param(step, param, text, id=f"{step}{param.flag}={text}")
    for param, steps in STEPS_OF.items()
    for step in steps
    for text in BAD_VALUES[param]
] + [pytest.param("promote --rollback", MIN_R2, "nan", id="promote--rollback--min-r2=nan")]


def test_every_numeric_parameter_is_covered() -> None:
    numeric = {p for step in STEPS for p in step_params(step) if p.type in (int, float)}
    assert numeric == set(STEPS_OF)
    assert {(step, p) for step in STEPS for p in step_params(step) if p in numeric} == {
        (step, p) for p, steps in STEPS_OF.items() for step in steps
    }


def _as_number(param: Param, text: str) -> int | float:
    value = float(text)
    return int(value) if param.type is int and value.is_integer() else value


@pytest.mark.parametrize(("step", "param", "text"), BAD_CASES)
def test_bad_numeric_value_is_one_line_exit_2_and_nothing_logged(
    tracking_uri: str, capsys: pytest.CaptureFixture[str], step: str, param: Param, text: str
) -> None:
    name, *extra = step.split()
    # `--flag=-inf`: with a space, argparse takes "-inf" for a flag (and says so in one line).
    argv = [*extra, *_required_flags(name), f"{param.flag}={text}"]
    try:
        code = importlib.import_module(f"pipeline.{name}").main(argv)
    except SystemExit as exit_:  # argparse: not a number of the parameter's type
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    value = _as_number(param, text)
    if param.type is int and not isinstance(value, int):
        assert err.strip() == (
            f"error: argument {param.flag}: invalid int value: {text!r} (see python -m pipeline {name} --help)"
        )
    else:
        assert err.strip() == f"error: {param.flag} must be {param.allowed()}, got {value}"
    # Called directly, as `main` calls the steps, the function refuses it the same way.
    function = promote.rollback if extra else FUNCTIONS[name]
    arguments = {p.argument: REQUIRED[p.name] for p in step_params(name) if p.required}
    if not extra:
        with pytest.raises(PipelineError) as refused:
            function(**arguments, **{param.argument: value})
        assert str(refused.value) == f"{param.flag} must be {param.allowed()}, got {value}"
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert client.search_model_versions() == []


@pytest.mark.parametrize(
    ("param", "value"),
    [
        *[(TEST_SIZE, 0.5), (TEST_SIZE, 1e-9), (RANDOM_STATE, 0), (RANDOM_STATE, 2**32 - 1), (BITS, 2), (BITS, 8)],
        *[(MIN_R2, 1.0), (MIN_R2, -5.0), (MAX_R2_DROP, 0.0), (QUANTIZED_TOLERANCE, 0), (CHUNKSIZE, 1), (MIN_BATCH, 1)],
    ],
)
def test_values_at_the_edges_of_the_range_are_allowed(param: Param, value: float) -> None:
    param.check(value)


@pytest.mark.parametrize(("param", "value"), [(BITS, True), (BITS, 8.0), (MIN_R2, "0.5"), (CHUNKSIZE, math.nan)])
def test_values_of_another_type_are_refused(param: Param, value: object) -> None:
    with pytest.raises(PipelineError, match=f"^{param.flag} must be "):
        param.check(value)
