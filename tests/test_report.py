"""The end-of-sweep report: job folders read back, variants tabled, differences against the seed
spread; on sweep folders written as Hydra and TensorBoard write them, and on a real ablation."""

import json
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from src.experiments.relu_vs_tanh import load_runs, summarise
from src.experiments.report import main, report
from src.experiments.runs import load_jobs, swept_keys
from tests.conftest import micrograph_overrides, quick_overrides, run_cli


def write_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    curves: dict[str, list[float]],
    choices: dict[str, str] | None = None,
    config: dict | None = None,
) -> Path:
    """A job folder as Hydra and the TensorBoard logger leave it."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    saved = {"seed": seed, **(config or {})}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"job": {"num": num}, "runtime": {"choices": choices or {}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    writer = SummaryWriter(str(job / "tensorboard"))
    for tag, values in curves.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, step)
    writer.close()
    return job


def accuracy(val: float, train: float = 0.9) -> dict[str, list[float]]:
    return {"val/acc": [val / 2, val], "val/acc_top5": [0.8, 0.9], "train/acc": [0.5, train]}


def test_jobs_are_read_in_sweep_order_with_their_swept_keys(tmp_path):
    # job 10 after job 2: the sweeper's order, not the folder names' sort order
    for num, lrn in ((10, "false"), (2, "true")):
        write_job(tmp_path, num, [f"model.net.lrn={lrn}", "seed=0", "trainer.max_epochs=3"], {})
    assert load_jobs(tmp_path) == []  # no events and no divergence: not a job that ran
    write_job(tmp_path, 3, ["model.net.lrn=true", "seed=1", "trainer.max_epochs=3"], accuracy(0.5))
    write_job(
        tmp_path, 11, ["model.net.lrn=false", "seed=1", "trainer.max_epochs=3"], accuracy(0.4)
    )
    jobs = load_jobs(tmp_path)
    assert [j.name for j in jobs] == ["3", "11"]
    assert swept_keys(jobs) == ["model.net.lrn"]
    assert jobs[0].last("val/acc") == pytest.approx(0.5) and jobs[0].seconds >= 0


def test_variants_tabled_with_every_seed_and_the_spread(tmp_path):
    vals = {"true": (0.60, 0.62, 0.64), "false": (0.50, 0.52, 0.63)}
    num = 0
    for lrn, accs in vals.items():
        for seed, acc in enumerate(accs):
            write_job(tmp_path, num, [f"model.net.lrn={lrn}", f"seed={seed}"], accuracy(acc))
            num += 1
    (tmp_path / "5" / "diverged.json").write_text("{}")  # lrn=false, seed 2
    summary = report(tmp_path, title="LRN", claim="-1.4 % top-1 error")
    first, second = summary["variants"]
    assert first["label"] == "model.net.lrn=true" and first["seeds"] == [0, 1, 2]
    final = first["metrics"]["final val/acc"]
    assert final["mean"] == pytest.approx(0.62) and final["std"] == pytest.approx(0.02)
    assert first["metrics"]["train - val acc"]["mean"] == pytest.approx(0.28)
    assert first["metrics"]["epochs"]["values"] == [2.0, 2.0, 2.0]
    # the diverged job counts as a seed without a value
    assert second["diverged"] == [False, False, True]
    assert second["metrics"]["final val/acc"]["values"][:2] == pytest.approx([0.5, 0.52])
    assert second["difference"]["delta"] == pytest.approx(0.51 - 0.62)
    assert second["difference"]["exceeds_seed_spread"] is True
    text = (tmp_path / "results.md").read_text()
    assert "# LRN" in text and "The paper: -1.4 % top-1 error" in text
    assert "| model.net.lrn=false | 3 (1 diverged) |" in text
    assert "0: 0.500, 1: 0.520, 2: diverged | -0.110 | yes |" in text
    assert json.loads((tmp_path / "results.json").read_text())["swept"] == ["model.net.lrn"]


def test_overlapping_seeds_are_not_beyond_the_spread(tmp_path):
    for num, (drop, seed, acc) in enumerate(
        [("0.5", 0, 0.6), ("0.5", 1, 0.7), ("0.0", 0, 0.65), ("0.0", 1, 0.75)]
    ):
        write_job(tmp_path, num, [f"model.net.dropout={drop}", f"seed={seed}"], accuracy(acc))
    (_, second) = report(tmp_path)["variants"]
    assert second["difference"]["exceeds_seed_spread"] is False


def test_metric_variants_of_the_same_jobs(tmp_path):
    for seed in range(2):
        curves = {"test/acc": [0.5 + seed / 10], "test/acc_tencrop": [0.6 + seed / 10]}
        curves |= {"test/acc_top5": [0.9], "test/acc_top5_tencrop": [0.95]}
        write_job(tmp_path, seed, [f"seed={seed}"], curves)
    summary = report(
        tmp_path, metric="test/acc", suffixes={"centre crop": "", "ten crops": "_tencrop"}
    )
    centre, ten = summary["variants"]
    assert centre["metrics"]["test/acc"]["values"] == pytest.approx([0.5, 0.6])
    assert ten["metrics"]["test/acc"]["values"] == pytest.approx([0.6, 0.7])
    assert ten["metrics"]["test/acc_top5"]["mean"] == pytest.approx(0.95)
    assert ten["difference"]["delta"] == pytest.approx(0.1)
    # the same networks: paired seed by seed, though the seeds' ranges overlap
    assert ten["difference"]["same_seed_differences"] == pytest.approx([0.1, 0.1])
    assert not ten["difference"]["exceeds_seed_spread"]
    assert "| +0.100 | no | higher in 2 of 2 |" in (tmp_path / "results.md").read_text()

    # tabled again later (after more seeds, say) with the options of the first report
    write_job(tmp_path, 2, ["seed=2"], {"test/acc": [0.4], "test/acc_tencrop": [0.3]})
    main([str(tmp_path)])
    again = json.loads((tmp_path / "results.json").read_text())
    assert [row["label"] for row in again["variants"]] == ["centre crop", "ten crops"]
    assert again["variants"][1]["seeds"] == [0, 1, 2]
    assert "higher in 2 of 3" in (tmp_path / "results.md").read_text()


def test_relu_vs_tanh_conditions_are_named_by_the_model_option(tmp_path):
    # alexnet and alexnet_half build the same class: the option tells them apart
    for num, model in enumerate(("alexnet", "alexnet_half")):
        config = {"model": {"arch": "src.models.alexnet.AlexNet", "activation": "relu"}}
        config["model"]["optimizer"] = {"lr": 0.01}
        write_job(
            tmp_path, num, [f"model={model}"], {"train/error": [0.5, 0.2]}, {"model": model}, config
        )
    runs = load_runs(tmp_path, condition_keys=["model"])
    assert set(summarise(runs)["conditions"]) == {"model=alexnet", "model=alexnet_half"}


@pytest.mark.slow
def test_an_ablation_ends_with_its_table(tmp_path, tiny_root):
    tiny = micrograph_overrides(tiny_root) + quick_overrides(tmp_path / "logs")
    done = run_cli(
        "experiment=ablate_dropout", *tiny, "trainer.max_epochs=2", "seed=0,1", cwd=tmp_path
    )
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    summary = json.loads((sweep / "results.json").read_text())
    assert summary["swept"] == ["model.net.dropout"]
    assert [row["seeds"] for row in summary["variants"]] == [[0, 1], [0, 1]]
    assert all(row["metrics"]["epochs"]["values"] == [2, 2] for row in summary["variants"])
    assert "| model.net.dropout=0.5 | 2 |" in done.stdout
    assert "| model.net.dropout=0.5 | 2 |" in (sweep / "results.md").read_text()
