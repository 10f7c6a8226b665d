import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_writes_its_tables(tmp_path):
    """``make bench`` at a tiny size, into a temporary folder (never over bench/results.md)."""
    out = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.benchmark", f"--out={out}", f"--work-dir={tmp_path}",
         "--images=28", "--reps=1", "--steps=4", "--preset-steps=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in ("Machine:", "## 1. Input path", "## 2. Framework overhead", "## 4. Model"):
        assert heading in text
    assert "seed article" in text and "`data.backend=cache`" in text and "Cache build" in text
    assert "`data.backend=pil`" in text and "Goals, × article" in text and "litdata" not in text
    assert "Lightning / plain, steady state" in text and "`alexnet_owt`" in text
    assert "v2.ColorJitter`, per image" in text
