"""The command line, read before Hydra reads it, for what Hydra would answer with a composition
error: keys that were renamed (saved ``overrides.yaml`` files, notes and requeued jobs still pass
the old names; CHANGELOG.md lists them), and the data keys of ``src.eval`` and ``src.predict``,
whose data settings come from the checkpoint."""

import sys
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

# old key -> what to write instead; "key=value" entries apply to that value only
RENAMED = {
    "data.augment=true": "leave it out: the data set's own data.augment (the paper's random "
    "crop and flip) is the default",
    "data.augment=false": "data.augment=null (no training operations)",
    "data.train_crop": "data.augment.crop is an operation now: +data/augment=random_resized_crop "
    "for random_resized; random is the default",
    "data.pca_noise": "+data/augment=pca_noise data.augment.pca_noise.std=SIGMA (0: leave it out)",
    "model.arch": "model.net._target_=CLASS, or a preset: model=alexnet, model=cnn4, "
    "model=torchvision model.net.name=NAME",
}
# the network's arguments, which moved into its own node, model.net
NETWORK_KEYS = (
    "widths", "hidden", "groups", "lrn", "pool_kernel", "pool_stride", "activation", "dropout",
    "init", "in_channels", "init_std", "pools", "act_after_pool", "rnorm", "rnorm_size",
    "rnorm_scale", "rnorm_pow",
)  # fmt: skip
RENAMED |= {f"model.{key}": f"model.net.{key}" for key in NETWORK_KEYS}


def parsed(args: Sequence[str]) -> list:
    """Hydra's reading of each override in ``args``; flags (``--cfg job``) and malformed
    overrides, which Hydra then reports itself, are left out."""
    parser, overrides = OverridesParser.create(), []
    for arg in args:
        if arg.startswith("-"):
            continue
        try:
            overrides += parser.parse_overrides([arg])
        except OverrideParseException:
            continue
    return overrides


def renamed(args: Sequence[str]) -> list[str]:
    """One line per override in ``args`` that uses a renamed key: ``OLD: renamed: use NEW``."""
    lines = []
    for override in parsed(args):
        key = override.key_or_group
        value = override.get_value_element_as_str() if not override.is_sweep_override() else ""
        for old in (f"{key}={value.lower()}", key):
            if old in RENAMED:
                lines.append(f"{override.input_line}: renamed: use {RENAMED[old]} (CHANGELOG.md)")
                break
    return lines


def refuse_renamed(args: Sequence[str] | None = None) -> None:
    """Stop with one line per renamed key on the command line (``sys.argv`` by default)."""
    lines = renamed(sys.argv[1:] if args is None else args)
    if lines:
        raise SystemExit("\n".join(lines))


def open_data_keys(args: Sequence[str] | None = None) -> list[str]:
    """``src.eval``'s command line with every ``data.KEY=VALUE`` as ``++data.KEY=VALUE``:
    ``conf/eval.yaml`` names no data key, since the keys a checkpoint's data may change are its
    data module's to say (``may_change``); ``src.eval`` checks them against it, once it has read
    the checkpoint, and names those it refuses. A data set (``data=NAME``) is refused here."""
    args = list(sys.argv[1:] if args is None else args)
    overrides = parsed(args)
    if any(o.key_or_group == "data" for o in overrides):
        raise SystemExit(
            "data: evaluation takes the data set and its settings from the checkpoint; give "
            "only where its files are and how they load, e.g. data.root=PATH"
        )
    keys = {o.input_line for o in overrides if o.key_or_group.startswith("data.")}
    return [f"++{a}" if a in keys and not a.startswith(("+", "~")) else a for a in args]


def refuse_data_keys(allowed: Sequence[str], args: Sequence[str] | None = None) -> None:
    """Stop, with one line, on a data key that ``allowed`` lacks (one copied from the training
    command, say): ``src.predict`` takes the data settings from the checkpoint."""
    refused = [
        o.key_or_group
        for o in parsed(sys.argv[1:] if args is None else args)
        if o.key_or_group == "data"
        or (o.key_or_group.startswith("data.") and o.key_or_group[5:] not in allowed)
    ]
    if refused:
        raise SystemExit(
            f"{', '.join(refused)}: prediction takes the data settings from the checkpoint; "
            f"only {', '.join(f'data.{k}' for k in allowed)} may be given."
        )
