"""Time and peak memory to answer CSVs with one 50 MB line, as train/monitor (`data.load`) and predict read them.

    python benchmarks/bench_long_lines.py [--mb 50]

Each case is read in a fresh process (`/usr/bin/time` gives its wall time and peak RSS); the
first, a small good file, is the interpreter's own start-up and memory. Files are written once
to benchmarks/out/long_lines/ (git-ignored).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import FEATURES, TARGET  # noqa: E402

HEADER = ",".join((*FEATURES, TARGET))
ROW = ",".join(["1.5"] * 9)
READ = """
import sys
from pipeline import data
try:
    if sys.argv[2] == "predict":
        list(data.read_csv_chunks(sys.argv[1], target=data.TARGET_OPTIONAL, chunksize=50_000))
    else:
        data.load(sys.argv[1])
    print("read")
except Exception as err:
    print(f"{type(err).__name__} ({len(str(err)):,} characters): {str(err)[:100]}")
"""


def cases(size: int) -> dict[str, str]:
    return {
        "small good file": HEADER + "\n" + (ROW + "\n") * 100,
        "data row of many fields": HEADER + "\n" + ROW + "\n" + ",".join(["1"] * (size // 2)) + "\n" + ROW + "\n",
        "data row of one cell": HEADER + "\n" + ROW + "\n" + "1" * size + "," + ROW[4:] + "\n" + ROW + "\n",
        "header of many names": ",".join(["MedInc"] * (size // 7)) + "\n" + ROW + "\n",
        "header of one name": "x" * size + "," + HEADER + "\n" + ROW + "\n",
        "unclosed quote": HEADER + "\n" + ROW + "\n" + '"' + "1" * size + "\n",
        "no line end at all": "1" * size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50, help="length of the long line in MB (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds before a read is called a hang")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "out" / "long_lines"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in cases(args.mb * 1_000_000).items():
        path = out / f"{name.replace(' ', '-')}-{args.mb}mb.csv"
        if not path.exists():
            path.write_text(text)
        for step in ("load", "predict"):
            command = ["/usr/bin/time", "-f", "%e s, peak RSS %M KB", "timeout", str(args.timeout), sys.executable]
            result = subprocess.run([*command, "-c", READ, str(path), step], capture_output=True, text=True)
            answer = result.stdout.strip() or f"no answer within {args.timeout} s"
            print(f"{name:<24} {step:<8} {result.stderr.strip().splitlines()[-1]:<28} {answer}", flush=True)


if __name__ == "__main__":
    main()
