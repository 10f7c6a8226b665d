"""The GPU paths, proven on the CPU: no step reads a value back to the host, the batch transform
runs on the meta device in every mode, checkpoints' random states fit any number of GPUs, a
compiled run compiles few graphs and a sweep's jobs each their own, and torch.compile's needs
are named before any work."""

import collections
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from src.checkpoints import load_classifier
from src.data.augment import CROPS_AND_FLIPS, build_operations
from src.data.batch_transform import BatchTransform
from src.models.classifier import ImageClassifier
from src.train import train
from src.utils import ConfigError
from src.utils.randomness import random_states, set_random_states

# a value read back to the host: on a GPU, the CPU waits for every kernel queued before it
READS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.nonzero",
         "aten._unique2", "aten.unique_dim", "aten.masked_select")  # fmt: skip
# reads that only the CPU makes, named: torch.nn.functional.one_hot checks its input's range on
# the CPU, not on a GPU (torchmetrics' accuracy calls it)
CPU_ONLY = {("stat_scores.py", "_multiclass_stat_scores_update")}


class HostReads(TorchDispatchMode):
    """Counts the ops that read a device value back to the host, by the Python line asking."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).rsplit(".", 1)[0] in READS:
            frames = [f for f in traceback.extract_stack()[:-1] if "torch/" not in f.filename]
            where = frames[-1]
            if (Path(where.filename).name, where.name) not in CPU_ONLY:
                self.sites[f"{Path(where.filename).name}:{where.lineno} {where.name}"] += 1
        return func(*args, **(kwargs or {}))


class CountReads(Callback):
    """The reads of every training, validation and test step but the training steps at the log
    interval, which read the loss's finiteness by design."""

    def __init__(self) -> None:
        self.reads = {"train": HostReads(), "val": HostReads(), "test": HostReads()}
        self.steps = collections.Counter()
        self.on: str | None = None

    def start(self, stage: str, batch_idx: int, trainer) -> None:
        logs = (batch_idx + 1) % trainer.log_every_n_steps == 0 and stage == "train"
        if not logs and not trainer.sanity_checking:
            self.on = stage
            self.reads[stage].__enter__()

    def end(self) -> None:
        if self.on:
            self.reads[self.on].__exit__(None, None, None)
            self.steps[self.on] += 1
            self.on = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start("train", batch_idx, trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.start("val", batch_idx, trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        self.end()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.start("test", batch_idx, trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        self.end()


GPU = pytest.param(
    "gpu",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    ],
)


@pytest.mark.parametrize("accelerator", ["cpu", GPU])
def test_no_training_or_validation_step_reads_a_value_back(train_config, monkeypatch, accelerator):
    """Every default callback on, PCA noise, Cutout and ten-crop testing included: 0 reads a GPU
    would also make, per step (before: 5 per training step, 6 per ten-crop evaluation one). On
    a GPU (bench/bench_gpu.sh), bf16 and channels-last on; compiled graphs are not counted."""
    counter = CountReads()
    cfg = train_config(
        "trainer.max_epochs=2", "data.batch_size=4", "trainer.log_every_n_steps=5",
        "+data/augment=[pca_noise,cutout]", "data.ten_crop=true",
        f"trainer.accelerator={accelerator}", "model.compile=false",
    )  # fmt: skip
    monkeypatch.setattr("src.train.instantiate_all", counting(counter))
    train(cfg)
    assert counter.steps["train"] >= 8 and counter.steps["val"] >= 4 and counter.steps["test"] >= 2
    assert {stage: dict(reads.sites) for stage, reads in counter.reads.items()} == {
        "train": {},
        "val": {},
        "test": {},
    }


def counting(counter: Callback):
    """``instantiate_all`` with the counter added to the callbacks."""
    from src.utils import instantiate_all

    def with_counter(group):
        built = instantiate_all(group)
        return [*built, counter] if group is not None and "throughput" in group else built

    return with_counter


@pytest.mark.parametrize("input_scale", ["standardised", "raw", "mean_image"])
def test_every_batch_transform_mode_runs_on_the_meta_device(input_scale):
    """Shapes only, no values: an op that needed a value on the host would fail here."""
    statistics = {"mean_image": torch.rand(3, 40, 40, dtype=torch.float64),
                  "eigvals": torch.rand(3, dtype=torch.float64),
                  "eigvecs": torch.eye(3, dtype=torch.float64)}  # fmt: skip
    lists = [
        CROPS_AND_FLIPS | {"noise": {"_target_": "src.data.augment.PCANoise"},
                           "cut": {"_target_": "src.data.augment.Cutout", "size": 8}},
        {"crop": {"_target_": "src.data.augment.RandomResizedCrop"}},
    ]  # fmt: skip
    images = torch.empty(4, 3, 40, 40, dtype=torch.uint8, device="meta")
    for augment in lists:
        transform = BatchTransform(
            32, input_scale=input_scale, operations=build_operations(augment),
            statistics=statistics,
        )  # fmt: skip
        stages = (("train", False, (4, 3, 32, 32)), ("val", False, (4, 3, 32, 32)),
                  ("test", True, (4, 10, 3, 32, 32)))  # fmt: skip
        for stage, ten_crop, shape in stages:
            out = transform(images, stage, ten_crop=ten_crop, channels_last=True)
            assert out.device.type == "meta" and out.shape == shape


def test_random_states_fit_any_number_of_gpus(monkeypatch):
    """A checkpoint of format 5 held every GPU's state of the process that wrote it: on a
    machine with fewer, only this process's own GPU is set (before: IndexError)."""
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.full((8,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: restored.update(state=state))
    states = random_states()
    assert torch.equal(states["cuda_device"], torch.full((8,), 7, dtype=torch.uint8))
    four = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    older = {k: v for k, v in states.items() if k != "cuda_device"} | {"cuda": four}
    set_random_states(older)
    assert torch.equal(restored["state"], four[1])
    restored.clear()
    set_random_states(older | {"cuda": four[:1]})  # this process's GPU was not among them
    assert restored == {}
    set_random_states(states)
    assert torch.equal(restored["state"], states["cuda_device"])


def compiled_graphs(run: Callable[[], object]) -> int:
    """The graphs Dynamo compiles while ``run`` runs."""
    from torch._dynamo.utils import counters

    counters.clear()
    run()
    return counters["stats"]["unique_graphs"]


def test_a_compiled_run_compiles_few_graphs_and_each_job_its_own(train_config):
    """Batch sizes vary (the last, partial batches; ten crops): with the batch dimension dynamic
    a run compiles a training and an evaluation graph, and each job of a sweep in one process
    starts from none (Dynamo's recompile limit, 8, would otherwise switch compiling off)."""
    graphs = []
    for seed in (0, 1, 2):
        cfg = train_config(
            "model=cnn4", "model.compile=eager", "data.batch_size=6", "data.ten_crop=true",
            f"seed={seed}",
        )  # fmt: skip
        graphs.append(compiled_graphs(lambda cfg=cfg: train(cfg)))
    # the third job would find 6 of the 8 a code object may have, and run partly uncompiled
    assert graphs == [graphs[0]] * 3 and 2 <= graphs[0] <= 3


def test_compile_is_checked_before_any_work_and_eval_compiles_only_when_asked(
    train_config, monkeypatch, tmp_path
):
    with pytest.raises(ConfigError, match="model.compile='fast' is not one of torch's backends"):
        ImageClassifier(["a", "b"], {"_target_": "src.models.cnn4.CNN4"}, compile="fast")
    cfg = train_config("model=cnn4", "model.compile=eager", "test=false")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model, checkpoint = load_classifier(ckpt)
    assert checkpoint["hyper_parameters"]["compile"] == "eager" and not model.hparams.compile
    monkeypatch.setenv("PATH", str(tmp_path))  # no C compiler on it
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ConfigError, match="torch.compile needs gcc and Python headers") as err:
        ImageClassifier(["a", "b"], {"_target_": "src.models.cnn4.CNN4"}, compile=True)
    assert "model.compile=false" in str(err.value)
    assert os.environ["PATH"] == str(tmp_path)
