"""What a user can get wrong: config values, contradicting checkpoints, a diverging run. Each is
stopped with a message naming the key, before work starts or at the step it happens."""

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import open_dict

from src.eval import evaluate
from src.models.alexnet import AlexNet
from src.models.classifier import DivergedError
from src.models.cnn4 import CNN4
from src.models.nets import min_input_size
from src.predict import DATA_KEYS
from src.train import train
from src.utils import ConfigError
from src.utils.overrides import open_data_keys, refuse_data_keys
from tests.conftest import compose_config, run_cli


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.crop_size=32", "data.resize_size=32"], r"data.crop_size=32 .* at least 63 px"),
        (["data.batch_size=0"], r"data.batch_size=0 must be a whole number of at least 1"),
        (["model.optimizer.lr=-0.01"], r"model.optimizer.lr=-0.01 must be a finite number above 0"),
        (["model.optimizer.momentum=-1"], r"model.optimizer.momentum=-1"),
        (["data.input_scale=pixels"], r"data.input_scale='pixels' is not one of"),
        (["model.net.widths=[48,128,192,192,127]", "model.net.groups=2"],
         r"model.net.groups=2 .* divides"),
        (["model.net.widths=[48,128]"], r"model.net.widths=\[48, 128\] needs 5 conv widths"),
        (["model.net.dropout=1.5"], r"model.net.dropout=1.5 must be at least 0 and below 1"),
        (["data.crop_size=80"], r"data.crop_size=80 is larger than data.resize_size=72"),
    ],
)  # fmt: skip
def test_config_mistakes_name_the_key(overrides, message, train_config):
    cfg = train_config(*overrides)
    with pytest.raises((ConfigError, InstantiationException), match=message) as err:
        train(cfg)
    cause = err.value if isinstance(err.value, ConfigError) else err.value.__cause__
    assert isinstance(cause, ConfigError)
    assert not (Path(cfg.paths.output_dir) / "class_indices.json").exists()


@pytest.mark.parametrize(
    ("net", "size"),
    [(AlexNet(2), 63), (CNN4(), 8), (AlexNet(2, pool_kernel=2, pool_stride=2), 35)],
)  # fmt: skip
def test_minimum_input_size_is_what_the_layers_allow(net, size):
    assert min_input_size(net) == size
    net(torch.zeros(1, 3, size, size))
    with pytest.raises(RuntimeError):
        net(torch.zeros(1, 3, size - 1, size - 1))


DIVERGE = ["model.optimizer.lr=1e6", "trainer.max_epochs=3"]


@pytest.mark.slow
def test_the_command_line_reports_a_mistake_without_a_stack_trace(tiny_overrides, tmp_path):
    """Every mistake the project names (a UserError: config, data, divergence, an unsafe
    checkpoint) ends the command with its one line, in the run's log too, and exit status 1."""
    message = "data.crop_size=32 is too small"
    result = run_cli(*tiny_overrides, "data.crop_size=32", cwd=tmp_path, ok=False)
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert message in out and "Traceback" not in out
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert message in (run / "train.log").read_text()


def test_eval_and_predict_take_no_data_setting_but_where_files_are(trained, tmp_path):
    """A data key copied from the training command gets one line naming it and the keys that
    may be given, as the command line is read and from Python; where the files are and how
    they load may change."""
    ckpt = trained("alexnet_half")
    cfg = compose_config("eval", [f"ckpt_path={ckpt}", "data.train_per_class=3"], tmp_path / "a")
    with pytest.raises(ConfigError, match=r"data.train_per_class: evaluation takes the data.*"
                       r"data.root"):  # fmt: skip
        evaluate(cfg)
    with pytest.raises(SystemExit, match=r"^data: evaluation takes the data set.*data.root=PATH$"):
        open_data_keys([f"ckpt_path={ckpt}", "data=micrographs_64px"])
    with pytest.raises(
        SystemExit,
        match=r"^data.resize_size: prediction takes the data settings "
        r"from the checkpoint; only data.batch_size, data.num_workers may be given",
    ):
        refuse_data_keys(DATA_KEYS, [f"ckpt_path={ckpt}", "image=.", "data.resize_size=64"])
    eval_cfg = compose_config("eval", [f"ckpt_path={ckpt}", "data.batch_size=3"], tmp_path / "e")
    with open_dict(eval_cfg):
        eval_cfg.data.crop_size = 66
    with pytest.raises(ConfigError, match="data.crop_size: evaluation takes the data settings"):
        evaluate(eval_cfg)
    eval_cfg = compose_config(
        "eval", [f"ckpt_path={ckpt}", "data.batch_size=3", "split=val"], tmp_path / "eval"
    )
    assert "val/acc" in evaluate(eval_cfg)


def test_resume_refuses_another_model_or_preprocessing(trained, train_config):
    ckpt = trained("alexnet_half")
    resumed = train_config(f"ckpt_path={ckpt}", "model.net.activation=tanh", "data.crop_size=66")
    with pytest.raises(ConfigError) as err:
        train(resumed)
    assert "model.net.activation='tanh' (the checkpoint has 'relu')" in str(err.value)
    assert "data.crop_size=66 (the checkpoint has 64)" in str(err.value)
    # how it is trained or run may change: another rate, channels-last, another epoch count
    more = ["model.optimizer.lr=0.001", "model.channels_last=true", "trainer.max_epochs=3"]
    train(train_config(f"ckpt_path={ckpt}", *more, "test=false"))


def test_a_diverged_run_stops_at_the_step_and_writes_no_checkpoint(train_config):
    cfg = train_config(*DIVERGE)
    with pytest.raises(DivergedError, match=r"epoch 0, step \d+\. .* lower model.optimizer.lr"):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))


@pytest.mark.slow
def test_a_diverged_job_is_recorded_and_the_sweep_and_report_go_on(tiny_overrides, tmp_path):
    """relu diverges at lr 1e20 and tanh saturates; both are jobs of one relu_vs_tanh sweep (the
    published net's relu runs stay finite at 1e6 over these two tiny epochs)."""
    result = run_cli(
        "experiment=relu_vs_tanh", *tiny_overrides, "model.optimizer.lr=1e20",
        "relu_vs_tanh.step=best", "trainer.max_epochs=2", cwd=tmp_path,
    )  # fmt: skip
    jobs = {p.name: p for p in (tmp_path / "logs" / "train" / "multiruns").glob("*/*_lr*")}
    diverged = {name for name, job in jobs.items() if (job / "diverged.json").is_file()}
    assert "relu_lr1e+20_seed0" in diverged
    record = json.loads((jobs["relu_lr1e+20_seed0"] / "diverged.json").read_text())
    assert record["epoch"] == 0 and "lower model.optimizer.lr" in record["message"]
    assert not list(jobs["relu_lr1e+20_seed0"].rglob("*.ckpt"))
    assert "| all | relu | 1e+20 | diverged in epoch 1 |" in result.stdout
    assert len(jobs) == 2
