"""Every random generator of a process, as checkpoints carry it, and one stream per process under
DDP.

Saved at the end of an epoch or of the step a signal stopped, these states decide everything
random that follows (dropout, crops, flips, colour noise; the order comes from the data module's
seed and the epoch). Each process saves its own, and a resumed process takes back its own: the
CPU's generator, and its own GPU's alone (a checkpoint from a node of four GPUs resumes on one).
"""

import os
import random
from typing import Any

import numpy as np
import torch


def random_states() -> dict[str, Any]:
    """This process's generators as tensors and plain lists (loadable with
    ``weights_only=True``): the CPU's, its own GPU's (``cuda_device``), numpy's and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda_device": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(python_state), python_gauss],
    }


def set_random_states(states: dict[str, Any]) -> None:
    """The generators as ``random_states`` saved them; only the GPUs that exist here: its own
    GPU's state, or from checkpoints of format 5 and older (``cuda``, one state per GPU the
    saving process saw) the state of this process's GPU where it is among them."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        own = states.get("cuda_device")
        every = states.get("cuda") or []
        if own is None and torch.cuda.current_device() < len(every):
            own = every[torch.cuda.current_device()]
        if own is not None:
            torch.cuda.set_rng_state(own)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, python_state, python_gauss = states["python"]
    random.setstate((version, tuple(python_state), python_gauss))


def seed_of_process(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s generators: the run's for process 0 (a run on one device
    draws exactly as before), an independent one drawn from (seed, rank) for the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


def seed_process(rank: int) -> None:
    """Seeds this process's generators for its rank from the run's seed (Lightning's
    ``PL_GLOBAL_SEED``, which every process of a run inherits), so that under DDP every process
    draws its own crops, flips, noise and dropout instead of image i of every process getting
    the same. Process 0 is left as it is."""
    if rank == 0:
        return
    seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
    own = seed_of_process(seed, rank)
    torch.manual_seed(own)
    np.random.seed(own)
    random.seed(own)
