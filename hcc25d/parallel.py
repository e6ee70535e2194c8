"""Per-patient work in parallel, with a progress bar and results in input order.

Engines (``compute.backend``):

* ``loky`` (default; processes), ``threading``, ``sequential`` — joblib on this machine;
* ``dask`` — a Dask cluster: ``compute.scheduler: local`` starts a ``distributed.LocalCluster`` of
  ``compute.n_jobs`` process workers with one thread each; an address (``tcp://host:8786``) connects to
  a running scheduler (for example one started by ``dask-jobqueue`` on a SLURM cluster). Work is sent as
  the patients' table rows — file paths, never images — and results come back in input order. A worker
  that dies is replaced and its tasks rerun by Dask's scheduler; a task that raises is not retried.
* ``ray`` — joblib's ray backend (the user registers it).

Every worker runs with one ITK thread and one BLAS/OpenMP thread, so that *n* workers use *n* cores. A
patient whose task fails is reported by its id (:class:`PatientFailed`), whatever the engine.
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Callable, Iterable, Optional

from tqdm import tqdm

__all__ = [
    "THREAD_ENV",
    "PatientFailed",
    "engine",
    "dask_client",
    "close_dask",
    "map_patients",
]

#: environment of every Dask worker process: one thread per library
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}

_CLIENTS: dict = {}


class PatientFailed(RuntimeError):
    """The task of one patient raised; the message names the patient and the error."""


class _Labelled:
    """``fn`` with failures re-raised under the item's label (the patient id)."""

    def __init__(self, fn: Callable, label: Callable):
        self.fn, self.label = fn, label

    def __call__(self, item):
        try:
            return self.fn(item)
        except Exception as exc:  # noqa: BLE001 - re-raised with the patient's id
            raise PatientFailed(f"patient {self.label(item)}: {type(exc).__name__}: {exc}") from exc


def _default_label(item) -> str:
    row = item[0] if isinstance(item, tuple) and item else item
    try:
        return str(row["patient_id"])
    except (TypeError, KeyError, IndexError):
        return repr(item)[:60]


def engine(compute) -> str:
    """The engine string of a ``compute`` params section: ``loky``, ``dask:local``, ``dask:tcp://…``."""
    if compute.backend == "dask":
        return f"dask:{compute.scheduler}"
    return compute.backend


def _one_thread() -> None:
    """Run on every Dask worker at start: one ITK thread (the environment covers BLAS/OpenMP)."""
    os.environ.update(THREAD_ENV)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except ImportError:  # pragma: no cover
        pass


def dask_client(scheduler: str = "local", n_workers: int = 2):
    """A ``distributed.Client`` (cached per scheduler and size; closed at exit): ``local`` starts a
    ``LocalCluster`` of ``n_workers`` single-threaded process workers, anything else is the address of a
    running scheduler."""
    from distributed import Client, LocalCluster

    key = (scheduler, n_workers if scheduler == "local" else None)
    client = _CLIENTS.get(key)
    if client is not None and client.status == "running":
        return client
    if scheduler == "local":
        cluster = LocalCluster(n_workers=max(1, n_workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, env=THREAD_ENV, silence_logs=40)
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout="30s")
    client.run(_one_thread)
    client.register_worker_callbacks(_one_thread)
    _CLIENTS[key] = client
    return client


def close_dask() -> None:
    """Close every Dask client (and local cluster) this process started."""
    for client in list(_CLIENTS.values()):
        cluster = getattr(client, "cluster", None)
        try:
            if cluster is not None:  # workers first, then the scheduler: no heartbeat into a closed socket
                cluster.close()
            client.close()
        except Exception:  # pragma: no cover - shutting down
            pass
    _CLIENTS.clear()


atexit.register(close_dask)


def map_patients(fn: Callable, items: Iterable, n_jobs: int = 1, backend: str = "loky",
                 desc: str = "patients", progress: bool = True, total: Optional[int] = None,
                 label: Optional[Callable] = None) -> list[Any]:
    """``[fn(item) for item in items]`` in parallel, results in input order, with a progress bar.

    ``backend``: ``loky``, ``threading``, ``sequential``, ``ray`` (joblib) or ``dask:<scheduler>``
    (:func:`engine`). ``label(item)`` names an item in a failure (default: its row's ``patient_id``).
    """
    items = list(items)
    total = total if total is not None else len(items)
    task = _Labelled(fn, label or _default_label)
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, mininterval=2.0,
               unit="patient", dynamic_ncols=False, ncols=90)
    try:
        if backend.startswith("dask"):
            return _map_dask(task, items, backend.partition(":")[2] or "local", n_jobs, bar)
        if n_jobs == 1 or backend == "sequential" or len(items) <= 1:
            out = []
            for it in items:
                out.append(task(it))
                bar.update(1)
            return out
        from joblib import Parallel, delayed, parallel_config

        with parallel_config(backend=backend, n_jobs=n_jobs):
            gen = Parallel(return_as="generator")(delayed(task)(it) for it in items)
            out = []
            for r in gen:
                out.append(r)
                bar.update(1)
        return out
    finally:
        bar.close()


def _map_dask(task: Callable, items: list, scheduler: str, n_jobs: int, bar) -> list:
    from distributed import as_completed

    n = n_jobs if n_jobs > 0 else (os.cpu_count() or 1)
    client = dask_client(scheduler, n)
    futures = client.map(task, items, pure=False)
    try:
        for fut in as_completed(futures):
            if fut.status == "error":
                fut.result()  # raises the PatientFailed of that patient
            bar.update(1)
        return client.gather(futures)
    finally:
        for f in futures:
            f.release()
