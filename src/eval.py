"""Evaluate a checkpoint: ``python -m src.eval ckpt_path=PATH [split=val|test] [ten_crop=true]``.

The model, the kind of data module and every preprocessing setting come from the checkpoint;
the command line may point at other files and change how they are loaded, and ask for ten-crop
testing, nothing else. torch and Lightning load when the evaluation runs, so the command line
answers before they do.
"""

import logging
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.utils import ConfigError, exit_on_user_error, instantiate_all
from src.utils.overrides import open_data_keys, refuse_renamed

log = logging.getLogger(__name__)


def metrics_table(results: dict[str, float], split: str) -> str:
    """One row per metric, the centre crop's value beside the ten crops' where there is one."""
    names = sorted({k.split("/", 1)[1].removesuffix("_tencrop") for k in results})
    tencrop = any(k.endswith("_tencrop") for k in results)
    header = f"{split:<12}{'centre crop':>12}" + (f"{'ten crops':>12}" if tencrop else "")
    rows = [header]
    for name in names:
        row = f"{name:<12}{results[f'{split}/{name}']:>12.4f}"
        if f"{split}/{name}_tencrop" in results:
            row += f"{results[f'{split}/{name}_tencrop']:>12.4f}"
        rows.append(row)
    return "\n".join(rows)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Metrics of the checkpoint on the val or test split of the data it was trained on."""
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r} must be 'val' or 'test'")
    if cfg.ten_crop is not None and not isinstance(cfg.ten_crop, bool):
        raise ConfigError(f"ten_crop={cfg.ten_crop!r} must be true, false or null")
    import lightning as L

    from src.checkpoints import datamodule_from_checkpoint, load_classifier
    from src.experiments.figure4 import write_figure4
    from src.utils.lightning_compat import one_console_for_lightning

    one_console_for_lightning()
    L.seed_everything(cfg.seed, workers=True)
    model, checkpoint = load_classifier(cfg.ckpt_path, compile=cfg.compile)
    datamodule = datamodule_from_checkpoint(checkpoint, OmegaConf.to_container(cfg.data))
    ten_crop = cfg.ten_crop
    if ten_crop is None:
        ten_crop = checkpoint["datamodule_hyper_parameters"]["ten_crop"]
    datamodule.ten_crop_splits = {cfg.split} if ten_crop else set()
    if datamodule.classes != model.class_names:
        raise ConfigError(
            f"The checkpoint's classes {model.class_names} differ from those under "
            f"data.root={datamodule.hparams.root}: {datamodule.classes}. Point data.root at the "
            "data the model was trained on."
        )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate_all(cfg.get("logger")))
    run = trainer.test if cfg.split == "test" else trainer.validate
    (results,) = run(model, datamodule=datamodule, verbose=False)
    results = {k: float(v) for k, v in results.items()}
    log.info("metrics of %s\n%s", cfg.ckpt_path, metrics_table(results, cfg.split))
    if cfg.get("figures"):
        write_figure4(model, datamodule, cfg.paths.output_dir)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    refuse_renamed()
    sys.argv[1:] = open_data_keys()
    main()
