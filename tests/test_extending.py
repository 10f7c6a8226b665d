"""Every recipe of docs/extending.md, performed as printed: its code and config are read from the
page itself, put into a module outside src/ and a config folder on Hydra's search path, as a
fork's own package would hold them, then trained with and evaluated."""

import re
import shutil
import sys
from pathlib import Path

import pytest

from src.data.datamodule import BadImagesError
from src.eval import evaluate
from src.predict import predict
from src.train import train
from tests.conftest import (
    ROOT,
    compose_config,
    micrograph_overrides,
    quick_overrides,
    run_cli,
    with_tiny_net,
)

PAGE = (ROOT / "docs" / "extending.md").read_text()
# a fenced block whose first line names the file it is (after Hydra's package line, if any)
BLOCK = re.compile(
    r"```(?:python|yaml)\n(# @package \S+\n)?# (\S+\.(?:py|yaml))\n(.*?)```", re.DOTALL
)


def recipe(title: str) -> tuple[dict[str, str], list[list[str]]]:
    """The files (path -> text, its first line included) and the ``python -m src.train``
    commands' overrides of one section of the page."""
    section = PAGE.split(f"\n## {title}\n")[1].split("\n## ")[0]
    files = {path: f"{package}# {path}\n{text}" for package, path, text in BLOCK.findall(section)}
    commands = [
        line.split("python -m src.train", 1)[1].split()
        for line in section.splitlines()
        if line.startswith("python -m src.train")
    ]
    assert files and commands, title
    return files, commands


@pytest.fixture
def fork(tmp_path, monkeypatch):
    """A fork's package folder (on the Python path) and config folder (on Hydra's search path):
    ``install(title)`` writes a recipe's files into them and returns its commands' overrides,
    with the search path added."""
    package, conf = tmp_path / "fork", tmp_path / "fork_conf"
    package.mkdir()
    monkeypatch.syspath_prepend(str(package))
    modules: list[str] = []

    def install(title: str) -> list[list[str]]:
        files, commands = recipe(title)
        for path, text in files.items():
            target = package / path if path.endswith(".py") else conf / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            modules.extend([Path(path).stem] if path.endswith(".py") else [])
        return [[*command, f"hydra.searchpath=[file://{conf}]"] for command in commands]

    yield install
    for name in modules:
        sys.modules.pop(name, None)


def trained(overrides: list[str], run: Path) -> Path:
    """The last checkpoint of a run with these overrides."""
    cfg = compose_config("train", with_tiny_net(overrides), run)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_a_network(fork, tiny_root, tmp_path):
    (command,) = fork("A network")
    tiny = micrograph_overrides(tiny_root) + quick_overrides(tmp_path / "logs")
    ckpt = trained([*tiny, *command], tmp_path / "run")
    metrics = evaluate(compose_config("eval", [f"ckpt_path={ckpt}"], tmp_path / "eval"))
    assert 0 <= metrics["test/acc"] <= 1


def test_an_augmentation_and_the_checkpoints_before_and_without_it(fork, tiny_root, tmp_path):
    """A checkpoint written before the recipe, and one trained with it, both evaluate and
    predict, the second where the operation's module is not there."""
    tiny = micrograph_overrides(tiny_root) + quick_overrides(tmp_path / "logs")
    before = trained(tiny, tmp_path / "before")
    (command,) = fork("An augmentation")
    with_it = trained([*tiny, *command], tmp_path / "with")
    sys.modules.pop("myaugment")
    sys.path.remove(str(tmp_path / "fork"))
    image = next((tiny_root / "val" / "8.0").iterdir())
    for name, ckpt in (("before", before), ("with", with_it)):
        metrics = evaluate(compose_config("eval", [f"ckpt_path={ckpt}"], tmp_path / f"e-{name}"))
        assert 0 <= metrics["test/acc"] <= 1
        args = [f"ckpt_path={ckpt}", f"image={image}"]
        (row,) = predict(compose_config("predict", args, tmp_path / f"p-{name}"))
        assert len(row["top"]) == 5


def named_files(tiny_root: Path, root: Path) -> Path:
    """Dogs vs. Cats' layout from the tiny tree: two of its classes as cat and dog."""
    for split in ("train", "val"):
        for animal, grain in (("cat", "6.5"), ("dog", "13.0")):
            for i, image in enumerate(sorted((tiny_root / split / grain).iterdir())):
                (root / split).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, root / split / f"{animal}.{i}.jpg")
    return root


def test_a_data_set(fork, tiny_root, tmp_path):
    (command,) = fork("A data set")
    root = named_files(tiny_root, tmp_path / "dogs_vs_cats")
    before = sorted(root.rglob("*"))
    command = [arg.replace("PATH", str(root)) for arg in command]
    sizes = ["data.resize_size=72", "data.crop_size=64", f"data.cache_dir={tmp_path / 'cache'}"]
    for backend in ("cache", "pil"):
        run = tmp_path / backend
        cfg = compose_config(
            "train", with_tiny_net([*command, *sizes, f"data.backend={backend}",
                                    *quick_overrides(tmp_path / "logs")]), run,
        )  # fmt: skip
        metrics = train(cfg)
        assert 0 <= metrics["test/acc"] <= 1
        ckpt = run / "checkpoints" / "last.ckpt"
        assert "val/acc" in evaluate(
            compose_config("eval", [f"ckpt_path={ckpt}", "split=val"], tmp_path / f"e-{backend}")
        )
    assert sorted(root.rglob("*")) == before  # nothing written into the data's folder
    (root / "train" / "cat.9.jpg").write_bytes(b"not a picture")
    with pytest.raises(BadImagesError, match="cat.9.jpg"):
        train(compose_config("train", [*command, *sizes, *quick_overrides(tmp_path / "l")],
                             tmp_path / "broken"))  # fmt: skip


@pytest.mark.slow
def test_an_experiment_with_its_sweep_report(fork, tiny_root, tmp_path):
    (command,) = fork("An experiment")
    tiny = [o for o in micrograph_overrides(tiny_root) if "size" not in o]
    tiny += ["data.resize_size=72", "data.crop_size=64", "hydra.sweeper.params.seed=0"]
    tiny += [o for o in quick_overrides(tmp_path / "logs") if not o.startswith("trainer.max")]
    run_cli(*with_tiny_net([*command, *tiny]), "trainer.max_epochs=1", cwd=tmp_path,
            env={"PYTHONPATH": f"{ROOT}:{tmp_path / 'fork'}"})  # fmt: skip
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert sorted(p.parent.name for p in sweep.glob("*/seed0")) == ["lr0.003", "lr0.01"]
    results = (sweep / "results.md").read_text()
    assert "# Learning rate" in results and "model.optimizer.lr=0.003" in results
