"""Params files: validation with one clear message naming each field."""
import re
from pathlib import Path

import pytest

from hcc25d import config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_shipped_params_validate(name):
    p = config.load(ROOT / "params" / f"{name}.yaml")
    assert p.run == name


def test_the_training_x3_profile_differs_from_the_default_run_in_its_cohort_and_ablations_only():
    base = config.to_dict(config.load(ROOT / "params" / "synthetic.yaml"))
    x3 = config.to_dict(config.load(ROOT / "params" / "training-x3.yaml"))
    changed = {k for k in base if base[k] != x3[k]}
    assert changed == {"run", "description", "cohort", "ablations"}
    assert x3["cohort"] == {**base["cohort"], "training_scale": 3}


def test_the_gpu_smoke_profile_is_the_gpu_profile_with_less_work():
    def leaves(d, pre=""):
        out = {}
        for k, v in d.items():
            out.update(leaves(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
        return out

    gpu = leaves(config.to_dict(config.load(ROOT / "params" / "gpu.yaml")))
    smoke = leaves(config.to_dict(config.load(ROOT / "params" / "gpu-smoke.yaml")))
    changed = {k for k in gpu if gpu[k] != smoke[k]}
    reduced = re.findall(r"^\s*(\w+):.*# reduced", (ROOT / "params" / "gpu-smoke.yaml").read_text(), re.M)
    assert {k.split(".")[-1] for k in changed} - {"run", "description"} <= set(reduced) | {
        "matrix", "spacing_xy", "slice_mm", "extent_z_mm", "n_estimators", "max_depth", "learning_rate",
        "num_leaves"}  # the smoke twin's grid and the smoke grids, marked on their sections
    assert {k.split(".")[0] for k in changed} <= {"run", "description", "cohort", "twin", "cnn", "cnn3d",
                                                 "compute", "signatures"}
    for key in ("crop.image_size", "cnn.backbones", "cnn.weights", "cnn.loss", "cnn.size_adjust",
                "cnn.arterial_excess", "cnn.repeats", "cnn3d.arterial_excess", "signatures.size_adjust"):
        assert smoke[key] == gpu[key], key  # what makes the gpu profile the paper's way is kept


def test_unknown_key_and_wrong_type_reported_together():
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"run": "x", "seed": "abc", "cohort": {"specc": "default"}, "compute": {"n_jobs": 1.5}})
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "seed: expected an integer, got 'abc'" in msg
    assert "cohort.specc: unknown key" in msg and "spec" in msg
    assert "compute.n_jobs: expected an integer" in msg


def test_choice_and_bool():
    with pytest.raises(config.ConfigError, match=r"data.source: 'database' is not one of"):
        config.from_dict({"data": {"source": "database"}})
    with pytest.raises(config.ConfigError, match="compute.progress: expected true or false"):
        config.from_dict({"compute": {"progress": "yes"}})


def test_overrides_and_defaults():
    p = config.from_dict({"run": "x"}, overrides={"compute.n_jobs": 1, "seed": 3})
    assert p.compute.n_jobs == 1 and p.seed == 3 and p.data.source == "twin"
    assert config.to_dict(p)["compute"]["n_jobs"] == 1


def test_the_networks_seed_is_the_runs_unless_cnn_seed_says_otherwise(monkeypatch):
    p = config.from_dict({"run": "x", "seed": 11})
    assert p.cnn.seed is None and p.cnn_seed() == 11
    q = config.from_dict({"run": "x", "seed": 11}, overrides={"cnn.seed": 5})
    assert q.cnn_seed() == 5 and q.seed == 11  # the twin keeps its draw; only the networks are reseeded
    # the ablations retrain their networks with the same seed as the CNN stage (and its reseeded variant
    # with another one)
    import numpy as np
    import pandas as pd

    from hcc25d import ablation, cnn
    from hcc25d.crop25d import Bags

    seen = []
    monkeypatch.setattr(cnn, "prepare_input", lambda raw, C, ch, ref=None: (raw, None, None))
    monkeypatch.setattr(ablation, "subset_bags", lambda bags, variant, channels: bags)
    monkeypatch.setattr(cnn, "crossfit_predict", lambda sub, make, C, seed, **kw: (seen.append(seed), 0, 0, 0))
    raw = Bags(np.zeros((1, 3, 4, 4), np.float16), pd.DataFrame({"patient_id": ["a"]}),
               ("arterial", "plain", "portal"))
    full = next(v for v in ablation.VARIANTS if v.reseed == 0)
    again = next(v for v in ablation.VARIANTS if v.reseed == 1)
    for params in (p, q):
        for v in (full, again):
            ablation.retrain_cnn(raw, v, params, {}, "litecnn", progress=False)
    assert seen[0] == 11 and seen[2] == 5 and seen[1] != 11 and seen[3] != 5 and seen[1] - 11 == seen[3] - 5


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)


def test_acceptance_four_bad_fields_fail_at_load_before_any_stage(tmp_path):
    import subprocess
    import sys
    import time

    import yaml

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"run": "bad", "cnn": {"selection": "densenet999", "epochs": -3},
                                 "compute": {"n_jobs": 0}, "data": {"pseudonymise": True}}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hcc25d", "run", "--params", str(p)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode != 0 and time.perf_counter() - t0 < 20
    for field in ("cnn.selection", "cnn.epochs", "compute.n_jobs", "data.salt"):
        assert f"  - {field}:" in proc.stderr, field
    assert "running notebooks" not in proc.stdout


@pytest.mark.parametrize("mapping,expected", [
    ({"cnn": {"backbones": ["resnet18", "foonet"]}}, "cnn.backbones: unknown backbone(s) 'foonet'"),
    ({"signatures": {"models": ["lr", "rf"], "dl25d_model": "xgb"}}, "signatures.dl25d_model: 'xgb' is neither"),
    ({"signatures": {"models": ["svm"]}}, "signatures.models[0]: 'svm' is not one of"),
    ({"data": {"phases": ["portal"]}}, "ablations.variants: 'arterial' (one phase) needs the arterial phase"),
    ({"data": {"source": "manifest"}}, "data.manifest: required"),
    ({"data": {"source": "manifest", "manifest": "m.csv"}, "cohort": {"training_scale": 3}},
     "cohort.training_scale: only for the synthetic twin"),
    ({"cohort": {"training_scale": 0}}, "cohort.training_scale: must be ≥ 1"),
    ({"cnn": {"val_fraction": 1.0}}, "cnn.val_fraction: must be < 1"),
    ({"cnn3d": {"folds": 1}}, "cnn3d.folds: must be ≥ 2"),
    ({"cnn": {"lr": "1e-3"}}, "write 1.0e-3"),
    ({"crop": {"channels": ["portal", "x"]}}, "crop.channels[1]: 'x' is not one of"),
])
def test_ranges_choices_and_cross_field_rules(mapping, expected):
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(mapping)
    assert expected in str(err.value)


def test_config_is_frozen_and_typed():
    p = config.from_dict({"crop": {"axial_offsets": [0, 1, -1]}})
    assert p.crop.axial_offsets == (0, 1, -1)
    with pytest.raises(Exception):
        p.crop.image_size = 3
    assert isinstance(p.cnn, config.TrainCfg)


def test_defaults_print_round_trips_and_documents_every_field():
    import yaml

    text = config.defaults_yaml()
    assert config.to_dict(config.from_dict(yaml.safe_load(text))) == config.to_dict(config.Params())
    rows = config.reference_rows()
    assert len(rows) > 80
    undocumented = [r["parameter"] for r in rows if not r["meaning"]]
    assert not undocumented, undocumented
    md = config.reference_markdown()
    assert "| `cnn.epochs` | `16` | integer; ≥ 1 |" in md
    # the page is Markdown: docstring roles and RST literals are turned into inline code, not printed raw
    assert not re.search(r":[a-z]+:`", md) and "``" not in md
    assert "(see `hcc25d.cnn`)" in md and "`hcc25d.mil.harmonise_centres`" in md


def test_docstring_roles_become_inline_code():
    assert config._markdown_roles(":func:`~hcc25d.mil.x` and ``true``") == "`hcc25d.mil.x` and `true`"


def test_arterial_excess_is_refused_for_torchvision_backbones():
    with pytest.raises(config.ConfigError, match="arterial_excess"):
        config.from_dict({"cnn": {"backbones": ["litecnn", "resnet50"], "arterial_excess": True}})
    p = config.from_dict({"cnn": {"backbones": ["resnet50"], "arterial_excess": False}})
    assert p.cnn.arterial_excess is False
    assert config.load(ROOT / "params" / "gpu.yaml").cnn.arterial_excess is False  # the paper's input
    assert config.load(ROOT / "params" / "synthetic.yaml").cnn.arterial_excess is True


def test_arterial_excess_needs_the_three_phases():
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"data": {"phases": ["arterial", "portal"]}})
    assert "cnn.arterial_excess" in str(err.value) and "cnn3d.arterial_excess" in str(err.value)
    ok = config.from_dict({"data": {"phases": ["arterial", "portal"]}, "crop": {"channels": ["arterial", "portal"]},
                           "cnn": {"arterial_excess": False}, "cnn3d": {"arterial_excess": False},
                           "ablations": {"variants": ["2d"]}})
    assert ok.cnn.arterial_excess is False
