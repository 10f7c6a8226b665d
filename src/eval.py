"""Evaluate a checkpoint: ``python -m src.eval ckpt_path=PATH [split=val|test] [data.root=PATH]``.

The model, the kind of data module and every preprocessing setting come from the checkpoint;
the command line may point at other files and change how they are loaded, nothing else.
"""

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.data.datamodule import datamodule_from_checkpoint
from src.experiments.figures import write_figure4
from src.models.classifier import load_classifier
from src.utils import ConfigError, exit_on_user_error, instantiate_all


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Metrics of the checkpoint on the val or test split of the data it was trained on."""
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r} must be 'val' or 'test'")
    L.seed_everything(cfg.seed, workers=True)
    model, checkpoint = load_classifier(cfg.ckpt_path)
    datamodule = datamodule_from_checkpoint(checkpoint, OmegaConf.to_container(cfg.data))
    if datamodule.classes != model.class_names:
        raise ConfigError(
            f"The checkpoint's classes {model.class_names} differ from those under "
            f"data.root={datamodule.hparams.root}: {datamodule.classes}. Point data.root at the "
            "data the model was trained on."
        )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_all(cfg.get("logger")))
    run = trainer.test if cfg.split == "test" else trainer.validate
    (results,) = run(model, datamodule=datamodule)
    if cfg.get("figures"):
        write_figure4(model, datamodule, cfg.paths.output_dir)
    return {k: float(v) for k, v in results.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
