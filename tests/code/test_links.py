"""Code tests of the printed UI and serve hints: no password is printed; `mlflow run`'s default
store gets the plain serve hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import links


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql+psycopg://mlflow:s3cret@db:5432/mlflow", "postgresql+psycopg://mlflow:***@db:5432/mlflow"),
        ("https://ci:tok@mlflow.internal", "https://ci:***@mlflow.internal"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ],
)
def test_a_password_is_never_printed(uri: str, shown: str) -> None:
    assert links.without_password(uri) == shown
    assert "s3cret" not in links.ui_command(uri)


def test_mlflow_runs_default_store_gets_the_plain_serve_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plain = "mlflow models serve -m models:/m@champion --env-manager local -h 127.0.0.1 -p 5001"
    # `mlflow run` names the default store ./mlflow.db in MLFLOW_TRACKING_URI for its entry point.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert links.serve_hint(f"sqlite:///{tmp_path / 'mlflow.db'}", "models:/m@champion") == plain
    other = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    assert (
        links.serve_hint(f"sqlite:///{other}", "models:/m@champion") == f"MLFLOW_TRACKING_URI=sqlite:///{other} {plain}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:s3cret@host:5000")
    assert "s3cret" not in links.serve_hint("http://u:s3cret@host:5000", "models:/m@champion")
