"""The loader every data module uses: torchdata's StatefulDataLoader, whose position Lightning
saves in checkpoints, with a training order that a run resumed mid-epoch draws again exactly."""

import os
import signal
import threading
from collections.abc import Iterator, Sized
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from src.data.cache import CachedImages, as_batch


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng((seed, epoch)).permutation(size).tolist()


class EpochShuffle(DistributedSampler):
    """A new order every epoch, drawn from (seed, epoch) alone, and this process's share of it
    under DDP (every ``num_replicas``-th index from ``rank``, padded with the first ones so that
    every process gets as many). Lightning calls ``set_epoch``, and leaves a DistributedSampler
    as it is.

    Not a sampler drawing from a running generator: StatefulDataLoader makes a spare iterator
    of it with workers, and again when it restores a position, so the order would depend on the
    number of workers and on whether the run was resumed. The position within the epoch is the
    iterator's state, which StatefulDataLoader saves and restores.

    Kept rather than torchdata's ``StatefulDistributedSampler``, which also resumes mid-epoch:
    that one permutes with torch's generator, this one with numpy's (``epoch_order``), and
    this order is the one every published number was trained with.
    """

    def __init__(
        self, dataset: Sized, seed: int, epoch: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch

    def __iter__(self) -> "EpochOrder":
        return EpochOrder(self, self.epoch)


class EpochOrder(Iterator[int]):
    """One epoch of an ``EpochShuffle``, which can say where it is and go back there."""

    def __init__(self, sampler: EpochShuffle, epoch: int) -> None:
        self.sampler = sampler
        self.start(epoch, 0)

    def start(self, epoch: int, position: int) -> None:
        sampler = self.sampler
        order = epoch_order(len(sampler.dataset), sampler.seed, epoch)
        order += order[: sampler.total_size - len(order)]
        self.epoch, self.position = epoch, position
        self.order = order[sampler.rank : sampler.total_size : sampler.num_replicas]

    def __next__(self) -> int:
        if self.position == len(self.order):
            raise StopIteration
        self.position += 1
        return self.order[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Restored before Lightning sets the epoch: the saved epoch decides the order. A
        # checkpoint of an epoch's end holds that epoch, done: the run goes on with the next.
        if state["position"] >= len(self.order):
            self.start(state["epoch"] + 1, 0)
        else:
            self.start(state["epoch"], state["position"])


# How long a loader worker goes on serving after a stop signal: enough for the main process to
# finish its step and save. Past it, the worker ends itself, so a worker that is being ended,
# not stopped (by ``terminate()`` at exit), never blocks the main process for long.
STOP_GRACE_S = 30.0


def _stop_later(signum: int, frame: FrameType | None) -> None:
    timer = threading.Timer(STOP_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def outlive_stop_signals(worker_id: int) -> None:
    """A loader worker outlives, for a while, the signals a scheduler sends to the whole process
    group: the main process may be waiting for its batch to finish the step it then saves, and a
    worker dying on the signal would fail that step. Workers draw nothing random (crops and flips
    are the batch transform's, in the main process): they need no seeding."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, _stop_later)


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool, **kwargs: Any
) -> StatefulDataLoader:
    """Batches of uint8 squares: the cache's read whole with one slice of its memory map."""
    if isinstance(dataset, CachedImages):
        kwargs["collate_fn"] = as_batch
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        worker_init_fn=outlive_stop_signals,
        # the seeds of workers, which draw nothing random: kept off the global generator
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
