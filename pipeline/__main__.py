"""`python -m pipeline <step> [flags]`: run one pipeline step (flags: `<step> --help`)."""

from __future__ import annotations

import importlib
import os
import signal
import sys

from pipeline.mlflow_compat import import_skops_first

STEPS = ("train", "quantize", "promote", "predict", "monitor", "main")
# Steps that load or log a scikit-learn model every time. predict needs scikit-learn only for the
# float model (its loader imports skops then); the quantized champion is scored without either.
SKLEARN_STEPS = ("train", "quantize", "promote", "monitor", "main")


def main(argv: list[str] | None = None) -> int:
    """Dispatches to `pipeline.<step>.main`; returns its exit code.

    `argv` None: run as the program (`python -m pipeline`, `housing-mlops`); a command that
    calls it in-process (the container) passes its arguments and keeps its own signal handling.
    """
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STEPS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown step {argv[0]!r}", file=sys.stderr)
        print(f"usage: python -m pipeline {{{','.join(STEPS)}}} [flags]  (see <step> --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # SIGTERM or Ctrl-C while the libraries load: no run or file is open yet (the step's own
    # handling starts in `cli.run`), so one line and the shell's code for the signal, at once.
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)} if as_program else {}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, _exit_at_once)
    try:
        if argv[0] in SKLEARN_STEPS:
            import_skops_first()
        # Each step imports only what it needs, so `--help` and small steps stay quick.
        module = importlib.import_module(f"pipeline.{argv[0]}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return module.main(argv[1:])


def _exit_at_once(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"error: stopped by {name} before the step started; nothing was logged\n".encode())
    os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
