"""The original scripts' figures, reproduced on the real data: the float model's R² and first predictions."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import CHALLENGER_URI
from pipeline.predict import format_report, predict

# First held-out rows as the original scripts printed them (float model, default split).
SEED_SAMPLE = [
    "True: 0.48 | Predicted: 0.72 | Diff: 0.24",
    "True: 0.46 | Predicted: 1.76 | Diff: 1.31",
    "True: 5.00 | Predicted: 2.71 | Diff: 2.29",
]


def test_float_model_reproduces_the_seed_figures(scoring: str, tmp_path: Path) -> None:
    result = predict(CHALLENGER_URI, output_path=tmp_path / "out.csv")
    assert round(result.metrics["test_r2"], 4) == 0.5758
    assert round(result.metrics["test_mse"], 4) == 0.5559
    report = format_report(result).splitlines()
    assert "R² Score: 0.5758" in report
    assert "Mean Squared Error: 0.5559" in report
    start = report.index("Sample Predictions (first 10):")
    assert report[start + 1 : start + 4] == SEED_SAMPLE
    assert len([line for line in report if line.startswith("True: ")]) == 10
    assert f"Model: {CHALLENGER_URI} (version {result.version})" in report
