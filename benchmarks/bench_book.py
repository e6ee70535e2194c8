"""Benchmark: wall time of every stage of a run, from its provenance record, against the CPU budget.

Usage: .venv/bin/python benchmarks/bench_book.py [--run synthetic] [--budget-cnn 900] [--budget-total 1800]

Prints each stage's last wall time, the slice-level CNN and 3D-baseline stages together (budget: 15
minutes on 2 cores) and all stages together (budget: 30 minutes for `make book`, rendering excluded —
the script prints the rendering time separately when `_build/.render_seconds` exists).
"""
from __future__ import annotations

import argparse
import json
import sys

from hcc25d.io import PROJECT_ROOT


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="synthetic")
    ap.add_argument("--budget-cnn", type=float, default=900.0, help="seconds for stages cnn + cnn3d")
    ap.add_argument("--budget-total", type=float, default=1800.0, help="seconds for all stages")
    a = ap.parse_args()
    prov_file = PROJECT_ROOT / "results" / a.run / "provenance.json"
    if not prov_file.exists():
        print(f"no provenance at {prov_file}: run `make book RUN={a.run}` first", file=sys.stderr)
        return 2
    prov = json.loads(prov_file.read_text())
    stages = prov.get("stages", {})
    dev = prov.get("device", {})
    print(f"run {a.run} · {dev.get('cpus')} CPUs · CUDA {dev.get('cuda')} · commit {prov.get('git', {}).get('commit', '')[:10]}")
    total = 0.0
    for name, rec in stages.items():
        w = float(rec.get("wall_s", float("nan")))
        total += w
        print(f"  {name:12s} {w:8.1f} s   ({rec.get('started', '')})")
    cnn = sum(float(stages.get(s, {}).get("wall_s", 0.0)) for s in ("cnn", "cnn3d"))
    render = PROJECT_ROOT / "_build" / ".render_seconds"
    rtime = float(render.read_text()) if render.exists() else None
    print(f"cnn + cnn3d: {cnn:8.1f} s  (budget {a.budget_cnn:.0f} s: {'within' if cnn <= a.budget_cnn else 'OVER'})")
    print(f"all stages : {total:8.1f} s  (budget {a.budget_total:.0f} s: {'within' if total <= a.budget_total else 'OVER'})")
    if rtime is not None:
        print(f"rendering  : {rtime:8.1f} s  (stages + rendering {total + rtime:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
