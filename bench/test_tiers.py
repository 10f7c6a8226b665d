"""The test tiers timed as a new user meets them: a fresh clone of this checkout's HEAD, then
``make install``, ``make test``, ``make test-all``, ``make coverage`` and ``make lint``, each
timed; written to docs/results/test_tiers.json, which the README and docs/testing.md show.

    python -m bench.test_tiers            # about 20 minutes on the project's 2-core CPU
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from src.experiments.results import write_results
from src.utils.provenance import ROOT, provenance, this_command

log = logging.getLogger(__name__)

STEPS = {
    "make install": "a fresh venv with the tested versions (constraints.txt)",
    "make test": "the fast tier: every test that starts no process",
    "make test-all": "every test; what CI runs, then make lint",
    "make coverage": "the fast tier, with the line coverage of src/",
    "make lint": "ruff's format and lint checks",
}


def timed(command: str, cwd: Path) -> tuple[float, str]:
    """Wall seconds of a command in ``cwd`` and its output; a failure stops the measurement."""
    start = time.perf_counter()
    done = subprocess.run(command.split(), cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{command} failed in {cwd} (exit {done.returncode}):\n{output[-3000:]}")
    return seconds, output


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def outcome(output: str) -> str:
    """pytest's count ('390 passed, 12 skipped') and coverage's total, where the output has them."""
    counts = re.findall(r"=+ (\d+ passed[^=]*?) in [\d.]+s", output)
    total = re.findall(r"^TOTAL\s.*?(\d+)%$", output, re.M)
    parts = [re.sub(r", \d+ warnings?", "", counts[-1])] if counts else []
    return "; ".join(parts + ([f"{total[-1]} % of src/'s lines"] if total else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    where = provenance(this_command())
    if where["dirty"]:
        log.warning("the working tree differs from HEAD: the clone measures HEAD, as committed")
    where["dirty"] = False  # the clone is HEAD exactly
    clone = Path(tempfile.mkdtemp(prefix="test-tiers-")) / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    rows = ["| command | what runs | took here | result |", "|---|---|---:|---|"]
    for command, what in STEPS.items():
        log.info("%s ...", command)
        seconds, output = timed(command, clone)
        log.info("%s: %s %s", command, minutes(seconds), outcome(output))
        rows.append(f"| `{command}` | {what} | {minutes(seconds)} | {outcome(output)} |")
    path = write_results("test_tiers", "\n".join(rows), where)
    log.info("written to %s", path)
    if not args.keep:
        shutil.rmtree(clone.parent)


if __name__ == "__main__":
    main()
