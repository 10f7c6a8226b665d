"""Config keys that were renamed, answered with one line before Hydra reads the command line:
saved ``overrides.yaml`` files, notes and requeued jobs still pass the old names, which Hydra
would refuse with a composition error. CHANGELOG.md lists the same renames."""

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


def renamed(args: Sequence[str]) -> list[str]:
    """One line per override in ``args`` that uses a renamed key: ``OLD: renamed: use NEW``."""
    try:
        overrides = OverridesParser.create().parse_overrides(
            [a for a in args if not a.startswith("-")]
        )
    except OverrideParseException:
        return []  # Hydra reports malformed overrides itself
    lines = []
    for override in overrides:
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
