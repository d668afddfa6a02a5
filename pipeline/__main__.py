"""`python -m pipeline <step> [flags]`: run one pipeline step (flags: `<step> --help`)."""

from __future__ import annotations

import importlib
import signal
import sys

from pipeline.mlflow_compat import import_skops_first

STEPS = ("train", "quantize", "promote", "predict", "monitor", "main")


def main(argv: list[str] | None = None) -> int:
    """Dispatches to `pipeline.<step>.main`; returns its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STEPS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown step {argv[0]!r}", file=sys.stderr)
        print(f"usage: python -m pipeline {{{','.join(STEPS)}}} [flags]  (see <step> --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # SIGTERM or Ctrl-C while the libraries load: no run is open yet (the step's own handling
    # starts in `cli.run`), so one line and the shell's code for the signal.
    previous = signal.getsignal(signal.SIGTERM)
    if previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _stop)
    try:
        import_skops_first()
        # Each step imports only what it needs, so `--help` and small steps stay quick.
        module = importlib.import_module(f"pipeline.{argv[0]}")
    except KeyboardInterrupt as err:
        signum = err.args[0] if err.args else signal.SIGINT
        print(f"error: stopped by {signum.name} before the step started; nothing was logged", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
    return module.main(argv[1:])


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum))


if __name__ == "__main__":
    sys.exit(main())
