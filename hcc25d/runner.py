"""Stage runner: executes the stage notebooks in order with papermill.

* Each stage writes into ``results/<run>/.tmp-<stage>/``; only when its notebook finished without
  error is that folder renamed onto ``results/<run>/<stage>/``, so a failure leaves the previous
  results intact.
* A stage is skipped when its key is unchanged: the key hashes the params sections the stage reads,
  the stage notebook and the source of the package modules it uses, and a fingerprint of its upstream
  stages' output files.
* The executed notebook goes to ``results/<run>/notebooks/``; ``python -m hcc25d book`` copies a run's
  executed notebooks to ``book/executed/`` and renders the book.
* ``results/<run>/provenance.json`` records parameters, seed, package versions, git commit, device and
  the wall time of each stage.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

from . import config as _config
from .io import PROJECT_ROOT, read_json, write_json

__all__ = [
    "NOTEBOOK_DIR",
    "COMMON_MODULES",
    "KEY_PACKAGES",
    "Stage",
    "STAGES",
    "StageFailed",
    "notebook_modules",
    "NEUTRAL_SECTIONS",
    "stage_sections",
    "dir_fingerprint",
    "stage_key",
    "ensure_kernel",
    "WarningTally",
    "package_versions",
    "pre_check",
    "run",
    "toc_notebooks",
    "prepare_for_book",
    "build_book",
]

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
COMMON_MODULES = ("config", "io", "plotting", "stats")
KEY_PACKAGES = ("numpy", "pandas", "scipy", "scikit-learn", "statsmodels", "matplotlib", "seaborn",
                "SimpleITK", "pyradiomics-bhklab", "torch", "torchvision", "xgboost", "lightgbm",
                "papermill", "jupyter-book", "joblib", "grad-cam")


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    title: str
    deps: tuple = ()
    sections: tuple = ()
    data_files: tuple = ()
    #: dotted params keys holding a file path whose *content* is part of the stage's key
    param_files: tuple = ()


STAGES: list[Stage] = [
    Stage("cohort", "01_cohort.ipynb", "Cohort: Tables 1 and 2", deps=(),
          sections=("seed", "data", "cohort"),
          data_files=("data/table1_spec.yaml",), param_files=("cohort.spec", "data.manifest")),
    Stage("data", "01b_data.ipynb", "Images: twin or own data", deps=("cohort",),
          sections=("seed", "data", "cohort", "twin", "crop"),
          param_files=("data.manifest",)),
    Stage("crop25d", "02_crop25d.ipynb", "2.5D cropping", deps=("data",),
          sections=("data", "crop")),
    Stage("radiomics", "03_radiomics.ipynb", "Radiomics features", deps=("data",),
          sections=("data", "radiomics"),
          data_files=("data/ibsi_pyradiomics.yaml",), param_files=("radiomics.settings",)),
    Stage("cnn", "04_cnn.ipynb", "Slice-level CNNs", deps=("cohort", "crop25d", "data"),
          sections=("seed", "cnn")),
    Stage("cnn3d", "05_cnn3d.ipynb", "3D baseline", deps=("cohort", "crop25d", "data"),
          sections=("seed", "cnn3d")),
    Stage("signatures", "06_signatures.ipynb", "MIL fusion and signatures",
          deps=("cohort", "data", "crop25d", "radiomics", "cnn", "cnn3d"),
          sections=("seed", "signatures", "cnn", "crop")),
    Stage("evaluation", "07_evaluation.ipynb", "Evaluation", deps=("cohort", "data", "signatures"),
          sections=()),
    Stage("ablations", "08_ablations.ipynb", "Ablations", deps=("cohort", "data", "crop25d", "radiomics", "cnn", "signatures"),
          sections=("seed", "cnn", "crop", "signatures", "twin", "ablations")),
    Stage("compare", "90_paper_vs_reproduction.ipynb", "Paper vs this reproduction",
          deps=("cohort", "data", "cnn", "signatures", "evaluation"),
          sections=(), data_files=("data/paper_tables.yaml",)),
    Stage("findings", "00_findings.ipynb", "Findings",
          deps=("cohort", "data", "cnn", "signatures", "evaluation", "ablations", "compare")),
    Stage("owndata", "95_own_data_example.ipynb", "Own data: a worked example", deps=(),
          sections=()),
    Stage("provenance", "99_provenance.ipynb", "Provenance", deps=("cohort", "data", "crop25d", "radiomics", "cnn", "cnn3d", "signatures", "evaluation", "ablations", "compare", "findings", "owndata"),
          sections=()),
]


class StageFailed(RuntimeError):
    """A stage notebook raised; the message names the notebook, the cell and the error."""


# --------------------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _imports(tree, current: Optional[str] = None, pkg_dir: Optional[Path] = None) -> set:
    """The ``hcc25d`` modules an AST imports (absolute or, inside the package, relative imports)."""
    import ast

    pkg_dir = Path(pkg_dir) if pkg_dir else Path(__file__).parent
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hcc25d."):
                    found.add(a.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 and current is not None:   # from . import x / from .x import y
                if base:
                    found.add(base.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
            elif base == "hcc25d":
                found.update(a.name for a in node.names)
            elif base.startswith("hcc25d."):
                found.add(base.split(".")[1])
    return {m for m in found if (pkg_dir / f"{m}.py").exists()}


def notebook_modules(notebook: Path, pkg_dir: Optional[Path] = None) -> list[str]:
    """Every package module a stage notebook uses: what its code cells import, and what those modules
    import in turn (also inside functions), so that a stage's key cannot omit a module it runs."""
    import ast

    nb = json.loads(Path(notebook).read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    src = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!")))
    pkg = Path(pkg_dir) if pkg_dir else Path(__file__).parent
    todo = _imports(ast.parse(src), pkg_dir=pkg)
    seen: set = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo |= _imports(ast.parse((pkg / f"{m}.py").read_text()), current=m, pkg_dir=pkg) - seen
    return sorted(seen)


#: params sections that do not change a stage's results (workers, progress bars; the run's name)
NEUTRAL_SECTIONS = ("compute", "run")


def stage_sections(stage: Stage, nb_dir: Optional[Path] = None) -> list[str]:
    """The params sections in a stage's key: those it declares (read inside package functions) and
    every ``cfg.<section>`` its notebook mentions (``cfg.<method>()``: the sections that method reads,
    :data:`hcc25d.config.METHOD_SECTIONS`), except :data:`NEUTRAL_SECTIONS`."""
    nb = json.loads((Path(nb_dir or NOTEBOOK_DIR) / stage.notebook).read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    named = set(re.findall(r"\bcfg\.(\w+)", src))
    used = named & set(_config.Params.model_fields)
    used |= {s for m in named & set(_config.METHOD_SECTIONS) for s in _config.METHOD_SECTIONS[m]}
    return sorted((set(stage.sections) | used) - set(NEUTRAL_SECTIONS))


def _code_hash(stage: Stage, nb_dir: Optional[Path] = None, pkg_dir: Optional[Path] = None) -> str:
    h = hashlib.sha256()
    nb = Path(nb_dir or NOTEBOOK_DIR) / stage.notebook
    h.update(nb.read_bytes())
    pkg = Path(pkg_dir) if pkg_dir else Path(__file__).parent
    for mod in sorted(set(COMMON_MODULES) | set(notebook_modules(nb, pkg))):
        p = pkg / f"{mod}.py"
        if p.exists():
            h.update(mod.encode() + p.read_bytes())
    for rel in stage.data_files:
        p = pkg / rel
        if p.exists():
            h.update(rel.encode() + p.read_bytes())
    return h.hexdigest()


def dir_fingerprint(path: Path) -> str:
    """Hash of the relative paths, sizes and modification times of every file under ``path``."""
    h = hashlib.sha256()
    if path.exists():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _param_file_hash(params: _config.Params, dotted: str) -> Optional[str]:
    value = _config.to_dict(params)
    for k in dotted.split("."):
        value = value.get(k) if isinstance(value, dict) else None
    if not isinstance(value, str) or value == "default":
        return None
    p = Path(value) if Path(value).is_absolute() else PROJECT_ROOT / value
    return _sha(p.read_bytes()) if p.is_file() else None


def stage_key(stage: Stage, params: _config.Params, run_dir: Path, nb_dir: Optional[Path] = None) -> str:
    payload = {
        "stage": stage.name,
        "params": _config.section_dict(params, stage_sections(stage, nb_dir)),
        "run": params.run,
        "code": _code_hash(stage, nb_dir),
        "inputs": {d: dir_fingerprint(run_dir / d) for d in stage.deps},
        "files": {k: _param_file_hash(params, k) for k in stage.param_files},
    }
    return _sha(json.dumps(payload, sort_keys=True, default=str).encode())


# --------------------------------------------------------------------------------------------------
def ensure_kernel() -> str:
    """Install (once) a Jupyter kernelspec that runs *this* interpreter, and return its name.

    The name is unique to the interpreter, so a kernel of the same name elsewhere on the machine
    cannot shadow it: the notebooks always run in the environment that runs the runner.
    """
    name = "hcc25d-" + hashlib.sha1(sys.executable.encode()).hexdigest()[:8]
    kdir = Path(sys.prefix) / "share" / "jupyter" / "kernels" / name
    # log level ERROR: the kernel's start-up notice about unencrypted TCP (it listens on localhost for
    # this process only) would otherwise print once per stage
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "--IPKernelApp.log_level=ERROR",
                     "-f", "{connection_file}"],
            "display_name": f"hcc25d (Python {platform.python_version()})", "language": "python",
            "env": {"PYTHONHASHSEED": "0"}}
    kfile = kdir / "kernel.json"
    if not kfile.exists() or json.loads(kfile.read_text()) != spec:
        kdir.mkdir(parents=True, exist_ok=True)
        kfile.write_text(json.dumps(spec, indent=1))
    return name


class WarningTally:
    """A stage's stderr stream: progress bars and errors pass through to the terminal; Python warnings
    (``file:line: SomeWarning: message`` and the source line under it) are counted instead of printed,
    so a stage shows one summary line rather than thousands of repeats."""

    _WARN = re.compile(r"^(?:.*?:\d+: )?(\w*Warning): (.*)$")

    def __init__(self, out=None):
        self.out = out if out is not None else sys.stderr
        self.counts: dict = {}
        self._buf = ""
        self._skip_source = False

    def write(self, text: str) -> int:
        self._buf += text
        while True:
            cut = [i for i in (self._buf.find("\n"), self._buf.find("\r")) if i >= 0]
            if not cut:
                break
            i = min(cut)
            line, end, self._buf = self._buf[:i], self._buf[i], self._buf[i + 1:]
            self._line(line, end)
        return len(text)

    def _line(self, line: str, end: str) -> None:
        m = self._WARN.match(line.strip())
        if m:
            key = f"{m.group(1)}: {m.group(2)[:90]}"
            self.counts[key] = self.counts.get(key, 0) + 1
            self._skip_source = True
            return
        if self._skip_source and line.startswith((" ", "\t")) and end == "\n":
            self._skip_source = False
            return
        self._skip_source = False
        self.out.write(line + end)

    def flush(self) -> None:
        if self._buf:
            self._line(self._buf, "")
            self._buf = ""
        self.out.flush()

    def summary(self) -> str:
        n = sum(self.counts.values())
        if not n:
            return ""
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:3]
        return (f"{n} warning(s), {len(self.counts)} distinct; most frequent: "
                + "; ".join(f"{k} (× {v})" for k, v in top))


def _git_commit() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=PROJECT_ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> Optional[str]:
    """The processor's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` knows, or None)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _simd() -> dict:
    """The vector instruction sets the numerical libraries use on this CPU: numpy's dispatched targets
    that the CPU supports, and PyTorch's CPU capability. Two CPUs that differ here can round differently
    in the last bits, so a run is bit-identical only on the same kind of machine."""
    out = {}
    try:
        from numpy._core import _multiarray_umath as um

        out["numpy_simd"] = " ".join(f for f in um.__cpu_dispatch__ if um.__cpu_features__.get(f)) or "baseline"
    except (ImportError, AttributeError):  # another numpy layout: leave it out
        pass
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch missing or too old to say
        pass
    return out


def _device() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
            "cpus": os.cpu_count(), **_simd()}
    try:
        import torch

        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken: the device is the CPU
        info["cuda"] = False
    return info


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_manager(log_path: Path):
    """The kernel manager class of one stage's run: its kernel writes its own stderr to ``log_path``.

    ipykernel forwards all that the kernel and the worker processes it starts (joblib, Dask) write to
    their stderr into the notebook, and from there through :class:`WarningTally` to the terminal; it
    also echoes the same bytes to the stderr it was started with, which would print every worker's
    warnings a second time, untallied. The file keeps what only that stream carries (a kernel that
    dies writes its last words there), and a failed stage names it."""
    from jupyter_client import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log_path, "wb") as err:  # the kernel keeps its own copy of the descriptor
                kw["stderr"] = err
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return StageKernelManager


def _kernel_tail(log_path: Optional[Path], n: int = 8) -> str:
    """The last ``n`` lines of a stage kernel's own stderr, for a failure message ('' if none)."""
    if log_path is None or not log_path.exists():
        return ""
    lines = log_path.read_text(errors="replace").strip().splitlines()
    if not lines:
        return ""
    return (f"  the kernel's own stderr ({log_path}), last lines:\n    "
            + "\n    ".join(line[:200] for line in lines[-n:]) + "\n")


def _failure_message(stage: Stage, exc: Exception, failed_nb: Path, kernel_log: Optional[Path] = None) -> str:
    cell = getattr(exc, "cell_index", None)
    count = getattr(exc, "exec_count", None)
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = _ANSI.sub("", str(getattr(exc, "evalue", exc)))
    source = getattr(exc, "source", "") or ""
    where = f"cell {cell}" if cell is not None else "a cell"
    if count is not None:
        where += f" (In [{count}])"
    first = source.strip().splitlines()[:3]
    src = ("\n    " + "\n    ".join(first)) if first else ""
    return (f"stage '{stage.name}' failed in notebooks/{stage.notebook}, {where}:{src}\n"
            f"  {ename}: {evalue}\n"
            f"  executed notebook with the full traceback: {failed_nb}\n"
            + _kernel_tail(kernel_log)
            + "  earlier results of this stage were left as they were.")


def _select(stages: list[Stage], from_stage: Optional[str], only: Optional[Iterable[str]]) -> list[Stage]:
    names = [s.name for s in stages]
    if only:
        only = list(only)
        bad = [o for o in only if o not in names]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; stages are: {', '.join(names)}")
        return [s for s in stages if s.name in only]
    if from_stage:
        if from_stage not in names:
            raise ValueError(f"unknown stage {from_stage!r}; stages are: {', '.join(names)}")
        return stages[names.index(from_stage):]
    return stages


def _rel(path: Path) -> str:
    """A path as the notebooks see it: relative to the project root (their working directory) when inside it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


def _log(msg: str) -> None:
    print(f"[hcc25d] {msg}", flush=True)


def pre_check(params_file: str | Path, run_dir: Path) -> None:
    """The check of :mod:`hcc25d.check` before the first stage; raises :class:`~hcc25d.check.CheckFailed`
    listing every problem. A passed check is remembered in ``run_dir/.check.json`` (keyed on the params,
    the manifest and each listed file's size and modification time) and not repeated while nothing changed."""
    from .check import CheckFailed, check, check_stamp

    stamp = check_stamp(params_file)
    record = run_dir / ".check.json"
    if stamp is not None and record.exists() and read_json(record).get("stamp") == stamp:
        _log("check: manifest and files unchanged since the last passed check")
        return
    _log("check: params" + (", manifest and every listed file (read in full)" if stamp else ""))
    report = check(params_file)
    if not report.ok:
        raise CheckFailed(report.text())
    for note in report.notes:
        _log(f"check: {note}")
    if stamp is not None:
        write_json({"stamp": stamp, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, record)


def run(params_file: str | Path, from_stage: Optional[str] = None, only: Optional[Iterable[str]] = None,
        force: bool = False, results_root: Optional[Path] = None, stages: Optional[list[Stage]] = None,
        notebook_dir: Optional[Path] = None) -> dict:
    """Run the stages of a params file; returns ``{stage: "ran" | "skipped"}``.

    Raises :class:`StageFailed` (after saving the failed notebook) when a stage notebook raises.
    """
    import papermill as pm

    params_file = Path(params_file)
    params = _config.load(params_file)
    all_stages = stages if stages is not None else STAGES
    nb_dir = Path(notebook_dir) if notebook_dir else NOTEBOOK_DIR
    root = Path(results_root) if results_root else PROJECT_ROOT / "results"
    run_dir = root / params.run
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "notebooks").mkdir(exist_ok=True)
    pre_check(params_file, run_dir)
    kernel = ensure_kernel()
    prov_path = run_dir / "provenance.json"
    prov = read_json(prov_path) if prov_path.exists() else {}
    prov.update({
        "run": params.run, "params_file": str(params_file), "params": _config.to_dict(params),
        "seed": params.seed, "packages": package_versions(), "git": _git_commit(), "device": _device(),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    prov.setdefault("stages", {})
    status: dict[str, str] = {}
    for stage in _select(all_stages, from_stage, only):
        key = stage_key(stage, params, run_dir, nb_dir)
        final = run_dir / stage.name
        record_path = final / ".stage.json"
        executed = run_dir / "notebooks" / stage.notebook
        if not force and record_path.exists() and executed.exists():
            if read_json(record_path).get("key") == key:
                _log(f"{stage.name}: unchanged, skipped")
                status[stage.name] = "skipped"
                continue
        _log(f"{stage.name}: running notebooks/{stage.notebook}")
        tmp = run_dir / f".tmp-{stage.name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        tmp_nb = run_dir / "notebooks" / f".running-{stage.notebook}"
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tally = WarningTally()
        kernel_log = run_dir / "notebooks" / f".{Path(stage.notebook).stem}.kernel.log"
        try:
            pm.execute_notebook(
                str(nb_dir / stage.notebook), str(tmp_nb),
                parameters={"params_file": _rel(params_file), "out_dir": _rel(tmp), "results_root": _rel(root)},
                kernel_name=kernel, cwd=str(PROJECT_ROOT), progress_bar=False,
                log_output=False, stdout_file=None, stderr_file=tally,
                kernel_manager_class=kernel_manager(kernel_log),
            )
        except Exception as exc:  # papermill's PapermillExecutionError, a dead kernel, ...
            tally.flush()
            failed_nb = run_dir / "notebooks" / f"{Path(stage.notebook).stem}.failed.ipynb"
            if tmp_nb.exists():
                os.replace(tmp_nb, failed_nb)
            shutil.rmtree(tmp, ignore_errors=True)
            prov["stages"].setdefault(stage.name, {})["last_failure"] = {
                "at": started, "error": f"{getattr(exc, 'ename', type(exc).__name__)}: "
                                        f"{_ANSI.sub('', str(getattr(exc, 'evalue', exc)))[:500]}"}
            write_json(prov, prov_path)
            raise StageFailed(_failure_message(stage, exc, failed_nb, kernel_log)) from None
        wall = time.perf_counter() - t0
        tally.flush()
        record = {"stage": stage.name, "key": key, "started": started, "wall_s": round(wall, 2),
                  "notebook": stage.notebook, "warnings": dict(sorted(tally.counts.items()))}
        extra = tmp / "stage_provenance.json"
        if extra.exists():
            record["notes"] = read_json(extra)
        write_json(record, tmp / ".stage.json")
        old = run_dir / f".old-{stage.name}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp_nb, executed)
        failed_nb = run_dir / "notebooks" / f"{Path(stage.notebook).stem}.failed.ipynb"
        if failed_nb.exists():
            failed_nb.unlink()
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        for f in final.glob("fig-*"):
            shutil.copy2(f, figs / f.name)
        prov["stages"][stage.name] = record
        write_json(prov, prov_path)
        _log(f"{stage.name}: done in {wall:.1f} s"
             + (f" · {tally.summary()} (all in provenance.json)" if tally.counts else ""))
        status[stage.name] = "ran"
    write_json(prov, prov_path)
    return status


# --------------------------------------------------------------------------------------------------
def toc_notebooks() -> list[str]:
    """Executed-notebook files the book's table of contents expects (``book/executed/*.ipynb``)."""
    import yaml

    toc = yaml.safe_load((PROJECT_ROOT / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("book/executed/"):
                files.append(f.split("/")[-1] + ".ipynb")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return files


def prepare_for_book(src: Path, dst: Path) -> None:
    """Copy an executed notebook for the book, hiding the runner's plumbing: the parameters cell and
    papermill's injected-parameters cell are removed from the page (the run's parameters are stated on
    the provenance page), the set-up cell (imports, loading) is collapsed behind a toggle, and each
    figure's alt text (recorded by :func:`hcc25d.plotting.savefig` in the output's metadata) is put on
    its image."""
    nb = json.loads(Path(src).read_text())
    first_code = True
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags):
            tags.append("remove-cell")
            continue
        if first_code:
            first_code = False
            if "hide-input" not in tags:
                tags.append("hide-input")
        alts = [o.get("metadata", {}).get("image/png", {}).get("alt") for o in cell.get("outputs", [])]
        alts = [a for a in alts if a]
        if alts:
            cell["metadata"].setdefault("mystnb", {}).setdefault("image", {})["alt"] = alts[-1]
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False))


def build_book(run_name: str, strict: bool = True) -> Path:
    """Copy a run's executed notebooks to ``book/executed/`` and render the book to ``_build/html``."""
    src = PROJECT_ROOT / "results" / run_name / "notebooks"
    dst = PROJECT_ROOT / "book" / "executed"
    missing = [nb for nb in toc_notebooks() if not (src / nb).exists()]
    if missing:
        raise FileNotFoundError(
            f"run '{run_name}' has no executed notebook for {', '.join(missing)} in {src}: "
            f"run `python -m hcc25d run --params params/{run_name}.yaml` first")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for nb in toc_notebooks():
        prepare_for_book(src / nb, dst / nb)
    gen = PROJECT_ROOT / "book" / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "parameters.md").write_text(_config.reference_markdown())
    figs = PROJECT_ROOT / "results" / run_name / "figures"
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(PROJECT_ROOT)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    _log(f"rendering the book for run '{run_name}'")
    env = dict(os.environ, HCC25D_RUN=run_name, HCC25D_FIGURES=str(figs))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env)
    if (PROJECT_ROOT / "_build").exists():  # for benchmarks/bench_book.py
        (PROJECT_ROOT / "_build" / ".render_seconds").write_text(f"{time.perf_counter() - t0:.1f}\n")
    if proc.returncode != 0:
        raise RuntimeError("jupyter-book build failed (warnings are errors); see the messages above")
    out = PROJECT_ROOT / "_build" / "html" / "index.html"
    _log(f"book: {out}")
    return out
