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
    for kind, rep, fam_sel, ext, avg in [("stage", 0, "ET", 0.66, 0.67), ("seed", 1, "ET", 0.70, 0.68),
                                         ("seed", 2, "LR", 0.62, 0.66), ("jitter", 1, "ET", 0.68, 0.67),
                                         ("jitter", 2, "ET", 0.64, 0.67)]:
        for fam in ("ET", "LR", fs.MEAN_FAMILIES):
            rows.append({"run": "r", "kind": kind, "repeat": rep, "family": fam, "selected": fam == fam_sel,
                         "AUC internal": 0.8,
                         "AUC external": avg if fam == fs.MEAN_FAMILIES else ext if fam == fam_sel else 0.5})
    s = fs.spread_summary(pd.DataFrame(rows)).set_index(["signature", "kind"])
    pick, mean = s.loc["picked family"], s.loc[fs.MEAN_FAMILIES]
    assert pick.loc["seed", "other family chosen"] == 0.5
    assert pick.loc["jitter", "other family chosen"] == 0.0
    assert pick.loc["seed", "external min"] == 0.62 and pick.loc["seed", "external max"] == 0.70
    assert pick.loc["jitter", "external SD"] == pytest.approx(np.std([0.68, 0.64], ddof=1))
    assert pick.loc["seed", "external stage"] == 0.66 and pick.loc["seed", "internal SD"] == 0.0
    assert mean.loc["seed", "external stage"] == 0.67 and mean.loc["jitter", "external SD"] == 0.0
    assert mean.loc["seed", "external min"] == 0.66 and np.isnan(mean.loc["seed", "other family chosen"])


def test_refit_adds_the_mean_of_the_families_and_marks_the_rules_pick(monkeypatch):
    from types import SimpleNamespace

    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    cohort = np.array(["training"] * 4 + ["internal"] * 2 + ["external"] * 2)
    a = np.array([0.2, 0.4, 0.3, 0.1, 0.2, 0.9, 0.6, 0.5])  # external reversed
    b = np.array([0.1, 0.3, 0.2, 0.4, 0.4, 0.5, 0.1, 0.9])
    fake = {"lr": SimpleNamespace(cv_auc=0.6, oof=a[:4], scores=a),
            "et": SimpleNamespace(cv_auc=0.7, oof=b[:4], scores=b)}
    monkeypatch.setattr(fs.sig, "build_models", lambda *args, **kw: fake)
    cfg = SimpleNamespace(signatures=SimpleNamespace(dl25d_model="cv"), compute=SimpleNamespace(n_jobs=1))
    meta = pd.DataFrame({"label": y, "cohort": cohort})
    d = fs.sig.FusionInputs(X=None, meta=meta, inst_cols=[], rad_cols=[], size_col=None, extent=None,
                            views=None, cv=None, cv_note="", sample_weight=None, inst=None, inst_frozen=None,
                            inst_harm=None, harm_log=None)
    t = fs.refit(cfg, d, 0).set_index("family")
    assert t.loc["ExtraTrees", "selected"] and not t.loc["LR", "selected"]
    assert t.loc["LR", "AUC external"] == 0.0 and t.loc["ExtraTrees", "AUC external"] == 1.0
    m = (a + b) / 2
    assert not t.loc[fs.MEAN_FAMILIES, "selected"]
    assert t.loc[fs.MEAN_FAMILIES, "AUC external"] == (1.0 if m[7] > m[6] else 0.0)
    from hcc25d.stats import auc
    assert t.loc[fs.MEAN_FAMILIES, "cv AUC"] == pytest.approx(auc(y[:4], m[:4]))
