"""Training throughput of the model presets, side by side in one process:
``python -m src.utils.benchmark [--size 112] [--batch 32] [--steps 5]``.

Prints images per second for one SGD step (forward, backward, update) of each preset and its
ratio to the first, so a choice between presets is made on numbers from the same machine.
"""

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

PRESETS = ("alexnet_half", "alexnet_owt", "alexnet", "cnn4")
CONF = Path(__file__).resolve().parents[2] / "conf"


def load_preset(name: str, num_classes: int) -> torch.nn.Module:
    """The network ``model=<name>`` builds."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    return instantiate(cfg.model, class_names=[str(i) for i in range(num_classes)]).net


def images_per_second(net: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 14, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    step()  # warm-up: allocations and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.size}px, batch {args.batch}, {torch.get_num_threads()} threads")
    base = None
    for name in PRESETS:
        rate = images_per_second(load_preset(name, 14), args.size, args.batch, args.steps)
        base = base or rate
        print(f"{name:<14} {rate:8.1f} img/s   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
