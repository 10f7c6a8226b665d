"""Measurement tools, run from the repository root: ``python -m bench.benchmark`` (``make
bench``), ``python -m bench.soak`` (``make soak``) and ``bash bench/bench_gpu.sh``. They write the
tables beside them; nothing under ``src/`` imports from here."""
