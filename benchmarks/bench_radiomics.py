"""Benchmark: PyRadiomics extraction per patient-phase with the default settings; serial vs parallel
speed-up on the machine's cores; peak memory.

Usage: .venv/bin/python benchmarks/bench_radiomics.py [--params params/synthetic.yaml] [--n 24] [--jobs 2]
Needs the run's data stage (results/<run>/data/cases.csv).
"""
from __future__ import annotations

import argparse
import resource
import time

from hcc25d import config, manifest
from hcc25d import radiomics as rad
from hcc25d.io import PROJECT_ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/synthetic.yaml")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    cfg = config.load(PROJECT_ROOT / a.params)
    cases = manifest.cases(PROJECT_ROOT / "results" / cfg.run / "data").head(a.n)
    settings = rad.load_settings(PROJECT_ROOT / cfg.radiomics.settings)
    rad.extract_patient(cases.iloc[0], settings, cfg.data.phases)  # warm-up
    t0 = time.perf_counter()
    _, _, timings = rad.extract_all(cases, settings, cfg.data.phases, n_jobs=1, progress=False, threads=1)
    serial = time.perf_counter() - t0
    # start the worker processes (imports) before timing: the steady-state throughput is what scales
    rad.extract_all(cases.head(a.jobs), settings, cfg.data.phases, n_jobs=a.jobs, progress=False)
    t0 = time.perf_counter()
    rad.extract_all(cases, settings, cfg.data.phases, n_jobs=a.jobs, progress=False)
    parallel = time.perf_counter() - t0
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)  # reap the workers so their peak memory is counted
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n = len(cases)
    print(f"profile {cfg.run}: {n} patients x {len(cfg.data.phases)} phases, settings {cfg.radiomics.settings}")
    print(f"seconds per patient-phase (one core): mean {timings['seconds'].mean():.3f}, "
          f"median {timings['seconds'].median():.3f}, max {timings['seconds'].max():.3f}")
    print(f"serial {serial:.1f} s, parallel ({a.jobs} workers) {parallel:.1f} s: speed-up {serial / parallel:.2f}x")
    print(f"projected stage time for 323 patients with {a.jobs} workers: {parallel / n * 323 / 60:.1f} min")
    print(f"peak memory: main process {self_mb:.0f} MB, largest worker {child_mb:.0f} MB")


if __name__ == "__main__":
    main()
