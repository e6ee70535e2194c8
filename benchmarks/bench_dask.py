"""Benchmark: crop + radiomics per patient with loky against a Dask LocalCluster, on the same cores.

Usage: .venv/bin/python benchmarks/bench_dask.py [--params params/synthetic.yaml] [--n 80] [--jobs 2]

Uses the run's validated cases (results/<run>/data/cases.csv; run the data stage first) — the twin at
paper size has 323 patients. Each engine crops the patients (into a temporary folder) and extracts
their radiomics features with the run's settings; the Dask cluster is started before the clock runs
(its start-up is printed separately). Prints patients per second side by side and the Dask overhead.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hcc25d import config, crop25d, manifest, parallel
from hcc25d import radiomics as rad
from hcc25d.io import PROJECT_ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/synthetic.yaml")
    ap.add_argument("--n", type=int, default=80, help="patients (0 = all of the run)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    cfg = config.load(PROJECT_ROOT / a.params)
    data_dir = PROJECT_ROOT / "results" / cfg.run / "data"
    if not (data_dir / "cases.csv").exists():
        raise SystemExit(f"no cases at {data_dir}: run `python -m hcc25d run --params {a.params} --only cohort data`")
    cases = manifest.cases(data_dir)
    cases = cases.head(a.n) if a.n else cases
    settings = rad.load_settings(PROJECT_ROOT / cfg.radiomics.settings)
    t0 = time.perf_counter()
    parallel.dask_client("local", a.jobs)
    startup = time.perf_counter() - t0
    res = {}
    for engine in ("loky", "dask:local"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            crop25d.crop_all(cases, cfg.crop, cfg.data.phases, cfg.data.mask_label, Path(tmp), n_jobs=a.jobs,
                             backend=engine, progress=False)
            t_crop = time.perf_counter() - t0
            t0 = time.perf_counter()
            rad.extract_all(cases, settings, cfg.data.phases, cfg.data.mask_label, n_jobs=a.jobs,
                            backend=engine, progress=False)
            t_rad = time.perf_counter() - t0
        res[engine] = (t_crop, t_rad)
    n = len(cases)
    print(f"profile {cfg.run}: {n} patients, {a.jobs} workers (Dask LocalCluster start-up {startup:.1f} s, "
          f"not counted)")
    print(f"{'engine':12s} {'crop p/s':>9s} {'radiomics p/s':>14s} {'both p/s':>9s}")
    for engine, (tc, tr) in res.items():
        print(f"{engine:12s} {n / tc:9.2f} {n / tr:14.2f} {n / (tc + tr):9.2f}")
    (lc, lr), (dc, dr) = res["loky"], res["dask:local"]
    print(f"Dask overhead (crop + radiomics wall time): {100 * ((dc + dr) / (lc + lr) - 1):+.1f} %")
    parallel.close_dask()


if __name__ == "__main__":
    main()
