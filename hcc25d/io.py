"""Paths of a run and atomic writers (temporary file, then rename: an interrupted run leaves no torn file)."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

__all__ = [
    "PROJECT_ROOT",
    "atomic_path",
    "write_csv",
    "write_json",
    "read_json",
    "write_npz",
    "RunPaths",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_csv(df: pd.DataFrame, path: str | Path, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


class RunPaths:
    """Where a run keeps its files: ``results/<run>/<stage>/`` (tables, figures, arrays).

    While a stage executes under the runner, it writes into a temporary folder that the runner
    renames onto ``results/<run>/<stage>/`` only when the whole notebook succeeded; ``out_dir``
    points there. Outside the runner (a notebook run by hand, ``out_dir`` empty) the stage writes to
    ``results/<run>/scratch/<stage>/`` and says so: never silently into the recorded results, which only
    the runner writes together with their stage record.
    """

    def __init__(self, run: str, stage: Optional[str] = None, out_dir: Optional[str | Path] = None,
                 results_root: str | Path | None = None):
        self.run = run
        self.root = Path(results_root) if results_root else PROJECT_ROOT / "results"
        self.run_dir = self.root / run
        self.stage = stage
        if stage is not None:
            if out_dir:
                self.out = Path(out_dir)
            else:
                self.out = self.run_dir / "scratch" / stage
                print(f"[hcc25d] not run by the runner: this notebook writes to {self.out} (scratch); "
                      f"`python -m hcc25d run --params params/{run}.yaml --only {stage}` records results")
            self.out.mkdir(parents=True, exist_ok=True)
        else:
            self.out = None

    def stage_dir(self, stage: str) -> Path:
        """The finished output folder of another (upstream) stage."""
        d = self.run_dir / stage
        if not d.exists():
            raise FileNotFoundError(
                f"results of stage '{stage}' not found at {d}: run it first "
                f"(python -m hcc25d run --params params/{self.run}.yaml --only {stage})")
        return d

    def download(self, name: str, label: Optional[str] = None) -> str:
        """A MyST download link to ``name`` in this stage's recorded folder, for a Markdown output of the
        stage's notebook (the book copies the file and links it)."""
        final = (self.run_dir / self.stage / name).resolve()
        rel = os.path.relpath(final, (PROJECT_ROOT / "book" / "executed").resolve())
        return f"{{download}}`{label or name} <{rel}>`"

    def table(self, topic: str) -> Path:
        return self.out / f"tab-{topic}.csv"

    def figure(self, topic: str) -> Path:
        return self.out / f"fig-{topic}.png"

    def __repr__(self) -> str:  # pragma: no cover
        return f"RunPaths(run={self.run!r}, stage={self.stage!r}, out={self.out})"
