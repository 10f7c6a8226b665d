"""Files in and out, safely: atomic writes, and checkpoint loading that cannot run code."""

import io
import os
import pickle
from pathlib import Path
from typing import Any

from src.utils import MissingFileError, UserError


class UnsafeCheckpointError(UserError):
    """A checkpoint whose pickle asks for more than tensors and plain containers."""


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    kill mid-write leaves the previous file (or none), never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure as an image file, written atomically like everything else."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
    return atomic_write(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a
    checkpoint from someone else cannot execute code when it is opened."""
    import torch  # here, not at the top: the entry points import this module before torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"Checkpoint '{path}' not found. Training writes them to "
            "logs/train/runs/<time>/checkpoints/ (best: epoch_NNN.ckpt, latest: last.ckpt)."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the offending global, e.g. "Unsupported global: GLOBAL posix.system"
        reason = str(err).split("\n\n")[1] if "\n\n" in str(err) else str(err)
        raise UnsafeCheckpointError(
            f"Refusing to load '{path}': it is not a plain checkpoint of tensors and containers "
            f"({reason.strip()}). Loading it could run code from the file. Use a checkpoint "
            "written by src.train, or one whose source you trust, converted to a state dict."
        ) from None
    except (RuntimeError, EOFError) as err:
        raise UserError(
            f"'{path}' is not a readable checkpoint ({err}): it may be truncated or another kind "
            "of file. Point ckpt_path at a .ckpt file that src.train wrote."
        ) from None
