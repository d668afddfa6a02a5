"""The `promote` step: gate the candidates, move `champion`, keep `previous-champion`.

Each candidate is evaluated on the held-out rows its training run recorded, with
`mlflow.models.evaluate(model_type="regressor")`, in a nested run of its own, and gated with
`mlflow.validate_evaluation_results`:

- absolute: test R² ≥ `min_r2`;
- against the current champion (evaluated on the same rows), if there is one: test R² ≥
  champion's − `max_r2_drop` (MLflow's `min_absolute_change` only expresses "better by at
  least", so the allowed drop is an absolute threshold computed from the champion's score).

Among the candidates that pass, a quantized one wins if its test R² is within
`quantized_tolerance` of the best float one (smaller and cheaper to serve); otherwise the best
test R² wins, ties going to the earlier candidate. When none passes, `champion` is untouched,
the run records why, and the command exits with code 3.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlflow
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import MetricThreshold
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient

from pipeline import cli, datasets, registry, splits, tracking
from pipeline.config import ALIAS_CHAMPION, ALIAS_PREVIOUS_CHAMPION, MODEL_NAME, TARGET
from pipeline.data import Split
from pipeline.errors import PipelineError, RejectedError
from pipeline.lease import Lease, promotion_lease
from pipeline.params import CANDIDATES, EXPERIMENT_NAME, MAX_R2_DROP, MIN_R2, QUANTIZED_TOLERANCE, ROLLBACK

log = logging.getLogger(__name__)

# The gate's and the policy's parameters, shared with the `main` pipeline.
GATE_PARAMS = (MIN_R2, MAX_R2_DROP, QUANTIZED_TOLERANCE)
PARAMS = (CANDIDATES, *GATE_PARAMS, ROLLBACK, EXPERIMENT_NAME)

# mlflow.models.evaluate's metric names, under the keys every run of this project logs.
_EVALUATE_KEYS = {
    "r2_score": "test_r2",
    "mean_squared_error": "test_mse",
    "root_mean_squared_error": "test_rmse",
    "mean_absolute_error": "test_mae",
}


@dataclass(frozen=True)
class Candidate:
    """A model version under evaluation, and what the gate made of it."""

    label: str
    version: ModelVersion
    metrics: dict[str, float]
    failures: tuple[str, ...]

    @property
    def quantized(self) -> bool:
        """Whether the version is a quantized model (quantize tags it with its scheme)."""
        return "quantization" in self.version.tags

    @property
    def passed(self) -> bool:
        """Whether the candidate met every threshold of the gate."""
        return not self.failures

    def describe(self) -> str:
        """One line for the report: label, version, kind, test R² and the gate's verdict."""
        kind = self.version.tags.get("quantization", "float")
        verdict = "passed" if self.passed else "failed: " + "; ".join(self.failures)
        return f"{self.label} (v{self.version.version}, {kind}) test R² {self.metrics['test_r2']:.6f} {verdict}"


@dataclass(frozen=True)
class PromoteResult:
    """What the promotion decided: the versions now at `champion` (unchanged when rejected) and
    `previous-champion`, whether `champion` moved, why in one sentence (also a tag on the run and
    on the champion version), each candidate, and whether none passed."""

    run_id: str
    champion: str | None
    previous: str | None
    changed: bool
    reason: str
    candidates: tuple[Candidate, ...]
    rejected: bool = False


def choose(candidates: Sequence[Candidate], quantized_tolerance: float) -> tuple[Candidate | None, str]:
    """Applies the promotion policy to gated candidates (pure: no MLflow calls).

    Returns:
        The winner (None when no candidate passed) and the reason, in one sentence.
    """
    passed = [c for c in candidates if c.passed]
    if not passed:
        return None, "no candidate passed the gate: " + " | ".join(c.describe() for c in candidates)
    best = max(passed, key=lambda c: c.metrics["test_r2"])  # max keeps the first of equals
    best_float = max((c for c in passed if not c.quantized), key=lambda c: c.metrics["test_r2"], default=None)
    quantized = [c for c in passed if c.quantized]
    if quantized and best_float is not None:
        best_quantized = max(quantized, key=lambda c: c.metrics["test_r2"])
        gap = best_float.metrics["test_r2"] - best_quantized.metrics["test_r2"]
        if gap <= quantized_tolerance:
            q = f"{best_quantized.label} v{best_quantized.version.version}"
            f = f"{best_float.label} v{best_float.version.version}"
            if gap < 0:
                standing = f"scores {-gap:.6f} higher test R² than {f}"
            elif gap == 0:
                standing = f"scores the same test R² as {f}"
            else:
                standing = f"trails {f} by {gap:.6f} test R², within the tolerance of {quantized_tolerance}"
            kind = best_quantized.version.tags["quantization"]
            return best_quantized, f"{q} ({kind}) {standing}, and is smaller and cheaper to serve"
        if best is best_float:
            return best, (
                f"{best.label} v{best.version.version} has the best test R² {best.metrics['test_r2']:.6f}; "
                f"the quantized model trails it by {gap:.6f} > {quantized_tolerance}"
            )
    return (
        best,
        f"{best.label} v{best.version.version} has the best test R² {best.metrics['test_r2']:.6f} "
        "of the candidates that passed",
    )


def promote(
    candidates: Sequence[str] | Mapping[str, str] = CANDIDATES.default,
    min_r2: float = MIN_R2.default,
    max_r2_drop: float = MAX_R2_DROP.default,
    quantized_tolerance: float = QUANTIZED_TOLERANCE.default,
    experiment_name: str = EXPERIMENT_NAME.default,
) -> PromoteResult:
    """Evaluates and gates the candidates and moves `champion` to the winner.

    The arguments are `PARAMS` but `rollback`, each described once in `pipeline.params`;
    `candidates` may also map labels to model URIs (the `main` pipeline passes the versions it
    made, so that concurrent pipelines never judge each other's models).

    Raises:
        PipelineError: A gate parameter out of range, a candidate does not exist, or candidates
            were tested on different rows.
        RejectedError: No candidate passed; raised after the run is logged, `champion` untouched.
    """
    check_gate(min_r2, max_r2_drop, quantized_tolerance)
    if not isinstance(candidates, Mapping):
        candidates = {alias: f"models:/{MODEL_NAME}@{alias}" for alias in candidates}
    if not candidates:
        raise PipelineError("no candidates given")
    versions = {label: registry.resolve(uri) for label, uri in candidates.items()}
    for label, version in versions.items():
        if version is None:
            raise PipelineError(f"candidate {label!r} ({candidates[label]}) is not a registered model version")
    split, source = _common_held_out_set(versions)
    eval_data = datasets.mlflow_dataset(
        split.X_test.assign(**{TARGET: split.y_test}), source, "california-housing-evaluation"
    )
    with tracking.step_run(
        "promote", run_name="promote", description="Promotion gate", experiment_name=experiment_name
    ) as run:
        tracking.log_params(
            {
                "candidates": ",".join(f"{label}=v{v.version}" for label, v in versions.items()),
                "min_r2": min_r2,
                "max_r2_drop": max_r2_drop,
                "quantized_tolerance": quantized_tolerance,
            }
        )
        with promotion_lease() as lease:
            result = _decide(run.info.run_id, lease, versions, eval_data, min_r2, max_r2_drop, quantized_tolerance)
        decision = "promoted" if result.changed else ("rejected" if result.rejected else "unchanged")
        mlflow.set_tags(
            {
                "decision": decision,
                "decision.reason": result.reason,
                "mlflow.note.content": f"{decision}: {result.reason}",
            }
        )
    if result.rejected:
        raise RejectedError(f"promotion rejected, champion unchanged: {result.reason}")
    log.info("%s: %s", decision, result.reason)
    return result


def check_gate(min_r2: float, max_r2_drop: float, quantized_tolerance: float) -> None:
    """Raises PipelineError naming the flag and the value of the first gate parameter out of range."""
    for param, value in zip(GATE_PARAMS, (min_r2, max_r2_drop, quantized_tolerance), strict=True):
        param.check(value)


def rollback(experiment_name: str = EXPERIMENT_NAME.default) -> PromoteResult:
    """Swaps `champion` and `previous-champion` back, in one logged run.

    Raises:
        PipelineError: There is no `previous-champion` to go back to.
    """
    with tracking.step_run(
        "promote", run_name="rollback", description="Rollback of the champion", experiment_name=experiment_name
    ) as run:
        with promotion_lease() as lease:
            current = _judged_against(lease)
            previous = registry.version_by_alias(ALIAS_PREVIOUS_CHAMPION)
            if previous is None or current is None:
                raise PipelineError(
                    f"nothing to roll back to: {MODEL_NAME} has no {ALIAS_PREVIOUS_CHAMPION!r} alias "
                    "(it is set when promote replaces a champion)"
                )
            reason = f"rollback: champion v{current.version} -> v{previous.version}"
            lease.check_held()
            _move_champion(run.info.run_id, winner=previous, current=current, reason=reason)
        mlflow.set_tags({"decision": "rollback", "decision.reason": reason, "mlflow.note.content": reason})
    log.info("%s", reason)
    return PromoteResult(run.info.run_id, str(previous.version), str(current.version), True, reason, ())


def _decide(
    run_id: str,
    lease: Lease,
    versions: Mapping[str, ModelVersion],
    eval_data: PandasDataset,
    min_r2: float,
    max_r2_drop: float,
    quantized_tolerance: float,
) -> PromoteResult:
    current = _judged_against(lease)
    thresholds = {"minimum": min_r2}
    if current is not None:
        champion_metrics, _ = _evaluate(ALIAS_CHAMPION, current, eval_data, thresholds={})
        thresholds[f"champion v{current.version} minus {max_r2_drop}"] = champion_metrics["test_r2"] - max_r2_drop
    gated = []
    for label, version in versions.items():
        metrics, failures = _evaluate(label, version, eval_data, thresholds)
        mlflow.set_tag(f"gate.{label}", "passed" if not failures else "; ".join(failures))
        gated.append(Candidate(label, version, metrics, tuple(failures)))
    winner, reason = choose(gated, quantized_tolerance)
    current_number = str(current.version) if current is not None else None
    if winner is None:
        return PromoteResult(run_id, current_number, None, False, reason, tuple(gated), rejected=True)
    if current_number == str(winner.version.version):
        previous = registry.version_by_alias(ALIAS_PREVIOUS_CHAMPION)
        return PromoteResult(
            run_id,
            current_number,
            previous and str(previous.version),
            False,
            f"{reason}; it already is the champion",
            tuple(gated),
        )
    lease.check_held()
    _move_champion(run_id, winner=winner.version, current=current, reason=reason)
    return PromoteResult(run_id, str(winner.version.version), current_number, True, reason, tuple(gated))


def _evaluate(
    label: str, version: ModelVersion, eval_data: PandasDataset, thresholds: Mapping[str, float]
) -> tuple[dict[str, float], list[str]]:
    """Evaluates one version in a nested run, and gates its test R² against each threshold; its
    metrics are also logged to the promote run, prefixed with `label`.

    Returns:
        The metrics under this project's keys, and one message per threshold it failed.
    """
    with (
        mlflow.start_run(run_name=f"evaluate-{label}-v{version.version}", nested=True) as run,
        tracking.killed_on_interrupt(),
    ):
        mlflow.set_tags({"step": "evaluate", "model_version": str(version.version), "candidate": label})
        result = mlflow.models.evaluate(
            model=registry.version_uri(version),
            data=eval_data,
            model_type="regressor",
            evaluators=["default"],
            evaluator_config={"default": {"log_model_explainability": False}},
        )
        metrics = {ours: float(result.metrics[theirs]) for theirs, ours in _EVALUATE_KEYS.items()}
        mlflow.log_metrics(metrics)
        failures = []
        for name, threshold in thresholds.items():
            try:
                mlflow.validate_evaluation_results(
                    {"r2_score": MetricThreshold(threshold=threshold, greater_is_better=True)}, result
                )
            except ModelValidationFailedException:
                failures.append(f"test R² {metrics['test_r2']:.6f} < {threshold:.6f} ({name})")
    mlflow.log_metrics({f"{label}_{k}": v for k, v in metrics.items()})
    log.info("%s v%s: test R² %.6f (run %s)", label, version.version, metrics["test_r2"], run.info.run_id)
    return metrics, failures


def _move_champion(run_id: str, winner: ModelVersion, current: ModelVersion | None, reason: str) -> None:
    client = MlflowClient()
    registry.set_alias(ALIAS_CHAMPION, winner.version)
    if current is not None:
        registry.set_alias(ALIAS_PREVIOUS_CHAMPION, current.version)
    for key, value in {"promotion.reason": reason, "promotion.run_id": run_id}.items():
        client.set_model_version_tag(MODEL_NAME, winner.version, key, value)


def _common_held_out_set(versions: Mapping[str, ModelVersion]) -> tuple[Split, str]:
    """The held-out rows all candidates were evaluated on when they were made, and their source.

    Raises:
        PipelineError: The candidates were made on different splits or data.
    """
    records = {label: splits.load_split_record(version.run_id) for label, version in versions.items()}
    (first_label, first), *others = records.items()
    for label, record in others:
        if (record["digest"], record["test_index"]) != (first["digest"], first["test_index"]):
            raise PipelineError(
                f"candidates {first_label!r} and {label!r} were evaluated on different held-out rows; "
                "promote compares models made from one training run"
            )
    # The rows are the same for all, so the data is loaded once.
    return splits.split_from_record(first, versions[first_label].run_id), first["source"]


def _judged_against(lease: Lease) -> ModelVersion | None:
    """The current champion, read under the lease, and recorded on the run with the lease's holder.

    Tags `promotion.judged_against` (`v<N>`, or `none`) and `promotion.lease_holder`: for
    promotions that ran at once, the records show that each judged against the one before it.
    """
    current = registry.version_by_alias(ALIAS_CHAMPION)
    mlflow.set_tags(
        {
            "promotion.judged_against": f"v{current.version}" if current is not None else "none",
            "promotion.lease_holder": lease.holder,
        }
    )
    return current


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline promote`."""
    return cli.build_parser("promote", __doc__.splitlines()[0], PARAMS)


def report(result: PromoteResult) -> None:
    """Prints the decision for people reading a terminal or a CI log."""
    for candidate in result.candidates:
        print(f"  {candidate.describe()}")
    verb = "is now" if result.changed else "stays"
    print(f"champion {verb} {MODEL_NAME} v{result.champion}: {result.reason}")


def main(argv: list[str] | None = None) -> int:
    """Runs the step from the command line; returns the exit code."""
    args = vars(build_parser().parse_args(argv))
    if args.pop("rollback"):
        return cli.run(lambda: _rollback_from_cli(**args), report=report)
    return cli.run(lambda: promote(**args), report=report)


def _rollback_from_cli(
    candidates: Sequence[str], min_r2: float, max_r2_drop: float, quantized_tolerance: float, experiment_name: str
) -> PromoteResult:
    """`--rollback` ignores the candidates and the gate, but a gate flag out of range is still refused."""
    check_gate(min_r2, max_r2_drop, quantized_tolerance)
    return rollback(experiment_name)
