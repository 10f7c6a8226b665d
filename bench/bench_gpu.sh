#!/usr/bin/env bash
# AlexNet-224 training throughput on one NVIDIA GPU, in under 5 minutes, offline if need be:
#
#   bash bench/bench_gpu.sh [options of python -m bench.bench_gpu]
#
# With CIFAR-10's python batches placed next to it ($CIFAR10, default bench/cifar10, holding
# cifar-10-batches-py/), it then runs the paper's Figure 1 headline on them: the published
# four-layer net, ReLU against tanh, seed 0, into $OUT/figure1/ (figure1.png, results.md).
#
# Writes $OUT/results.md (default ./bench_gpu_out). Uses the torch and torchvision installed
# here (torch >= 2.11, torchvision >= 0.26) and never installs either; any other missing
# dependency comes from the wheels in $WHEELS (default bench/wheels, filled beforehand on a
# machine with a network: pip download -d bench/wheels lightning hydra-core ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-./bench_gpu_out}"
WHEELS="${WHEELS:-bench/wheels}"
mkdir -p "$OUT"

"$PYTHON" - <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

need = {"torch": (2, 11), "torchvision": (0, 26)}
for name, least in need.items():
    try:
        found = version(name)
    except PackageNotFoundError:
        sys.exit(f"{name} is not installed: install a CUDA build of {name} first")
    if tuple(int(p) for p in found.split("+")[0].split(".")[:2]) < least:
        sys.exit(f"{name} {found} is too old: this project needs >= {'.'.join(map(str, least))}")
PY

# pip names of what the project imports, beside the module each provides
missing=$("$PYTHON" - <<'PY'
import importlib.util

modules = {
    "lightning": "lightning", "torchmetrics": "torchmetrics", "hydra": "hydra-core",
    "omegaconf": "omegaconf", "tensorboard": "tensorboard", "rich": "rich",
    "matplotlib": "matplotlib", "PIL": "pillow", "numpy": "numpy", "scipy": "scipy",
    "torchdata": "torchdata", "pytest": "pytest",
}
print(" ".join(pip for module, pip in modules.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
    echo "installing from $WHEELS: $missing"
    # pinning what is installed keeps pip from ever replacing torch or torchvision
    pins="$OUT/installed-torch.txt"
    "$PYTHON" -c 'from importlib.metadata import version as v
for n in ("torch", "torchvision"): print(f"{n}=={v(n)}")' > "$pins"
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" -c "$pins" $missing
fi

if command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$OUT/nvidia-smi.txt"
else
    echo "warning: no nvidia-smi here; the table will describe the CPU" >&2
fi

timeout 120 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
timeout 240 "$PYTHON" -m bench.bench_gpu --out "$OUT" "$@"

CIFAR10="${CIFAR10:-bench/cifar10}"
if [ -d "$CIFAR10/cifar-10-batches-py" ]; then
    timeout 600 "$PYTHON" -m src.train experiment=relu_vs_tanh data=cifar10 data.root="$CIFAR10" \
        trainer=gpu seed=0 callbacks.progress_bar=null hydra.sweep.dir="$OUT/figure1"
    cat "$OUT/figure1/results.md"
fi
