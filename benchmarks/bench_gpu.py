"""Benchmark: the CNN stages on a CUDA machine (or on the CPU, for comparison), printing figures.

Four parts, each optional:

* ``stage`` — the CNN stage's training (``cnn.train_backbones`` with the profile's ``cnn`` section, the
  same call the notebook makes) on a finished run's crops: wall time, optimiser steps, images per second,
  the instance AUC per cohort (training out of fold; size-adjusted, and before the adjustment where the
  profile adjusts) and the patient-level AUC (mean instance probability).
* ``latent`` — on the twin, the same network taught the latent image score instead of the outcome
  (``cnn.latent_label_reference``, the CNN chapter's yardstick; needs the run's ``data/oracle.csv``):
  the instance AUCs against the outcome. With ``stage`` it separates what the outcome labels fail to
  teach from what the network does not read at all.
* ``backbones`` — the paper's four ImageNet backbones at 224 px, one training step after another on random
  tensors already on the device (AMP where the profile asks for it): images per second, peak GPU memory,
  and the time one epoch of the run's instance count would take.
* ``cnn3d`` — the 3D ResNet-18 baseline at the ``gpu`` profile's width on random 64³ cubes.

``--set KEY=VALUE`` (repeatable, YAML values) changes the profile for ``stage`` and ``latent``, to see
whether a wider network or a longer schedule reads more from the same crops: for example
``--parts stage,latent --set cnn.width=64 --set cnn.epochs=48``. Nothing is written to the run.

Usage: python benchmarks/bench_gpu.py [--params params/synthetic.yaml] [--parts stage,backbones,cnn3d]
       [--device auto|cpu|cuda] [--repeats R] [--steps 30] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from bench_cnn import throughput  # benchmarks/ is on the path when a benchmark runs as a script
import yaml

from hcc25d import cnn, cnn3d, config, crop25d, evaluation, stats
from hcc25d.io import PROJECT_ROOT


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(cfg, repeats):
    C = cfg.cnn
    if repeats is not None:
        C = C.model_copy(update={"repeats": repeats})
    raw = crop25d.load_bags(PROJECT_ROOT / "results" / cfg.run / "crop25d")
    bags, _, _ = cnn.prepare_input(raw, C, cfg.crop.channels)
    return C, bags, crop25d.roi_extent_mm(raw.index, cfg.crop.spacing_mm)


def _report(tag: str, preds: pd.DataFrame) -> None:
    """Instance AUC per cohort (size-adjusted; before the adjustment where there is one) and the
    patient-level AUC of the mean instance probability."""
    inst = evaluation.instance_reference({"adjusted": preds})
    for c, r in inst.iterrows():
        raw = r.get("adjusted, before size adjustment")
        print(f"[{tag}] instance AUC {c}: {r['adjusted']:.3f}"
              + (f" ({raw:.3f} before size adjustment)" if raw is not None and pd.notna(raw) else ""))
    pat = (preds.groupby("patient_id", sort=False)
           .agg(cohort=("cohort", "first"), label=("label", "first"), prob=("prob", "mean")).reset_index())
    order = {c: i for i, c in enumerate(evaluation.COHORTS)}
    for c, g in sorted(pat.groupby("cohort", sort=False), key=lambda cg: order.get(cg[0], len(order))):
        print(f"[{tag}] patient AUC {c}: {stats.auc(g['label'], g['prob']):.3f} (n={len(g)})")


def stage(cfg, device: str, repeats) -> None:
    C, bags, size = _inputs(cfg, repeats)
    print(f"[stage] {len(bags.index)} instances of {bags.index['patient_id'].nunique()} patients, "
          f"{C.backbones}, width {C.width}, {C.folds} folds x {C.repeats} repeats, {C.epochs} epochs, "
          f"loss {C.loss}")
    t0 = time.perf_counter()
    preds, logs, _, _ = cnn.train_backbones(bags, C, cfg.cnn_seed(), device, None, None, size=size)
    _sync(device)
    wall = time.perf_counter() - t0
    steps = logs.groupby(["model", "fit"])["steps"].max()
    print(f"[stage] {device}: {wall:.1f} s for {len(steps)} models ({wall / len(steps):.1f} s per model), "
          f"{int(steps.max())} optimiser steps each, median {logs['images_per_s'].median():.0f} images/s")
    for b, p in preds.groupby("backbone", sort=False):
        _report(f"stage {b}", p)


def latent(cfg, device: str, repeats) -> None:
    oracle = PROJECT_ROOT / "results" / cfg.run / "data" / "oracle.csv"
    if not oracle.exists():
        raise SystemExit(f"--parts latent needs the twin's {oracle} (a finished twin run)")
    C, bags, size = _inputs(cfg, repeats)
    llr = pd.read_csv(oracle, dtype={"patient_id": str}).set_index("patient_id")["imaging_llr"]
    t0 = time.perf_counter()
    preds = cnn.latent_label_reference(bags, C, C.backbones[0], llr, cfg.cnn_seed(), device, None,
                                       size if C.size_adjust else None)
    _sync(device)
    print(f"[latent] {C.backbones[0]} taught the latent image score: {time.perf_counter() - t0:.1f} s")
    _report("latent", preds)


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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the profile for stage and latent, e.g. cnn.width=64 (repeatable)")
    a = ap.parse_args()
    device = cnn.torch_device("cpu" if a.device == "cpu" else "auto")
    info = torch.cuda.get_device_name(0) if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, device {device} ({info})")
    sets = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--set wants KEY=VALUE, not {item!r}")
        sets[key] = yaml.safe_load(value)
    cfg = config.load(PROJECT_ROOT / a.params, sets)
    gpu_cfg = config.load(PROJECT_ROOT / a.gpu_params)
    parts = a.parts.split(",")
    unknown = set(parts) - {"stage", "latent", "backbones", "cnn3d"}
    if unknown:
        ap.error(f"unknown --parts {sorted(unknown)}: choose from stage, latent, backbones, cnn3d")
    if "stage" in parts:
        stage(cfg, device, a.repeats)
    if "latent" in parts:
        latent(cfg, device, a.repeats)
    if "backbones" in parts:
        idx = PROJECT_ROOT / "results" / cfg.run / "crop25d" / "index.csv"
        n = len(pd.read_csv(idx)) if idx.exists() else 1500
        backbones(gpu_cfg, device, a.steps, n)
    if "cnn3d" in parts:
        cubes(gpu_cfg, device, a.steps)


if __name__ == "__main__":
    main()
