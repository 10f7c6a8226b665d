"""``make bench`` at a tiny size: every table it writes holds a measurement for each thing it
compares, never over the committed bench/results.md."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """The rows of each section's first table, by section title, as {column: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    for section in markdown.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        if len(lines) < 3:
            continue
        split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
        found[title] = [dict(zip(split[0], row, strict=True)) for row in split[2:]]
    return found


def number(cell: str) -> float:
    """The first number of a cell ('1,369', '1.24 (1.06-1.33)', '34%')."""
    return float(re.search(r"\d[\d,]*(\.\d+)?", cell).group().replace(",", ""))


@pytest.mark.slow
def test_bench_measures_every_path_loop_and_preset(tmp_path):
    out = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.benchmark", f"--out={out}", f"--work-dir={tmp_path}",
         "--images=28", "--reps=1", "--steps=4", "--preset-steps=1",
         f"--results-dir={tmp_path / 'results'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # the input path's table, with where it was measured, for docs/speed.md
    record = json.loads((tmp_path / "results" / "bench_input_path.json").read_text())
    assert "--images=28" in record["provenance"]["command"] and "| pipeline" in record["table"]
    found = tables(out.read_text())
    assert len(found) == 6, list(found)
    paths = found["1. Input path"]
    names = [row["pipeline"] for row in paths]
    assert names[0].startswith("seed article: ImageFolder")
    assert all(any(f"`data.backend={b}`" in n for n in names) for b in ("pil", "cache"))
    assert all(number(row["images/s (median)"]) > 0 for row in paths)
    steady = "steady images/s (after warm-up)"
    loops = {row["loop"]: number(row[steady]) for row in found["2. Framework overhead"]}
    assert set(loops) == {"plain PyTorch loop", "Lightning module"} and min(loops.values()) > 0
    presets = {row["preset"].strip("`") for row in found["4. Model presets"]}
    assert {"alexnet_half", "alexnet_owt", "alexnet", "cnn4"} <= presets
    for title in ("5. Predict vs eval", "6. Training operations", "7. Command line"):
        measured = [any(re.search(r"\d", cell) for cell in row.values()) for row in found[title]]
        assert measured and all(measured), title
