"""Per-patient work mapped through joblib, with a progress bar. The backend is a parameter
(``loky`` processes by default; ``threading``; ``dask`` or ``ray`` for a user with a cluster, who
must have registered that backend); no home-made scheduler."""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Optional

from tqdm import tqdm

__all__ = [
    "map_patients",
]


def map_patients(fn: Callable, items: Iterable, n_jobs: int = 1, backend: str = "loky",
                 desc: str = "patients", progress: bool = True, total: Optional[int] = None) -> list[Any]:
    """``[fn(item) for item in items]`` in parallel, results in input order, with a progress bar."""
    items = list(items)
    total = total if total is not None else len(items)
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, mininterval=2.0,
               unit="patient", dynamic_ncols=False, ncols=90)
    try:
        if n_jobs == 1 or backend == "sequential" or len(items) <= 1:
            out = []
            for it in items:
                out.append(fn(it))
                bar.update(1)
            return out
        from joblib import Parallel, delayed, parallel_config

        with parallel_config(backend=backend, n_jobs=n_jobs):
            gen = Parallel(return_as="generator")(delayed(fn)(it) for it in items)
            out = []
            for r in gen:
                out.append(r)
                bar.update(1)
        return out
    finally:
        bar.close()
