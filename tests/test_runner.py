"""The stage runner: skipping, reruns on change, failure reporting, atomic stage outputs; the smoke chain."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hcc25d import config, runner
from tools.mknb import write

ROOT = Path(__file__).resolve().parent.parent

WRITE_NB = [
    ("params", 'params_file = ""\nout_dir = ""\nresults_root = ""\noverrides = {}'),
    ("code", "import hcc25d.config, pathlib\ncfg = hcc25d.config.load(params_file)\n"
             "pathlib.Path(out_dir, 'seed.txt').write_text(str(cfg.seed))"),
]
READ_NB = [
    ("params", 'params_file = ""\nout_dir = ""\nresults_root = ""\noverrides = {}'),
    ("code", "import pathlib\nseed = pathlib.Path(results_root, 'r', 'a', 'seed.txt').read_text()\n"
             "pathlib.Path(out_dir, 'copy.txt').write_text(seed)"),
    ("code", "if seed == '13':\n    raise ValueError('seed 13 is unlucky')"),
]


@pytest.fixture()
def setup(tmp_path):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    write(nbdir / "a.ipynb", WRITE_NB)
    write(nbdir / "b.ipynb", READ_NB)
    stages = [runner.Stage("a", "a.ipynb", "A", sections=("seed",)),
              runner.Stage("b", "b.ipynb", "B", deps=("a",))]
    params = tmp_path / "r.yaml"

    def go(seed, **kw):
        params.write_text(yaml.safe_dump({"run": "r", "seed": seed}))
        return runner.run(params, results_root=tmp_path / "results", stages=stages, notebook_dir=nbdir, **kw)

    return go, tmp_path / "results" / "r", nbdir


def test_skip_rerun_and_force(setup):
    go, run_dir, nbdir = setup
    assert go(1) == {"a": "ran", "b": "ran"}
    assert (run_dir / "b" / "copy.txt").read_text() == "1"
    assert go(1) == {"a": "skipped", "b": "skipped"}
    # a parameter the stage reads changed: it reruns, and so does its dependant
    assert go(2) == {"a": "ran", "b": "ran"}
    assert (run_dir / "b" / "copy.txt").read_text() == "2"
    assert go(2, only=["b"], force=True) == {"b": "ran"}
    # notebook (code) change reruns the stage
    write(nbdir / "b.ipynb", READ_NB + [("code", "x = 1")])
    assert go(2) == {"a": "skipped", "b": "ran"}
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["seed"] == 2 and set(prov["stages"]) == {"a", "b"}
    assert prov["stages"]["a"]["wall_s"] >= 0 and "numpy" in prov["packages"]
    # the device record says which CPU and vector instructions computed the numbers
    dev = prov["device"]
    assert dev["cpus"] >= 1 and "cpu" in dev
    import torch

    assert dev["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert dev["numpy_simd"] and isinstance(dev["numpy_simd"], str)


def test_failure_names_notebook_cell_and_error_and_keeps_results(setup):
    go, run_dir, _ = setup
    go(1)
    with pytest.raises(runner.StageFailed) as err:
        go(13)
    msg = str(err.value)
    assert "b.ipynb" in msg and "cell" in msg and "ValueError: seed 13 is unlucky" in msg
    assert (run_dir / "notebooks" / "b.failed.ipynb").exists()
    # stage b's earlier result is intact, no temporary folder is left behind
    assert (run_dir / "b" / "copy.txt").read_text() == "1"
    assert not list(run_dir.glob(".tmp-*"))
    # after fixing the input the stage runs again
    assert go(3)["b"] == "ran"


def test_unknown_stage(setup):
    go, _, _ = setup
    with pytest.raises(ValueError, match="unknown stage"):
        go(1, only=["zzz"])


def test_cli_reports_bad_params(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\ncompute: {n_jobs: many}\nfoo: 1\n")
    proc = subprocess.run([sys.executable, "-m", "hcc25d", "run", "--params", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "compute.n_jobs: expected an integer" in proc.stderr and "foo: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_toc_notebooks_exist_as_templates():
    for nb in runner.toc_notebooks():
        assert (ROOT / "notebooks" / nb).exists(), nb
    assert {s.notebook for s in runner.STAGES} >= set(runner.toc_notebooks())


def test_notebook_templates_follow_house_rules():
    import re

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        ids = [c.get("id") for c in cells]  # nbformat 4.5: every cell has its own id
        assert all(ids) and len(set(ids)) == len(ids), (nb.name, "cell ids missing or repeated", ids)
        code = [c for c in cells if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), nb
        for c in code:
            assert not c.get("outputs"), nb
            src = "".join(c["source"])
            assert not re.search(r"^\s*(def|class)\s", src, re.M), nb
            wide = [ln for ln in src.splitlines() if len(ln) > 88]
            assert not wide, (nb.name, "code lines fit the book's column (88 characters)", wide[:2])
            # cells call the package: no loop of more than a couple of lines (that belongs in a function)
            tree = ast.parse("\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))))
            long = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))
                    and n.end_lineno - n.lineno > 2]
            assert not long, (nb.name, long, src[:200])


def test_plotting_draws_and_computes_nothing_statistical():
    """plotting imports nothing from stats and no fitting library: figures draw computed results."""
    tree = ast.parse((ROOT / "hcc25d" / "plotting.py").read_text())
    imported = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            imported.add(("." * n.level) + (n.module or ""))
        elif isinstance(n, ast.Import):
            imported.update(a.name for a in n.names)
    banned = {".stats", ".evaluation", "sklearn", "statsmodels", "scipy.stats", "hcc25d.stats"}
    assert not {m for m in imported if any(m == b or m.startswith(b + ".") for b in banned)}, imported


def test_every_name_a_notebook_uses_is_exported():
    """`__all__` is true: every `module.name` a notebook uses from an hcc25d module is exported by it."""
    import importlib
    import re

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        src = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        aliases = {m: m for m in re.findall(r"\bhcc25d\.(\w+)", src)}
        aliases.update({a: m for m, a in re.findall(r"hcc25d\.(\w+) as (\w+)", src)})
        aliases.update({a: m for m, a in re.findall(r"from hcc25d import (\w+) as (\w+)", src)})
        aliases.update({m: m for m in re.findall(r"from hcc25d import (\w+)\s*$", src, re.M)})
        for alias, mod in aliases.items():
            if not (ROOT / "hcc25d" / f"{mod}.py").exists():
                continue
            module = importlib.import_module(f"hcc25d.{mod}")
            for name in set(re.findall(rf"(?<![\w./\"'`]){re.escape(alias)}\.(\w+)", src)):
                if name.startswith("_") or name in {"py"}:
                    continue
                assert name in getattr(module, "__all__", []), f"{nb.name}: hcc25d.{mod}.{name} not in __all__"


def test_environment_yml_mirrors_lock():
    from tools.sync_environment import render

    assert (ROOT / "environment.yml").read_text() == render()
    lock = (ROOT / "requirements.lock").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "pyradiomics-bhklab==", "jupyter-book==1."):
        assert pin in lock


@pytest.mark.slow
def test_smoke_chain(tmp_path):
    """The real stage notebooks on the smoke profile, into a scratch results folder (the radiomics
    reference validations have their own tests and are switched off here to save time)."""
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    p.setdefault("radiomics", {})["validate"] = False
    p["ablations"] = {"variants": ["2d"]}  # one retrained variant and the negative control
    params = tmp_path / "smoke.yaml"
    params.write_text(yaml.safe_dump(p))
    status = runner.run(params, results_root=tmp_path)
    assert set(status.values()) == {"ran"}
    run_dir = tmp_path / "smoke"
    assert (run_dir / "cohort" / "patients.csv").exists()
    assert (run_dir / "figures" / "fig-cohort-correlation.png").exists()
    for nb in runner.toc_notebooks():
        assert (run_dir / "notebooks" / nb).exists()
    sigs = __import__("pandas").read_csv(run_dir / "signatures" / "signatures.csv")
    assert {"Clinical", "DL_2.5D", "DL_3D", "Combined"} <= set(sigs.columns) and sigs[["Clinical", "Combined"]].notna().all().all()
    assert (run_dir / "evaluation" / "tab-table5.csv").exists()
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["stages"]["cnn"]["notes"]["imagenet_weights_used"] is False  # offline: said, not hidden
    again = runner.run(params, results_root=tmp_path)
    assert set(again.values()) == {"skipped"}
    # the same images as own data, through a manifest (pseudonymised): cohort, images and cropping
    own = dict(p, run="own", data={"source": "manifest", "manifest": str(run_dir / "data" / "manifest.csv"),
                                   "pseudonymise": True, "salt": "x"})
    own_params = tmp_path / "own.yaml"
    own_params.write_text(yaml.safe_dump(own))
    st = runner.run(own_params, results_root=tmp_path, only=["cohort", "data", "crop25d"])
    assert set(st.values()) == {"ran"}
    cases = __import__("pandas").read_csv(tmp_path / "own" / "data" / "cases.csv")
    assert cases["patient_id"].str.startswith("p-").all() and len(cases) == len(sigs)
    assert not (tmp_path / "own" / "data" / "oracle.csv").exists()


def test_stage_key_follows_what_the_notebook_imports_transitively(tmp_path):
    """The cohort notebook imports manifest, which imports images: editing images.py must change the
    cohort stage's key; editing a module it never reaches must not."""
    pkg = tmp_path / "hcc25d"
    shutil.copytree(ROOT / "hcc25d", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cohort = next(s for s in runner.STAGES if s.name == "cohort")
    assert "images" in runner.notebook_modules(ROOT / "notebooks" / cohort.notebook, pkg)
    before = runner._code_hash(cohort, pkg_dir=pkg)
    (pkg / "cnn3d.py").write_text((pkg / "cnn3d.py").read_text() + "\n# unrelated edit\n")
    assert runner._code_hash(cohort, pkg_dir=pkg) == before
    (pkg / "images.py").write_text((pkg / "images.py").read_text() + "\n# edit\n")
    assert runner._code_hash(cohort, pkg_dir=pkg) != before


def test_every_module_a_notebook_names_is_in_its_key():
    import re

    for s in runner.STAGES:
        nb = json.loads((ROOT / "notebooks" / s.notebook).read_text())
        src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        named = set(re.findall(r"\bhcc25d\.(\w+)", src)) | set(re.findall(r"from hcc25d import (\w+)", src))
        named = {m for m in named if (ROOT / "hcc25d" / f"{m}.py").exists()}
        assert named <= set(runner.notebook_modules(ROOT / "notebooks" / s.notebook)), s.name
        used = set(re.findall(r"\bcfg\.(\w+)", src)) - set(runner.NEUTRAL_SECTIONS)
        methods = used & set(config.METHOD_SECTIONS)  # a helper method counts as the sections it reads
        used = (used - methods) | {x for m in methods for x in config.METHOD_SECTIONS[m]}
        assert used <= set(runner.stage_sections(s)), s.name


def test_a_helper_method_puts_the_sections_it_reads_into_the_key(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["seed = cfg.cnn_seed()\n", "x = cfg.crop.image_size\n"]}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    stage = runner.Stage("x", "x.ipynb", "X")
    assert runner.stage_sections(stage, tmp_path) == ["cnn", "crop", "seed"]
    assert set(config.METHOD_SECTIONS) <= {m for m in dir(config.Params) if callable(getattr(config.Params, m))}


def test_hand_run_writes_to_scratch_not_into_recorded_results(tmp_path, capsys):
    from hcc25d.io import RunPaths

    p = RunPaths("r", "cnn", None, tmp_path)
    assert p.out == tmp_path / "r" / "scratch" / "cnn" and p.out.is_dir()
    assert not (tmp_path / "r" / "cnn").exists()
    assert "scratch" in capsys.readouterr().out
    assert RunPaths("r", "cnn", tmp_path / "x", tmp_path).out == tmp_path / "x"


def test_warning_tally_counts_warnings_and_passes_progress_through():
    import io

    out = io.StringIO()
    t = runner.WarningTally(out)
    t.write("/x/statsmodels/base/model.py:607: ConvergenceWarning: Maximum Likelihood optimization failed\n")
    t.write("  warnings.warn(\"Maximum\", ConvergenceWarning)\n")
    for _ in range(3):
        t.write("/x/a.py:1: UserWarning: something odd\n  warn()\n")
    t.write("cnn fold 1:  50%|#####     | 5/10\r")
    t.write("cnn fold 1: 100%|##########| 10/10\n")
    t.write("Traceback (most recent call last):\n")
    t.flush()
    text = out.getvalue()
    assert "Warning" not in text and "warn(" not in text
    assert "5/10\r" in text and "10/10\n" in text and "Traceback" in text
    assert t.counts == {"ConvergenceWarning: Maximum Likelihood optimization failed": 1,
                        "UserWarning: something odd": 3}
    assert t.summary().startswith("4 warning(s), 2 distinct")


def test_a_worker_processs_warning_is_tallied_once_not_echoed(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # ipykernel does not capture a kernel's fds under pytest
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    write(nbdir / "w.ipynb", [
        ("params", 'params_file = ""\nout_dir = ""\nresults_root = ""\noverrides = {}'),
        ("code", "import subprocess, sys\nsubprocess.run([sys.executable, '-c', "
                 "'import warnings; warnings.warn(\"from a worker\")'], check=True)\n"
                 "import time\ntime.sleep(1)  # ipykernel reads the worker's pipe in a thread of its own"),
    ])
    params = tmp_path / "r.yaml"
    params.write_text(yaml.safe_dump({"run": "r", "seed": 1}))
    runner.run(params, results_root=tmp_path / "results", stages=[runner.Stage("w", "w.ipynb", "W")],
               notebook_dir=nbdir)
    err = capfd.readouterr().err
    assert "from a worker" not in err.replace("UserWarning: from a worker (× 1)", "")  # only the summary
    prov = json.loads((tmp_path / "results" / "r" / "provenance.json").read_text())
    assert prov["stages"]["w"]["warnings"] == {"UserWarning: from a worker": 1}
    assert (tmp_path / "results" / "r" / "notebooks" / ".w.kernel.log").exists()


def test_a_failure_quotes_the_kernels_own_stderr(tmp_path):
    log = tmp_path / ".b.kernel.log"
    stage = runner.Stage("b", "b.ipynb", "B")
    assert "kernel's own stderr" not in runner._failure_message(stage, RuntimeError("x"), tmp_path / "f", log)
    log.write_text("\n".join(f"line {i}" for i in range(20)) + "\nFatal Python error: Segmentation fault\n")
    msg = runner._failure_message(stage, RuntimeError("Kernel died"), tmp_path / "f", log)
    assert "Fatal Python error: Segmentation fault" in msg and "line 19" in msg and "line 5\n" not in msg
    assert msg.index("Segmentation") < msg.index("earlier results")


def test_sources_compile_without_escape_warnings():
    """Backslashes in docstrings (LaTeX) must sit in raw strings: Python 3.12 warns about invalid escapes
    and ``\\f``/``\\t`` silently become a form feed and a tab in the rendered formula."""
    import warnings

    files = sorted(f for d in ("hcc25d", "benchmarks", "tools", "tests") for f in (ROOT / d).glob("*.py"))
    assert len(files) > 20
    bad = []
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)  # Python >= 3.12
            warnings.simplefilter("error", DeprecationWarning)  # Python 3.11
            try:
                compile(f.read_text(), str(f), "exec")
            except SyntaxError as e:
                bad.append(f"{f.name}: {e}")
    assert not bad, bad
