#!/usr/bin/env bash
# Prepared check for a CUDA machine (about 10 minutes): installs the environment, runs the GPU tests and
# measures one paper backbone at 224 px on random 2.5D instances (images/s, epoch time, peak GPU memory).
set -euo pipefail
cd "$(dirname "$0")/.."
make env > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv
.venv/bin/python -m pytest -q -m gpu tests/ -p no:logging
for bb in vgg19 resnet50; do
  .venv/bin/python benchmarks/bench_cnn.py --params params/gpu.yaml --backbone "$bb" --steps 30 --synthetic-data
done
