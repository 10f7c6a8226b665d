"""The notebooks run top to bottom on tiny data, so none can rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import micrograph_overrides, quick_overrides

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, env: dict[str, str]) -> list[dict]:
    """Runs ``notebooks/NAME`` from the repository root with ``env`` set; its code outputs."""
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**env, "PYTHONPATH": str(ROOT)}.items():
            patch.setenv(key, value)
        client = NotebookClient(
            notebook,
            timeout=180,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT)}},
        )
        client.execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def pictures(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tiny_root) -> tuple[list[dict], Path]:
    logs = tmp_path_factory.mktemp("quickstart") / "logs"
    overrides = [*micrograph_overrides(tiny_root), *quick_overrides(logs), "trainer.max_epochs=2"]
    return execute("quickstart.ipynb", {"NOTEBOOK_OVERRIDES": " ".join(overrides)}), logs


@pytest.mark.slow
def test_quickstart_trains_plots_and_predicts(quickstart):
    outputs, logs = quickstart
    (ckpt,) = logs.glob("notebooks/*/checkpoints/last.ckpt")
    assert list(ckpt.parent.parent.glob("predictions/*_prediction.png"))
    # the curves and the predicted image
    assert pictures(outputs) == 2
    assert any("val/acc" in str(o.get("data", {})) for o in outputs)


@pytest.mark.slow
def test_what_alexnet_learned_draws_from_the_checkpoint(quickstart):
    _, logs = quickstart
    (ckpt,) = logs.glob("notebooks/*/checkpoints/last.ckpt")
    # nothing but the checkpoint: its data module and preprocessing come from it
    outputs = execute("what_alexnet_learned.ipynb", {"NOTEBOOK_CKPT": str(ckpt)})
    # filters, confusion matrix, top-5, neighbours
    assert pictures(outputs) == 4
    assert any("CNN4, 14 classes" in o.get("text", "") for o in outputs)
