"""How fast each entry point's command line answers: the wall time of ``--help``, ``--cfg job``,
``--info`` and a refused override for ``src.train``, ``src.eval``, ``src.predict`` and
``src.export``, each a fresh interpreter as a user starts it (torch and Lightning are imported
only once a task runs). The goal is at most ``GOAL_S`` for each.

``python -m bench.cli_speed`` prints the table; ``make bench`` adds it to bench/results.md
(section 7).
"""

import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("src.train", "src.eval", "src.predict", "src.export")
ASKS = {"--help": ["--help"], "--cfg job": ["--cfg", "job"], "--info": ["--info"],
        "a refused override": ["no_such_key=1"]}  # fmt: skip
GOAL_S = 1.5


def wall_seconds(module: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, check=False
    )
    return time.perf_counter() - start


def command_line_times(reps: int = 3) -> list[str]:
    """The table of section 7: the median wall time of ``reps`` starts of each command."""
    lines = [
        f"Wall time of `python -m MODULE ARGS`, a fresh interpreter each, median of {reps} starts "
        f"(goal: at most {GOAL_S} s).",
        "",
        "| module | "
        + " | ".join(f"`{ask}`" if ask.startswith("-") else ask for ask in ASKS)
        + " |",
        "|---|" + "---:|" * len(ASKS),
    ]
    slowest = 0.0
    for module in MODULES:
        cells = []
        for args in ASKS.values():
            seconds = statistics.median(wall_seconds(module, args) for _ in range(reps))
            slowest = max(slowest, seconds)
            cells.append(f"{seconds:.2f} s")
        lines.append(f"| `{module}` | " + " | ".join(cells) + " |")
    verdict = "met" if slowest <= GOAL_S else "not met"
    lines += [
        "",
        f"Goal, every command at most {GOAL_S} s: **{verdict}** (slowest {slowest:.2f} s).",
    ]
    return lines


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("\n".join(command_line_times()))
