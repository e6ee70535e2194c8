"""tools/fusion_screen.py: the paired summary of a fusion setting and what it refuses to screen."""
import numpy as np
import pandas as pd
import pytest

from tools import fusion_screen as fsc


def _table():
    rows = []
    for run, (st, va) in {"a": (0.60, 0.70), "b": (0.65, 0.69), "c": (0.70, 0.80)}.items():
        for setting, ext in (("stage", st), ("variant", va)):
            for fam, shift in ((fsc.PICKED, 0.0), ("LR", 0.01), ("ExtraTrees", -0.02)):
                rows.append({"run": run, "setting": setting, "family": fam, "cv AUC": 0.7,
                             "AUC internal": 0.75 + (0.01 if setting == "variant" else 0.0),
                             "AUC external": ext + shift})
    return pd.DataFrame(rows)


def test_paired_summary_gives_the_variant_minus_the_stage_per_run_with_its_standard_error():
    res = fsc.paired_summary(_table()).set_index(["family", "measure"])
    ext = res.loc[(fsc.PICKED, "AUC external")]
    d = np.array([0.10, 0.04, 0.10])
    assert ext["mean"] == pytest.approx(d.mean())
    assert ext["SE"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert ext["per run"] == "+0.100, +0.040, +0.100" and ext["runs"] == 3
    assert res.loc[(fsc.PICKED, "AUC internal"), "mean"] == pytest.approx(0.01)
    assert res.loc[(fsc.PICKED, "cv AUC"), "mean"] == pytest.approx(0.0)
    assert list(res.index.get_level_values(0).unique()) == [fsc.PICKED, "LR", "ExtraTrees"]


def test_only_signatures_settings_are_screened_by_refitting(capsys):
    with pytest.raises(SystemExit):
        fsc.main(["--params", "params/synthetic.yaml", "--set", "cnn.epochs=3", "--tag", "x"])
    assert "use tools/draws.py --set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fsc.main(["--params", "params/synthetic.yaml", "--tag", "x"])
