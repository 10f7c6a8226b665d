"""What a scheduler does to a run: the signals it sends before it stops a job, SLURM's requeue,
and the run folder a requeued job must find again.

Every stop signal ends training the same way: the step in progress finishes, the callback
``src.callbacks.InterruptCheckpoint`` writes ``checkpoints/last.ckpt`` of that point (mid-epoch,
loader position included), and the process exits with 128 + the signal's number. SIGTERM
(``scancel``, a time limit, preemption) only stops. SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``)
stops, then asks SLURM to requeue the job. Under submitit (``hydra/launcher=slurm``) its own
signal (SIGUSR2) stops, then submitit's handler requeues: one requeue path per launcher.
"""

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.utils import ConfigError, slurm_job
from src.utils.lightning_compat import lightning_sigterm_handler

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def restarted_job() -> bool:
    """This process is a requeued job's second (or later) start: SLURM counts them, and a
    submitit job's folder is its own (a checkpoint there is from an earlier start of it)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 or "SUBMITIT_EXECUTOR" in os.environ


def newest_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` (written every epoch and on every stop), else the newest checkpoint."""
    folder = run_dir / CHECKPOINTS
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = (
        sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    )
    return found[-1] if found else None


def checkpoint_to_resume(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint a run continues from: ``ckpt_path`` as given; with ``last``, the run
    folder's newest; without, a requeued job's own. A new run never writes over the checkpoints
    of an earlier one in its folder."""
    if ckpt_path == "last":
        found = newest_checkpoint(run_dir)
        if found is None:
            raise ConfigError(
                f"ckpt_path=last: the run folder '{run_dir}' holds no checkpoint in "
                f"{CHECKPOINTS}/. Point hydra.run.dir at the folder of the run to resume, or give "
                "ckpt_path=PATH/TO/FILE.ckpt."
            )
        return str(found)
    if ckpt_path:
        return ckpt_path
    found = newest_checkpoint(run_dir)
    if found is None:
        return None
    if restarted_job():
        log.info("This job was requeued: it continues from its own checkpoint %s", found)
        return str(found)
    raise ConfigError(
        f"The run folder '{run_dir}' already holds checkpoints of a run: resume it with "
        "ckpt_path=last, or start a new run in another folder (leave hydra.run.dir unset)."
    )


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (an array job's own task): SLURM stops it and starts the same
    command again, in the same run folder."""
    job = slurm_job()
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode:
        log.error("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr)
    else:
        log.info("Requeued SLURM job %s: it continues from checkpoints/last.ckpt", job)


class StopSignals:
    """Turns the requeue signals into Lightning's SIGTERM path, which stops after the current
    step (every process of a DDP run at the same step) and raises ``SIGTERMException``.

    Lightning's own SLURM requeue (``SLURMEnvironment(auto_requeue=True)``) saves from inside
    the signal handler, wherever the step is, into ``hpc_ckpt_N.ckpt``, and resumes from it
    without this project's checks; installing this handler first switches it off.
    """

    def __init__(self, is_global_zero: bool) -> None:
        self.is_global_zero = is_global_zero
        self.received: int | None = None
        self.received_at = 0.0
        self.requeue_slurm = False
        self.submitit_handler: Any = None
        self.previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        usr2 = signal.getsignal(signal.SIGUSR2)
        if type(getattr(usr2, "__self__", None)).__module__.startswith("submitit"):
            # submitit's handler requeues and exits at once: it runs after the save instead
            self.submitit_handler = usr2
            self._take(signal.SIGUSR2)
        if "SLURM_JOB_ID" in os.environ:
            # also under submitit, where it only stops: one requeue path per launcher
            self._take(signal.SIGUSR1)
        # Lightning's handler replaces this one during fit; it covers the time before and after
        self._take(signal.SIGTERM)
        return self

    def _take(self, signum: int) -> None:
        self.previous[signum] = signal.signal(signum, self._stop)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received, self.received_at = signum, time.perf_counter()
            log.warning("Received %s: stopping after this step", signal.Signals(signum).name)
        self.requeue_slurm |= signum == signal.SIGUSR1 and self.submitit_handler is None
        lightning = lightning_sigterm_handler()
        if lightning is None:
            # Not fitting: nothing to save; stop now, unless already stopping (SLURM follows
            # its requeue with SIGTERM, which must not break off the exit).
            if first:
                raise SIGTERMException
        elif signum != signal.SIGTERM:
            # Fitting: Lightning's handler (which also calls this one) stops after this step.
            lightning(signal.SIGTERM, frame)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            # Once stopping, later signals (SLURM's SIGTERM after a requeue) wait for the exit.
            signal.signal(signum, signal.SIG_IGN if self.received else handler)
        self.previous = {}

    def exit(self) -> None:
        """After the save: requeue where asked, then end the process with 128 + the signal."""
        signum = self.received or signal.SIGTERM
        if self.received:
            log.info("Stopped %.1f s after %s", time.perf_counter() - self.received_at,
                     signal.Signals(signum).name)  # fmt: skip
        if self.requeue_slurm and self.is_global_zero:
            requeue_slurm_job()
        if self.submitit_handler is not None:
            self.submitit_handler(signum, None)  # submitit requeues (rank 0) and exits
        raise SystemExit(128 + signum)
