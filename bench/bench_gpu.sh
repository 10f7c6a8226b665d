#!/usr/bin/env bash
# AlexNet-224 training throughput on one NVIDIA GPU, in under 10 minutes, offline if need be:
#
#   bash bench/bench_gpu.sh [options of python -m bench.bench_gpu]
#
# On a fresh GPU machine: it makes the project's venv (.venv) where there is none, from the
# package index or, offline, from the wheels in $WHEELS (default bench/wheels, filled beforehand
# on a machine with a network: pip download -d bench/wheels -e '.'); checks that the GPU's
# driver runs this torch's CUDA; runs the GPU tests (tests/test_gpu.py), then the benchmark:
# the input paths and switches in a plain loop, and src.train itself, each beside the upper
# bound of its steps on one batch already on the GPU (the share of time the GPU waits).
#
# With CIFAR-10's python batches placed next to it ($CIFAR10, default bench/cifar10, holding
# cifar-10-batches-py/), it then runs the paper's Figure 1 headline on them: the published
# four-layer net, ReLU against tanh, seed 0, into $OUT/figure1/ (figure1.png, results.md).
#
# Writes $OUT/results.md (default ./bench_gpu_out). A missing driver, CUDA build or venv stops
# the script with its reason; failing GPU tests do not stop the benchmark, the script then exits
# with their status.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench_gpu_out}"
WHEELS="${WHEELS:-bench/wheels}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"

if [ ! -x "$PYTHON" ]; then
    echo "making the project's venv in .venv"
    python3 -m venv .venv
    PYTHON=.venv/bin/python
    if [ -d "$WHEELS" ]; then
        "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" -e . pytest
    else
        "$PYTHON" -m pip install --quiet -e . pytest
    fi
fi

# the driver must run the CUDA this torch was built for: otherwise torch sees no GPU, and every
# run would silently train on the CPU
"$PYTHON" - <<'PY'
import re
import shutil
import subprocess
import sys

import torch

built = torch.version.cuda
if built is None:
    sys.exit(f"torch {torch.__version__} is a CPU build: install a CUDA build of torch")
if torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA {built}) on {torch.cuda.get_device_name()}")
    sys.exit(0)
driver = None
if shutil.which("nvidia-smi"):
    found = re.search(r"CUDA Version:\s*([\d.]+)", subprocess.run(
        ["nvidia-smi"], capture_output=True, text=True).stdout)
    driver = found and found[1]
if driver is None:
    sys.exit("no NVIDIA GPU or driver here (nvidia-smi is missing or sees none)")
sys.exit(
    f"the GPU's driver runs CUDA up to {driver}, this torch needs CUDA {built}: update the "
    f"driver, or install a torch built for CUDA {driver} or older"
)
PY
nvidia-smi > "$OUT/nvidia-smi.txt"

# torch.compile's default backend builds code with a C compiler and Python's headers
compile_flag=""
if ! "$PYTHON" -c 'import os, shutil, sys, sysconfig
headers = os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
sys.exit(0 if headers and (shutil.which("gcc") or shutil.which("cc")) else 1)'; then
    echo "torch.compile needs gcc and Python headers, which this machine lacks: its rows are left out"
    compile_flag="--no-compile"
fi

# the GPU tests, then the benchmark whatever they say (the script exits with their status)
tests=0
timeout 180 "$PYTHON" -m pytest tests/test_gpu.py tests/test_gpu_ready.py -m gpu -q -p no:cacheprovider \
    || tests=$?
timeout 420 "$PYTHON" -m bench.bench_gpu --out "$OUT" $compile_flag "$@"

CIFAR10="${CIFAR10:-bench/cifar10}"
if [ -d "$CIFAR10/cifar-10-batches-py" ]; then
    timeout 600 "$PYTHON" -m src.train experiment=relu_vs_tanh data=cifar10 data.root="$CIFAR10" \
        trainer=gpu seed=0 callbacks.progress_bar=null hydra.sweep.dir="$OUT/figure1"
    cat "$OUT/figure1/results.md"
fi
if [ "$tests" -ne 0 ]; then
    echo "the GPU tests failed (their output is above): status $tests" >&2
fi
exit "$tests"
