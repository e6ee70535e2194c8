"""Benchmark: resampling + 2.5D cropping per patient, serial (one core) and parallel.

Usage: .venv/bin/python benchmarks/bench_crop25d.py [--params params/synthetic.yaml] [--n 40] [--jobs 2]

Uses the run's validated cases (results/<run>/data/cases.csv) when present; otherwise generates the
twin images for --n patients in a temporary folder first. Prints seconds per patient and patients per
second, serial and parallel.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hcc25d import cohort, config, crop25d, manifest, twin_clinical, twin_imaging
from hcc25d.io import PROJECT_ROOT
from hcc25d.parallel import map_patients


def _one(args):
    row, prm, phases = args
    t = time.perf_counter()
    crop25d.crop_patient(row, prm, phases)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/synthetic.yaml")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    cfg = config.load(PROJECT_ROOT / a.params)
    data_dir = PROJECT_ROOT / "results" / cfg.run / "data"
    tmp = None
    if (data_dir / "cases.csv").exists():
        cases = manifest.cases(data_dir).head(a.n)
    else:
        tmp = tempfile.TemporaryDirectory()
        spec = cohort.load_spec(cfg.cohort.spec)
        pts = twin_clinical.imaging_subset(twin_clinical.generate_clinical(spec, cfg.seed), a.n, cfg.seed)
        twin_imaging.build_twin(pts, cfg.seed, cfg.twin, Path(tmp.name), spec.variables, n_jobs=a.jobs, progress=False)
        cases = manifest.validate_manifest(Path(tmp.name) / "manifest.csv")
    items = [(row, cfg.crop, cfg.data.phases) for _, row in cases.iterrows()]
    _one(items[0])  # warm-up (imports, caches)
    t0 = time.perf_counter()
    per = [_one(it) for it in items]
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    map_patients(_one, items, n_jobs=a.jobs, progress=False)
    parallel = time.perf_counter() - t0
    n = len(items)
    print(f"profile {cfg.run}: {n} patients, image_size {cfg.crop.image_size}, spacing {cfg.crop.spacing_mm} mm")
    print(f"serial   : {np.mean(per):.3f} s/patient (median {np.median(per):.3f}, max {np.max(per):.3f}) "
          f"= {n / serial:.2f} patients/s on one core")
    print(f"parallel : {n / parallel:.2f} patients/s with {a.jobs} workers (speed-up {serial / parallel:.2f}x)")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
