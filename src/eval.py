"""Evaluate a checkpoint: ``python -m src.eval ckpt_path=PATH [split=val|test] [data=...]``."""

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.experiments.figures import write_figure4
from src.models.classifier import load_classifier
from src.utils import instantiate_all


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Metrics of the checkpoint on the data config's val or test split."""
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split={cfg.split!r} must be 'val' or 'test'")
    L.seed_everything(cfg.seed, workers=True)
    model, _ = load_classifier(cfg.ckpt_path)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    if datamodule.classes != model.class_names:
        raise ValueError(
            f"The checkpoint's classes {model.class_names} differ from the data's "
            f"{datamodule.classes}: pass the data overrides the model was trained with."
        )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_all(cfg.get("logger")))
    run = trainer.test if cfg.split == "test" else trainer.validate
    (results,) = run(model, datamodule=datamodule)
    if cfg.get("figures"):
        write_figure4(model, datamodule, cfg.paths.output_dir)
    return {k: float(v) for k, v in results.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
