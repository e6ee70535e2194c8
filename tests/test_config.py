"""Params files: validation with one clear message naming each field."""
from pathlib import Path

import pytest

from hcc25d import config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["synthetic", "smoke", "gpu"])
def test_shipped_params_validate(name):
    p = config.load(ROOT / "params" / f"{name}.yaml")
    assert p.run == name


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


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)
