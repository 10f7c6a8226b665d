"""Results files: every measured table of the docs, with where it came from.

``docs/results/NAME.json`` holds a table (markdown), the measurement's provenance (command,
commit, date, machine, versions, data; ``src/utils/provenance.py``) and, for a table measured on
older code, one line on what changed since. The command that measured it writes it; a page shows
it between two markers, rendered with its commit and date::

    <!-- results: NAME -->
    ...rendered here by `make docs`...
    <!-- end results -->

``python -m src.experiments.results`` (``make docs``) renders every marked table of the README,
``docs/`` and ``bench/``; ``--check`` only says which differ (a test runs it).
``python -m src.experiments.results publish SWEEP_DIR NAME`` publishes a sweep's report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from src.utils.io import atomic_write
from src.utils.provenance import ROOT

log = logging.getLogger(__name__)

RESULTS_DIR = ROOT / "docs" / "results"
PAGES = ("README.md", "docs/*.md", "bench/*.md")
BLOCK = re.compile(
    r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end results -->)", re.S
)


def write_results(
    name: str,
    table: str,
    where: dict[str, Any],
    summary: dict[str, Any] | None = None,
    directory: Path | None = None,
) -> Path:
    """``directory/NAME.json`` (the table, ``where`` it was measured, from ``provenance()`` when
    the measurement began, and the raw ``summary``) and ``NAME.md`` (the table as a page renders
    it); an earlier file of that name is replaced, and the commit it was measured on logged."""
    path = (directory or RESULTS_DIR) / f"{name}.json"
    if path.is_file():
        earlier = json.loads(path.read_text())["provenance"]
        log.info("replacing %s, measured at %s on %s", path, earlier["commit"], earlier["date"])
    record = {
        "name": name,
        "table": table.strip("\n"),
        "provenance": where,
        "stale": None,
        "summary": summary,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=2) + "\n")
    atomic_write(path.with_suffix(".md"), f"# {name}\n\n{render(record, path.parent)}\n")
    return path


def read_results(name: str, directory: Path | None = None) -> dict[str, Any]:
    path = (directory or RESULTS_DIR) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No results file {path}: run the command that measures it, or remove the marker "
            f"<!-- results: {name} --> from the page"
        )
    return json.loads(path.read_text())


def measured_on(record: dict[str, Any]) -> str:
    """'commit abc1234, 2026-12-03, AMD EPYC, 2 cores, 23.5 GiB, no GPU'."""
    where = record["provenance"]
    commit = f"commit {where['commit'] or 'unknown'}" + (" (uncommitted changes)" if where.get(
        "dirty") else "")  # fmt: skip
    machine = where.get("machine") or {}
    parts = [machine.get("cpu"), machine.get("cores") and f"{machine['cores']} cores"]
    parts += [machine.get("memory_gib") and f"{machine['memory_gib']} GiB"]
    parts += [f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU"]
    return ", ".join([commit, where["date"][:10], *[p for p in parts if p]])


def render(record: dict[str, Any], page_dir: Path) -> str:
    """The table, then where it was measured, linking its results file relative to the page."""
    link = os.path.relpath(RESULTS_DIR / f"{record['name']}.json", page_dir)
    lines = [
        record["table"],
        "",
        f"<sub>Measured at {measured_on(record)}: `{record['provenance']['command']}` "
        f"([{record['name']}.json]({link})).</sub>",
    ]
    if record.get("stale"):
        lines += ["", f"> Measured on older code: {record['stale']}"]
    return "\n".join(lines) + "\n"


def render_page(page: Path, directory: Path | None = None) -> str:
    """The page's text with every marked table rendered from its results file."""

    def block(match: re.Match) -> str:
        record = read_results(match["name"], directory)
        return f"{match[1]}{render(record, page.parent)}{match[4]}"

    return BLOCK.sub(block, page.read_text())


def pages(root: Path = ROOT) -> list[Path]:
    return sorted(p for pattern in PAGES for p in root.glob(pattern))


def render_pages(check: bool = False) -> list[Path]:
    """Every page whose marked tables differ from their files: rewritten, or only listed with
    ``check``."""
    differ = []
    for page in pages():
        text = render_page(page)
        if text != page.read_text():
            differ.append(page)
            if not check:
                atomic_write(page, text)
    return differ


def publish(sweep_dir: str | Path, name: str) -> Path:
    """A sweep's report (``results.json``, which ``SweepReport`` wrote with the sweep's command
    and provenance) as ``docs/results/NAME.json``."""
    summary_path = Path(sweep_dir) / "results.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"No {summary_path}: a sweep's report is written when its multirun ends, or by "
            f"python -m src.experiments.report {sweep_dir}"
        )
    from src.experiments.report import table

    summary = json.loads(summary_path.read_text())
    if summary.get("provenance") is None:
        raise ValueError(
            f"{summary_path} records no provenance (a report older than results files): table "
            f"the sweep again with python -m src.experiments.report {sweep_dir}"
        )
    text = table(summary)
    if summary.get("wall_seconds"):
        jobs = len({job for row in summary["variants"] for job in row["jobs"]})
        text += (
            f"\n\nWall time of the sweep: {summary['wall_seconds'] / 60:.1f} min for {jobs} jobs."
        )
    return write_results(name, text, summary["provenance"], summary)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Render the docs' tables from results files.")
    parser.add_argument("--check", action="store_true", help="list the pages that differ")
    sub = parser.add_subparsers(dest="action")
    publishing = sub.add_parser("publish", help="a sweep's report as docs/results/NAME.json")
    publishing.add_argument("sweep_dir")
    publishing.add_argument("name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.action == "publish":
        log.info("written %s", publish(args.sweep_dir, args.name))
    differ = render_pages(check=args.check)
    for page in differ:
        log.info("%s %s", "differs from its results files:" if args.check else "rendered", page)
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
