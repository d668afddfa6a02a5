"""The promotion policy, pure: which candidate wins, within which tolerance."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from pipeline.config import MODEL_NAME
from pipeline.promote import Candidate, choose


def candidate(label: str, r2: float, quantized: bool = False, failures: tuple[str, ...] = ()) -> Candidate:
    tags = [ModelVersionTag("quantization", "int8")] if quantized else []
    version = ModelVersion(MODEL_NAME, 2 if quantized else 1, 0, tags=tags)
    return Candidate(label, version, {"test_r2": r2}, failures)


def test_quantized_wins_within_tolerance() -> None:
    winner, reason = choose([candidate("float", 0.5758), candidate("int8", 0.5752, quantized=True)], 0.001)
    assert winner.label == "int8"
    assert reason == (
        "int8 v2 (int8) trails float v1 by 0.000600 test R², within the tolerance of 0.001, "
        "and is smaller and cheaper to serve"
    )


def test_quantized_that_scores_higher_is_said_to() -> None:
    winner, reason = choose([candidate("float", 0.575788), candidate("int8", 0.576001, quantized=True)], 0.001)
    assert winner.label == "int8"
    # One sentence, one sign: the gap is said once, as the quantized model's advantage.
    assert reason == "int8 v2 (int8) scores 0.000213 higher test R² than float v1, and is smaller and cheaper to serve"


def test_float_wins_when_quantized_trails_beyond_tolerance() -> None:
    winner, reason = choose([candidate("float", 0.5758), candidate("int4", 0.5700, quantized=True)], 0.001)
    assert winner.label == "float"
    assert "trails it by 0.005800 > 0.001" in reason


def test_a_better_quantized_model_wins_outright() -> None:
    winner, _ = choose([candidate("float", 0.50, failures=("low",)), candidate("int8", 0.58, quantized=True)], 0.001)
    assert winner.label == "int8"


def test_nothing_passes() -> None:
    winner, reason = choose([candidate("float", 0.1, failures=("test R² 0.1 < 0.57 (minimum)",))], 0.001)
    assert winner is None
    assert reason.startswith("no candidate passed the gate") and "0.57 (minimum)" in reason


def test_ties_go_to_the_first_candidate() -> None:
    winner, _ = choose([candidate("a", 0.5), candidate("b", 0.5)], 0.001)
    assert winner.label == "a"
