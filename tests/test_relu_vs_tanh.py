"""The paper's Figure 1 experiment: epochs-to-target arithmetic, and tiny real sweeps."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from src.experiments.relu_vs_tanh import Run, epochs_to_target, summarise, summary_table
from tests.conftest import ROOT, micrograph_overrides, quick_overrides, run_cli


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([0.9, 0.5, 0.3, 0.2, 0.1], 4),
        ([0.9, 0.25, 0.3], 2),  # at the target counts, a later rise does not undo it
        ([0.1, 0.9], 1),
        ([0.9, 0.8, 0.26], None),
        ([], None),
    ],
)
def test_epochs_to_target(errors, expected):
    assert epochs_to_target(errors, 0.25) == expected


def run(act: str, lr: float, errors: list[float], seed: int = 0, cond: str = "all") -> Run:
    seconds = [10.0 * (i + 1) for i in range(len(errors))]
    return Run(f"{cond}/{act}_lr{lr}_s{seed}", act, lr, seed, cond, errors, [], seconds)


def test_summary_chooses_the_fastest_rate_per_activation():
    runs = [
        run("relu", 0.01, [0.8, 0.2, 0.1]),
        run("relu", 0.1, [0.9, 0.9, 0.9]),
        run("tanh", 0.01, [0.9, 0.7, 0.5, 0.4, 0.3, 0.2]),
        run("tanh", 0.1, [0.8, 0.6, 0.4, 0.24, 0.2, 0.1]),
    ]
    summary = summarise(runs, target=0.25)["conditions"]["all"]
    assert summary["relu"]["lr"] == 0.01 and summary["relu"]["epochs_to_target"] == [2]
    assert summary["relu"]["seconds_to_target"] == [20.0]
    assert summary["tanh"]["lr"] == 0.1 and summary["tanh"]["epochs_to_target"] == [4]
    assert summary["speedup_tanh_over_relu"]["mean"] == pytest.approx(2.0)
    # two rates cannot say whether the best lies beyond them
    assert not summary["relu"]["lr_at_grid_edge"]


def test_a_rate_at_the_end_of_the_grid_is_flagged():
    curves = {0.001: [0.9, 0.5], 0.01: [0.9, 0.2], 0.1: [0.9, 0.1]}
    runs = [run("relu", lr, errors) for lr, errors in curves.items()]
    summary = summarise(runs, target=0.25)
    assert summary["conditions"]["all"]["relu"]["lr_at_grid_edge"]
    assert "| all | relu | 0.1* | 2 |" in summary_table(summary)
    assert "from 0.001, 0.01, 0.1 (*" in summary_table(summary)
    summary = summarise([*runs, run("tanh", 0.01, [0.2])])
    assert "from relu 0.001, 0.01, 0.1; tanh 0.01 (*" in summary_table(summary)
    curves[0.1] = [0.9, 0.9]
    entry = summarise([run("relu", lr, e) for lr, e in curves.items()])["conditions"]["all"]
    assert entry["relu"]["lr"] == 0.01 and not entry["relu"]["lr_at_grid_edge"]


def test_not_reached_gives_a_bound_and_says_so():
    runs = [
        run("relu", 0.01, [0.8, 0.5, 0.2, 0.1], seed=0, cond="a"),
        run("tanh", 0.01, [0.9, 0.8, 0.7, 0.6], seed=0, cond="a"),
        run("relu", 0.01, [0.9, 0.8, 0.7, 0.6], seed=0, cond="b"),
        run("tanh", 0.01, [0.9, 0.8, 0.7, 0.6], seed=0, cond="b"),
    ]
    summary = summarise(runs, target=0.25)
    a, b = summary["conditions"]["a"], summary["conditions"]["b"]
    assert a["tanh"]["epochs_to_target"] == [None]
    assert a["speedup_tanh_over_relu"]["text"] == ">1.33"
    assert a["speedup_tanh_over_relu"]["mean"] is None
    assert b["speedup_tanh_over_relu"]["text"] == "n/a"
    assert "not reached in 4" in summary_table(summary)


def test_seeds_give_a_spread():
    runs = [
        run("relu", 0.01, [0.5, 0.2], seed=0),
        run("tanh", 0.01, [0.5, 0.4, 0.2], seed=0),
        run("relu", 0.01, [0.2], seed=1),
        run("tanh", 0.01, [0.5, 0.2], seed=1),
    ]
    ratio = summarise(runs)["conditions"]["all"]["speedup_tanh_over_relu"]
    assert ratio["per_seed"] == [1.5, 2.0]
    assert (ratio["min"], ratio["max"], ratio["mean"]) == (1.5, 2.0, 1.75)
    assert ratio["text"] == "1.50, 2.00 (mean 1.75, min-max 1.50-2.00)"


def test_ratios_pair_runs_by_seed_value_not_position():
    # seed 1's ReLU job is missing: seed 2's ReLU must not be compared with seed 1's tanh
    runs = [
        run("relu", 0.01, [0.5, 0.2], seed=0),
        run("tanh", 0.01, [0.5, 0.4, 0.2], seed=0),
        run("tanh", 0.01, [0.5, 0.5, 0.5, 0.2], seed=1),
        run("relu", 0.01, [0.2], seed=2),
        run("tanh", 0.01, [0.5, 0.2], seed=2),
    ]
    ratio = summarise(runs)["conditions"]["all"]["speedup_tanh_over_relu"]
    assert ratio["seeds"] == [0, 2] and ratio["per_seed"] == [1.5, 2.0]
    assert ratio["unpaired_seeds"] == [1]


def sweep(tmp: Path, tiny_root: Path, *overrides: str) -> tuple[Path, str]:
    """Run ``python -m src.train OVERRIDES`` at tiny sizes in tmp; its single sweep folder."""
    tiny = micrograph_overrides(tiny_root) + quick_overrides(tmp / "logs")
    tiny += ["trainer.max_epochs=2", "model.optimizer.lr=0.01", "relu_vs_tanh.step=best"]
    done = run_cli(*overrides, *tiny, cwd=tmp)
    (sweep_dir,) = (tmp / "logs").glob("*/multiruns/*")
    return sweep_dir, done.stdout


@pytest.fixture(scope="module")
def figure1_sweep(tmp_path_factory, tiny_root) -> tuple[Path, str]:
    return sweep(tmp_path_factory.mktemp("figure1"), tiny_root, "experiment=relu_vs_tanh")


@pytest.mark.slow
def test_sweep_writes_both_runs_figure_and_summary(figure1_sweep):
    sweep_dir, stdout = figure1_sweep
    for name in ("relu_lr0.01_seed0", "tanh_lr0.01_seed0"):
        assert list((sweep_dir / name / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((sweep_dir / "results.json").read_text())
    entry = summary["conditions"]["all"]
    assert summary["target_train_error"] == 0.25
    assert entry["relu"]["lr"] == entry["tanh"]["lr"] == 0.01
    assert entry["relu"]["epochs_run"] == [2] and len(entry["tanh"]["final_train_error"]) == 1
    assert "| all | relu | 0.01 |" in stdout and (sweep_dir / "results.md").is_file()
    # the report is logged, into the sweep's own log file too
    assert "| all | relu | 0.01 |" in (sweep_dir / "report.log").read_text()

    image = Image.open(sweep_dir / "figure1.png")
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for rgb in ((31, 119, 180), (214, 39, 40)):  # the ReLU and tanh curves
        assert (np.abs(pixels - rgb).sum(1) < 30).sum() > 50


@pytest.mark.slow
def test_notebook_draws_figure1_from_the_sweep(figure1_sweep, monkeypatch):
    sweep_dir, _ = figure1_sweep
    monkeypatch.setenv("RELU_VS_TANH_SWEEP", str(sweep_dir))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    notebook = nbformat.read(ROOT / "notebooks" / "relu_vs_tanh.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("tanh" in o.get("text", "") for o in outputs)


@pytest.mark.slow
def test_conditions_sweep_tables_ratios_per_condition(tmp_path, tiny_root):
    grid = ["data.input_scale=raw,standardised", "model=cnn4", "model.net.init=paper"]
    # every training error is below this target: each run stops after the first of its 2 epochs
    race = ["relu_vs_tanh.target=1.01"]
    sweep_dir, stdout = sweep(
        tmp_path, tiny_root, "experiment=relu_vs_tanh_conditions", *grid, *race
    )
    conditions = json.loads((sweep_dir / "results.json").read_text())["conditions"]
    assert set(conditions) == {
        f"input_scale={s}, init=paper, model=cnn4" for s in ("raw", "standardised")
    }
    for entry in conditions.values():
        assert entry["relu"]["epochs_run"] == entry["tanh"]["epochs_run"] == [1]
        assert entry["speedup_tanh_over_relu"]["per_seed"] == [1.0]
    assert "input_scale=standardised, init=paper, model=cnn4 | tanh" in stdout
    assert (sweep_dir / "figure1.png").is_file()
