"""What every test shares: the command-line runner, Hydra composition, one set of tiny
overrides and the tiny trained checkpoints, so each test says only what is particular to it.

Two tiers: ``make test`` runs the tests that start no process, ``make test-all`` adds those
marked ``slow`` (command lines, DDP, notebooks, servers). An unmarked test that starts one fails
here, naming itself."""

import multiprocessing.context
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose as compose_hydra
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.micrographs import ensure_micrographs
from src.utils.overrides import open_data_keys

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TINY_DATA = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "image_size": 72}


def compose(name: str, overrides: list[str]) -> DictConfig:
    """``conf/NAME.yaml`` with OVERRIDES, the ``hydra`` node included, as Hydra composes it (the
    data keys of ``src.eval`` opened as its command line opens them)."""
    if name == "eval":
        overrides = open_data_keys(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose_hydra(config_name=name, overrides=overrides, return_hydra_config=True)


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The config ``python -m src.<name> OVERRIDES`` would run with, writing into output_dir."""
    cfg = compose(name, overrides)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def run_cli(
    *args: str,
    cwd: Path,
    module: str = "src.train",
    ok: bool = True,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    python_args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """``python [PYTHON_ARGS] -m MODULE ARGS`` in ``cwd``, as a user runs it (this checkout's
    code), with ``env`` added to the environment; with ``ok``, a failure shows the end of its
    output. It runs in a process group of its own, which a scheduler's signals can target as
    SLURM's do."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    result = subprocess.run(
        [sys.executable, *python_args, "-m", module, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        start_new_session=True,
    )  # fmt: skip
    if ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def job_dirs(log_dir: Path, task: str = "train") -> list[Path]:
    """The job folders of the one sweep under log_dir, in job order."""
    (sweep,) = (log_dir / task / "multiruns").iterdir()
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar curve of a run's TensorBoard events."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def started_a_process(test: str, command: object) -> AssertionError:
    return AssertionError(
        f"{test} starts a process ({command!r}): mark it @pytest.mark.slow, the tier of tests "
        "that start processes (make test-all), or do the work in this process"
    )


def refuse_processes(test: str, popen: Callable[..., None]) -> Callable[..., None]:
    """Popen's constructor for a fast test: ``git`` alone may run (the trackers' commit tag, a
    few milliseconds); anything else fails the test, naming it."""

    def refused(self: subprocess.Popen, args: object, *more: object, **kwargs: object) -> None:
        if isinstance(args, list | tuple) and args and args[0] == "git":
            return popen(self, args, *more, **kwargs)
        raise started_a_process(test, args)

    return refused


def refuse_spawning(test: str) -> staticmethod:
    """multiprocessing's start of a spawned process (torch's ddp_spawn), refused likewise."""

    def refused(process: multiprocessing.context.SpawnProcess) -> None:
        raise started_a_process(test, [process.name])

    return staticmethod(refused)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """The fast tier starts no process (loader workers, forked, excepted), in its fixtures too."""
    if item.get_closest_marker("slow") is not None:
        return (yield)
    popen, spawn = subprocess.Popen.__init__, multiprocessing.context.SpawnProcess._Popen
    subprocess.Popen.__init__ = refuse_processes(item.nodeid, popen)
    multiprocessing.context.SpawnProcess._Popen = refuse_spawning(item.nodeid)
    try:
        return (yield)
    finally:
        subprocess.Popen.__init__ = popen
        multiprocessing.context.SpawnProcess._Popen = spawn


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micrograph tree: 2 train, 1 val, 1 test image per class, 72 px."""
    return ensure_micrographs(tmp_path_factory.mktemp("data") / "micrographs", seed=0, **TINY_DATA)


# TensorBoard's images (the first batch, conv1's filters, the confusion matrix) take half a tiny
# run's time: left out unless the test looks at them
NO_IMAGES = [
    "callbacks.training_samples=null",
    "callbacks.first_layer_filters=null",
    "callbacks.confusion_matrix=null",
]


def quick_overrides(log_dir: Path, images: bool = False) -> list[str]:
    """What every tiny run sets, whatever its data: small batches, one CPU epoch, quiet, and
    TensorBoard's images only with ``images``."""
    return [
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.log_dir={log_dir}",
        *([] if images else NO_IMAGES),
    ]


# The tiny runs' default network: the article's AlexNet with a classifier 256 wide, not 2048,
# 1.6 M parameters, not 14.6 M: a run trains and writes its checkpoints about 3 times faster.
TINY_NET = "model.net.hidden=256"


def with_tiny_net(overrides: list[str]) -> list[str]:
    """OVERRIDES and ``TINY_NET`` where they keep the default network: a model or an experiment
    they choose keeps its own."""
    chosen = ("model=", "experiment=", "+experiment=", "model.net.hidden=")
    return overrides if any(o.startswith(chosen) for o in overrides) else [*overrides, TINY_NET]


# a run that needs epochs, not images: two training batches and one validation batch an epoch
FEW_STEPS = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]


def micrograph_overrides(root: Path) -> list[str]:
    """The tiny micrograph tree at 72 px, cropped to 64, its decoded cache beside it."""
    data = [f"data.{k}={v}" for k, v in TINY_DATA.items()]
    sizes = ["data.resize_size=72", "data.crop_size=64"]
    return [*data, f"data.root={root}", f"data.cache_dir={root.parent / 'cache'}", *sizes]


def imagefolder_overrides(root: Path, cache_dir: Path) -> list[str]:
    """Any train/val[/test] tree of 72-px images as ``data=imagefolder``, cropped to 64."""
    return [
        "data=imagefolder", f"data.root={root}", "data.resize_size=72", "data.crop_size=64",
        f"data.cache_dir={cache_dir}",
    ]  # fmt: skip


@pytest.fixture
def tiny_overrides(tiny_root: Path, tmp_path: Path) -> list[str]:
    return micrograph_overrides(tiny_root) + quick_overrides(tmp_path / "logs")


@pytest.fixture
def train_config(tiny_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose train.yaml with the tiny overrides plus the test's own, in a fresh run folder;
    ``data`` replaces the tiny micrograph overrides (e.g. with ``imagefolder_overrides``)."""
    runs = iter(range(100))

    def make(
        *overrides: str, data: list[str] | None = None, name: str = "train", images: bool = False
    ) -> DictConfig:
        tiny = (data or micrograph_overrides(tiny_root)) + quick_overrides(
            tmp_path / "logs", images
        )
        return compose_config(
            name, with_tiny_net([*tiny, *overrides]), tmp_path / f"run{next(runs)}"
        )

    return make


TRAINED = {
    "alexnet_half": ["model=alexnet_half", TINY_NET],
    "cnn4_mean_image": ["model=cnn4", "model.net.init=default", "data.input_scale=mean_image"],
}


@pytest.fixture(scope="session")
def trained(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``trained(KIND)``: ``last.ckpt`` of a tiny model of that kind (``TRAINED``), trained for
    two epochs on the tiny tree once per test run, on first use. The file is read-only: a test
    that changes it works on a copy."""
    from src.train import train

    made: dict[str, Path] = {}

    def checkpoint(kind: str) -> Path:
        if kind not in made:
            run = tmp_path_factory.mktemp(f"trained-{kind}")
            overrides = micrograph_overrides(tiny_root) + quick_overrides(run / "logs")
            overrides += [*TRAINED[kind], "trainer.max_epochs=2", "test=false"]
            train(compose_config("train", overrides, run / "run"))
            made[kind] = run / "run" / "checkpoints" / "last.ckpt"
            made[kind].chmod(0o444)
        return made[kind]

    return checkpoint


@pytest.fixture(scope="session")
def resume_args(tiny_root: Path) -> list[str]:
    """The runs that are stopped and continued: two epochs of 7 steps (batch 4), deterministic,
    no test pass."""
    tiny = micrograph_overrides(tiny_root) + quick_overrides(Path("logs"))
    tiny = [o for o in tiny if not o.startswith(("data.batch_size", "data.num_workers"))]
    return [*tiny, "data.batch_size=4", "trainer.max_epochs=2", "trainer.deterministic=true",
            "test=false", "seed=3", TINY_NET]  # fmt: skip


@pytest.fixture(scope="session")
def uninterrupted(resume_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of ``resume_args`` run through, once per test run: what every stopped and
    continued run must end with, bit for bit, in this process or from the command line."""
    import torch

    from src.train import train

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    deterministic = torch.are_deterministic_algorithms_enabled()
    train(compose_config("train", [*resume_args, "data.num_workers=0"], run_dir))
    torch.use_deterministic_algorithms(deterministic)  # as the run found it, for other tests
    return run_dir
