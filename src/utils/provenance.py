"""Where a measurement came from: the command, the code (commit, and whether the tree differed
from it), the date, the machine, the library versions and the data, recorded beside every
results file so a table can be believed, or rerun and compared."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "torchdata")


def git(*args: str) -> str | None:
    """A git command's output in this checkout, or None outside one (an installed copy)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """CPU model, the cores this process may use, memory and GPU, as the OS and torch say."""
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
        if line.startswith("model name")
    ]
    total = [
        int(line.split()[1]) for line in (meminfo.read_text().splitlines() if meminfo.is_file()
                                          else []) if line.startswith("MemTotal:")
    ]  # fmt: skip
    torch = sys.modules.get("torch")  # a GPU is asked of torch only where the command loaded it
    gpu = torch.cuda.get_device_name() if torch and torch.cuda.is_available() else None
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": round(total[0] / 2**20, 1) if total else None,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str | None]:
    """Python's version and the installed versions of the libraries a result depends on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def tree_fingerprint(root: str | Path) -> str | None:
    """sha256 of every file's relative path and size under ``root``: the same images in the same
    splits give the same value, a file added, removed, moved or rewritten another."""
    root = Path(root)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()} {path.stat().st_size}\n".encode())
    return digest.hexdigest()


def code_changes() -> str | None:
    """The checkout's uncommitted changes to tracked files, the pages and results files a
    measurement writes left out (docs/, markdown); None outside a checkout."""
    return git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!*.md")


def provenance(command: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a results file records of its measurement (``data``: what identifies the data, e.g.
    its cache format and ``tree_fingerprint``)."""
    status = code_changes()
    return {
        "command": command,
        "commit": git("rev-parse", "--short=7", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "constraints_sha256": file_sha256(ROOT / "constraints.txt"),
        "data": data,
    }


def this_command() -> str:
    """The command line this process was started with, as a user would type it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = f"python -m {spec.name}" if spec and spec.name else f"python {sys.argv[0]}"
    return " ".join([program.removesuffix(".__main__"), *sys.argv[1:]])
