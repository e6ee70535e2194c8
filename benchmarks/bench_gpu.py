"""Benchmark: the CNN stages on a CUDA machine (or on the CPU, for comparison), printing figures.

Three parts, each optional:

* ``stage`` — the CNN stage's training (``cnn.train_backbones`` with the profile's ``cnn`` section, the
  same call the notebook makes) on a finished run's crops: wall time, optimiser steps, images per second
  and the patient-level AUC (mean instance probability) per cohort.
* ``backbones`` — the paper's four ImageNet backbones at 224 px, one training step after another on random
  tensors already on the device (AMP where the profile asks for it): images per second, peak GPU memory,
  and the time one epoch of the run's instance count would take.
* ``cnn3d`` — the 3D ResNet-18 baseline at the ``gpu`` profile's width on random 64³ cubes.

Usage: python benchmarks/bench_gpu.py [--run synthetic] [--params params/synthetic.yaml]
       [--parts stage,backbones,cnn3d] [--device auto|cpu|cuda] [--repeats R] [--steps 30]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from bench_cnn import throughput  # benchmarks/ is on the path when a benchmark runs as a script
from hcc25d import cnn, cnn3d, config, crop25d, stats
from hcc25d.io import PROJECT_ROOT


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def stage(cfg, device: str, repeats) -> None:
    C = cfg.cnn
    if repeats is not None:
        C = C.model_copy(update={"repeats": repeats})
    raw = crop25d.load_bags(PROJECT_ROOT / "results" / cfg.run / "crop25d")
    bags, _, _ = cnn.prepare_input(raw, C, cfg.crop.channels)
    size = crop25d.roi_extent_mm(raw.index, cfg.crop.spacing_mm)
    print(f"[stage] {len(bags.index)} instances of {bags.index['patient_id'].nunique()} patients, "
          f"{C.backbones}, {C.folds} folds x {C.repeats} repeats, {C.epochs} epochs, loss {C.loss}")
    t0 = time.perf_counter()
    preds, logs, _, _ = cnn.train_backbones(bags, C, cfg.seed, device, None, None, size=size)
    _sync(device)
    wall = time.perf_counter() - t0
    steps = logs.groupby(["model", "fit"])["steps"].max()
    print(f"[stage] {device}: {wall:.1f} s for {len(steps)} models ({wall / len(steps):.1f} s per model), "
          f"{int(steps.max())} optimiser steps each, median {logs['images_per_s'].median():.0f} images/s")
    pat = (preds.groupby(["backbone", "patient_id"], sort=False)
           .agg(cohort=("cohort", "first"), label=("label", "first"), prob=("prob", "mean")).reset_index())
    for (b, c), g in pat.groupby(["backbone", "cohort"], sort=False):
        print(f"[stage] {b} patient AUC {c}: {stats.auc(g['label'], g['prob']):.3f} (n={len(g)})")


def backbones(gpu_cfg, device: str, steps: int, n_instances: int) -> None:
    C, size = gpu_cfg.cnn, gpu_cfg.crop.image_size
    amp = device == "cuda" and C.amp
    x = torch.rand(C.batch_size, 3, size, size, device=device)
    y = (torch.arange(C.batch_size, device=device) % 2).float()
    for name in C.backbones:
        model = cnn.build_model(name, "none")[0].to(device).to(memory_format=torch.channels_last)
        rate, peak = throughput(model, x.contiguous(memory_format=torch.channels_last), y, steps, amp, device)
        print(f"[backbones] {name} {size} px batch {C.batch_size} amp={amp}: {rate:.0f} images/s, "
              f"peak {peak:.1f} GiB, one epoch of {n_instances} instances {n_instances / rate:.1f} s")


def cubes(gpu_cfg, device: str, steps: int) -> None:
    C, n = gpu_cfg.cnn3d, gpu_cfg.crop.cube_size
    amp = device == "cuda" and C.amp
    x = torch.rand(C.batch_size, 3, n, n, n, device=device)
    y = (torch.arange(C.batch_size, device=device) % 2).float()
    model = cnn3d.ResNet3D(3, width=C.width).to(device)
    rate, peak = throughput(model, x, y, steps, amp, device)
    print(f"[cnn3d] width {C.width}, {n}^3 cubes, batch {C.batch_size} amp={amp}: {rate:.0f} cubes/s, "
          f"peak {peak:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/synthetic.yaml", help="profile of the run whose crops train")
    ap.add_argument("--gpu-params", default="params/gpu.yaml", help="profile of the paper's backbones")
    ap.add_argument("--parts", default="stage,backbones,cnn3d")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=None, help="override cnn.repeats for the stage part")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    device = cnn.torch_device("cpu" if a.device == "cpu" else "auto")
    info = torch.cuda.get_device_name(0) if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, device {device} ({info})")
    cfg = config.load(PROJECT_ROOT / a.params)
    gpu_cfg = config.load(PROJECT_ROOT / a.gpu_params)
    parts = a.parts.split(",")
    if "stage" in parts:
        stage(cfg, device, a.repeats)
    if "backbones" in parts:
        idx = PROJECT_ROOT / "results" / cfg.run / "crop25d" / "index.csv"
        n = len(pd.read_csv(idx)) if idx.exists() else 1500
        backbones(gpu_cfg, device, a.steps, n)
    if "cnn3d" in parts:
        cubes(gpu_cfg, device, a.steps)


if __name__ == "__main__":
    main()
