"""Code tests of the README and docs/: short, every relative link resolves, CI can read the test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline import cli, examples
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def links(page: Path) -> list[str]:
    """Every `](target)` outside code blocks that is not a web or mail address."""
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_slug_follows_github() -> None:
    assert slug("`promote` and the whole pipeline (`main`)") == "promote-and-the-whole-pipeline-main"
    assert slug("Caveat: int4 depends on the split") == "caveat-int4-depends-on-the-split"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# Here it is\n")
    page = tmp_path / "page.md"
    page.write_text("[a](there.md#here-it-is) [b](missing.md) [c](there.md#elsewhere) [d](https://x.org/y)\n")
    assert broken_links(page) == ["missing.md: no such file", "there.md#elsewhere: no heading with that anchor"]


def test_readme_links_every_docs_page() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    assert {p.resolve() for p in PAGES[1:]} <= linked


def test_readme_is_at_most_250_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_ci_reads_the_test_command_from_the_readme() -> None:
    """.ci/run takes the second line after the marker (awk: getline; getline; print)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash"
    assert (
        lines[marker + 2]
        == 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev,server,spark]" && python -m pytest'
    )


def test_no_page_dates_its_figures() -> None:
    """Figures carry the command that reproduces them, not when or on which machine they ran."""
    dated = re.compile(r"\b20\d\d-\d\d-\d\d\b|\b\d\d:\d\d(–\d\d:\d\d)? UTC\b|\btoday\b|this machine", re.IGNORECASE)
    found = {p.name: dated.findall(p.read_text()) for p in PAGES}
    assert {name: hits for name, hits in found.items() if hits} == {}


def readme_parameters() -> dict[str, dict[str, str | None]]:
    """The README's parameter tables, per step section: name -> default as written (None: required)."""
    tables: dict[str, dict[str, str | None]] = {}
    step = None
    for line in (ROOT / "README.md").read_text().splitlines():
        if heading := re.match(r"### `(\w+)`", line):
            step = heading.group(1)
        elif line.startswith("## "):
            step = None
        elif step and (row := re.match(r"\| `(\w+)` \| (`[^`]*`|\"\"|[^ |]+)", line)):
            default = row.group(2).strip('`"')
            tables.setdefault(step, {})[row.group(1)] = None if default == "(required)" else default
    return tables


def test_readme_parameters_match_the_mlproject() -> None:
    """The README is one of the places a parameter and its default are written: it must agree."""
    import yaml

    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    # A parameter every step takes (--verbose) is written once in the README, not in each table.
    common = {param.name for param in cli.COMMON_PARAMS}
    mlproject = {
        step: {
            name: None if "default" not in spec else str(spec["default"])
            for name, spec in ep["parameters"].items()
            if name not in common
        }
        for step, ep in entry_points.items()
    }
    readme = readme_parameters()
    assert set(readme) == {"train", "quantize", "promote", "predict", "monitor"}
    assert readme == {step: mlproject[step] for step in readme}


# Flags whose value is a file a README command reads, and the one that names a file it writes.
INPUT_FLAGS = ("--data", "--input", "--batch", "--reference")
OUTPUT_FLAG = "--output"


def readme_commands(text: str) -> list[list[str]]:
    """Every command of the page's bash blocks, in order, as words (continued lines joined, comments dropped)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def unmade_inputs(text: str, examples_made: list[str]) -> list[str]:
    """The input files a page's commands read that neither exist in the repository nor are made by
    an earlier command of the page (`python -m pipeline.examples`, or another command's --output)."""
    made: set[str] = set()
    missing = []
    for words in readme_commands(text):
        if words[:3] == ["python", "-m", "pipeline.examples"]:
            made.update(f"examples/{name}" for name in examples_made)
        inputs = [words[i + 1] for i, word in enumerate(words[:-1]) if word in INPUT_FLAGS]
        inputs += [word[1:] for word in words if word.startswith("@")]
        missing += [path for path in inputs if path not in made and not (ROOT / path).is_file()]
        made.update(words[i + 1] for i, word in enumerate(words[:-1]) if word == OUTPUT_FLAG)
    return missing


def test_every_readme_input_exists_or_is_made_first(california) -> None:
    names = [example.name for example in examples.build(california)]
    text = (ROOT / "README.md").read_text()
    assert unmade_inputs(text, names) == []
    # The commands that read the examples are there to be checked.
    used = {word for words in readme_commands(text) for word in words}
    assert {"examples/my_houses.csv", "examples/new_houses.csv", "examples/shift.csv"} <= used


def test_an_input_used_before_it_is_made_is_found() -> None:
    page = (
        "```bash\npython -m pipeline train --data examples/my_houses.csv\n```\n"
        "```bash\npython -m pipeline.examples\n"
        "python -m pipeline predict --input examples/my_houses.csv --output scored.csv\n"
        "curl -s http://127.0.0.1:5001/invocations \\\n  --data-binary @scored.csv\n"
        "python -m pipeline monitor --batch missing.csv   # a comment --batch nothing.csv\n```\n"
    )
    assert unmade_inputs(page, ["my_houses.csv"]) == ["examples/my_houses.csv", "missing.csv"]
