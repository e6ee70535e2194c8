#!/usr/bin/env bash
# Prepared check for a CUDA machine (about 10 minutes on an H100): installs the environment, runs the GPU
# tests, measures one paper backbone at 224 px (images/s, epoch time, peak GPU memory), then runs the gpu
# profile's CNN stage for that backbone and the 3D baseline on a twin subset and prints each stage's wall
# time. Offline machines have no ImageNet weights: the run falls back to random initialisation (said in
# its provenance). Compare with the same commands on a CPU (`--device cpu`, `benchmarks/bench_book.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKBONE=${BACKBONE:-resnet50}
N=${N:-120}
make env > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv
.venv/bin/python -m pytest -q -m gpu tests/ -p no:logging
.venv/bin/python benchmarks/bench_cnn.py --params params/gpu.yaml --backbone "$BACKBONE" --steps 30 --synthetic-data
# the gpu profile, one backbone, N twin patients: stages cohort → cnn3d
.venv/bin/python - "$BACKBONE" "$N" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params/gpu.yaml"))
p.update(run="gpucheck")
p["cohort"] = dict(p.get("cohort", {}), n_imaging=int(sys.argv[2]))
p["cnn"] = dict(p["cnn"], backbones=[sys.argv[1]], on_missing_weights="random", folds=3, epochs=10)
p["cnn3d"] = dict(p["cnn3d"], folds=3, epochs=10)
p["radiomics"] = {"validate": False}
yaml.safe_dump(p, open("params/gpucheck.yaml", "w"))
PY
.venv/bin/python -m hcc25d run --params params/gpucheck.yaml --only cohort --only data --only crop25d \
  --only cnn --only cnn3d
.venv/bin/python benchmarks/bench_book.py --run gpucheck
.venv/bin/python - <<'PY'
for st in ("cnn", "cnn3d"):
    log = __import__("pandas").read_csv(f"results/gpucheck/{st}/tab-training-log.csv")
    print(f"{st}: {log['images_per_s'].median():.0f} images/s (median), epoch {log['seconds'].median():.1f} s, "
          f"{len(log)} epochs over {log['fit'].nunique()} fold models")
PY
rm -f params/gpucheck.yaml
