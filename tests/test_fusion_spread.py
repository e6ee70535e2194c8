"""tools/fusion_spread.py: the logit jitter, the stage check and the summary of the refits."""
import numpy as np
import pandas as pd
import pytest

from hcc25d.stats import logit
from tools import fusion_spread as fs


def _inst():
    return pd.DataFrame({"patient_id": ["a", "a", "b"], "prob": [0.2, 0.7, np.nan],
                         "prob_fold0": [0.1, 0.5, 0.9], "label": [1, 1, 0]})


def test_jitter_scales_every_probability_column_by_the_relative_amount():
    inst = _inst()
    out = fs.jitter_logits(inst, 1e-3, np.random.default_rng(0))
    assert np.isnan(out.loc[2, "prob"])  # NaN stays NaN
    assert out["label"].tolist() == inst["label"].tolist()  # other columns untouched
    for c in ("prob", "prob_fold0"):
        ok = inst[c].notna()
        before, after = logit(inst.loc[ok, c].to_numpy()), logit(out.loc[ok, c].to_numpy())
        rel = (after - before)[before != 0] / before[before != 0]
        assert np.all(np.abs(rel) < 5e-3) and np.any(rel != 0)
    assert out.loc[1, "prob_fold0"] == pytest.approx(0.5)  # a logit of 0 stays 0
    same = fs.jitter_logits(inst, 0.0, np.random.default_rng(0))
    pd.testing.assert_frame_equal(same, inst)


def test_stage_check_stops_on_another_table4(tmp_path):
    class P:
        run = "r"

        def stage_dir(self, stage):
            return tmp_path

    pd.DataFrame({"cohort": ["internal", "external"] * 2, "model": ["LR", "LR", "ExtraTrees", "ExtraTrees"],
                  "auc": [0.7, 0.6, 0.8, 0.65]}).to_csv(tmp_path / "tab-table4.csv", index=False)
    fit = pd.DataFrame({"family": ["LR", "ExtraTrees"], "AUC internal": [0.7, 0.8],
                        "AUC external": [0.6, 0.65]})
    fs.stage_check(P(), fit)  # the same AUCs: goes on
    with pytest.raises(SystemExit, match="does not give the stage's Table 4"):
        fs.stage_check(P(), fit.assign(**{"AUC external": [0.6, 0.66]}))


def test_spread_summary_counts_the_selected_family_per_kind():
    rows = []
    for kind, rep, fam_sel, ext in [("stage", 0, "ET", 0.66), ("seed", 1, "ET", 0.70), ("seed", 2, "LR", 0.62),
                                    ("jitter", 1, "ET", 0.68), ("jitter", 2, "ET", 0.64)]:
        for fam in ("ET", "LR"):
            rows.append({"run": "r", "kind": kind, "repeat": rep, "family": fam, "selected": fam == fam_sel,
                         "AUC internal": 0.8, "AUC external": ext if fam == fam_sel else 0.5})
    s = fs.spread_summary(pd.DataFrame(rows)).set_index("kind")
    assert s.loc["seed", "other family chosen"] == 0.5
    assert s.loc["jitter", "other family chosen"] == 0.0
    assert s.loc["seed", "external min"] == 0.62 and s.loc["seed", "external max"] == 0.70
    assert s.loc["jitter", "external SD"] == pytest.approx(np.std([0.68, 0.64], ddof=1))
    assert s.loc["seed", "external stage"] == 0.66 and s.loc["seed", "internal SD"] == 0.0
