"""Statistics checked against R (pROC, ResourceSelection, dcurves, rms): reference values in tests/results/."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml

from hcc25d import stats

REF = yaml.safe_load((Path(__file__).parent / "results" / "r_reference.yaml").read_text())


@pytest.fixture(scope="module")
def df(examples):
    d = pd.read_csv(examples / "stats" / "df_binary.csv")
    d["y"] = (d["cancer"].astype(str) == "True").astype(int)
    return d


def test_delong_against_proc(df):
    r = REF["delong"]
    tol = r["tol"]
    aucs, cov = stats.delong_cov(df["y"], df["cancerpredmarker"], df["marker"])
    assert aucs[0] == pytest.approx(r["auc_cancerpredmarker"], abs=tol)
    assert aucs[1] == pytest.approx(r["auc_marker"], abs=tol)
    assert cov[0, 0] == pytest.approx(r["var_cancerpredmarker"], abs=tol)
    assert cov[1, 1] == pytest.approx(r["var_marker"], abs=tol)
    assert cov[0, 1] == pytest.approx(r["cov"], abs=tol)
    a = stats.auc_ci(df["y"], df["cancerpredmarker"])
    assert (a.low, a.high) == pytest.approx(r["ci_cancerpredmarker"], abs=tol)
    b = stats.auc_ci(df["y"], df["marker"])
    assert (b.low, b.high) == pytest.approx(r["ci_marker"], abs=tol)
    t = stats.delong_test(df["y"], df["cancerpredmarker"], df["marker"])
    assert t.z == pytest.approx(r["z"], abs=tol) and t.p_value == pytest.approx(r["p"], rel=1e-9)
    assert isinstance(t, stats.DeLongResult) and t.auc_a > t.auc_b


def test_clustered_ci_resamples_patients_not_instances():
    rng = np.random.default_rng(5)
    n = 120
    y = rng.integers(0, 2, n)
    z = 0.8 * y + rng.normal(size=n)
    # one instance per patient: exactly the stratified bootstrap of auc_ci (same draws)
    one = stats.auc_ci_clustered(y, z, [f"p{i}" for i in range(n)], n_boot=400, seed=2)
    ref = stats.auc_ci(y, z, method="bootstrap", n_boot=400, seed=2)
    assert one.auc == pytest.approx(ref.auc) and one.low == pytest.approx(ref.low) and one.high == pytest.approx(ref.high)
    # every patient's instance copied nine times: the same information, so the same interval, while DeLong on
    # instances, which counts the copies as cases, narrows by about three
    ids = np.repeat(np.arange(n), 9)
    nine = stats.auc_ci_clustered(np.repeat(y, 9), np.repeat(z, 9), ids, n_boot=400, seed=2)
    assert nine.auc == pytest.approx(one.auc) and nine.low == pytest.approx(one.low)
    assert nine.high == pytest.approx(one.high)
    dl = stats.auc_ci(np.repeat(y, 9), np.repeat(z, 9))
    assert (nine.high - nine.low) > 2.5 * (dl.high - dl.low)
    # ties count one half, as in the plain AUC
    s = np.round(z, 0)
    assert stats.auc_ci_clustered(y, s, np.arange(n), n_boot=10).auc == pytest.approx(stats.auc(y, s))
    with pytest.raises(ValueError, match="both labels"):
        stats.auc_ci_clustered([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], ["a", "a", "b", "c"])
    assert np.isnan(stats.auc_ci_clustered([0, 0, 1], [0.1, 0.2, 0.3], ["a", "b", "c"]).low)  # one patient


def test_metrics_table_adds_the_patient_resampled_interval_for_instances():
    from hcc25d import evaluation

    rng = np.random.default_rng(8)
    pats = pd.DataFrame({"patient_id": [f"p{i}" for i in range(90)], "cohort": np.repeat(["training", "internal"], 45),
                         "label": rng.integers(0, 2, 90)})
    pats["u"] = rng.normal(size=90)  # a patient's own level, shared by its instances: they are correlated
    frame = pats.loc[pats.index.repeat(5)].reset_index(drop=True)
    frame["prob"] = 1 / (1 + np.exp(-(frame["label"] + frame["u"] + 0.3 * rng.normal(size=len(frame)))))
    frame["m"] = "A"
    long = evaluation.metrics_table(frame, by="m", cluster="patient_id")
    assert list(long["patients"]) == [45, 45] and list(long["n"]) == [225, 225]
    assert (long["ci_high_patients"] - long["ci_low_patients"] > long["ci_high"] - long["ci_low"]).all()
    t = evaluation.paper_layout(long, "m")
    cols = list(t.columns)
    assert cols[cols.index("AUC (95% CI)") + 1] == evaluation.PATIENT_CI_LABEL
    r = long.iloc[0]
    assert t.iloc[0][evaluation.PATIENT_CI_LABEL] == f"{r['ci_low_patients']:.3f}–{r['ci_high_patients']:.3f}"
    assert evaluation.PATIENT_CI_LABEL not in evaluation.paper_layout(long, "m", wide=True).columns.get_level_values(1)
    assert "ci_low_patients" not in evaluation.metrics_table(frame, by="m")  # patient-level tables: unchanged


def test_bootstrap_ci_is_seeded_and_brackets_auc(df):
    a = stats.auc_ci(df["y"], df["marker"], method="bootstrap", n_boot=300, seed=1)
    b = stats.auc_ci(df["y"], df["marker"], method="bootstrap", n_boot=300, seed=1)
    assert a == b and a.low < a.auc < a.high
    assert abs(a.low - REF["delong"]["ci_marker"][0]) < 0.03


def test_hosmer_lemeshow_against_resourceselection(df):
    r = REF["hosmer_lemeshow"]
    # R's convention (df = g - 2 always) reproduces hoslem.test; with no ties 10 groups form, so the
    # default convention (formed groups - 2 for fitted probabilities) gives the same numbers
    for h in (stats.hosmer_lemeshow(df["y"], df["cancerpredmarker"], groups=10, df_rule="requested"),
              stats.hosmer_lemeshow(df["y"], df["cancerpredmarker"], groups=10, fitted=True)):
        assert h.statistic == pytest.approx(r["statistic"], abs=r["tol"])
        assert h.p_value == pytest.approx(r["p"], abs=r["tol"])
        assert h.df == r["df"]
    # with tied risks the two groupings differ: R's unique quantile breaks collapse to few groups,
    # Stata-style deciles keep 10 groups of equal size
    tied = 0.1 + 0.2 * df["famhistory"]
    q = stats.hosmer_lemeshow(df["y"], tied, groups=10)
    s = stats.hosmer_lemeshow(df["y"], tied, groups=10, method="stata")
    assert not np.isclose(s.statistic, q.statistic)
    # R keeps g - 2 = 8 whatever forms; the default counts the groups that really formed (here 1)
    req, formed = (stats.hosmer_lemeshow(df["y"], tied, groups=10, df_rule=r, fitted=True)
                   for r in ("requested", "formed"))
    assert req.df == 8 and formed.df < 1 and np.isnan(formed.p_value)  # one group: no test
    assert req.statistic == pytest.approx(formed.statistic)


def test_hosmer_lemeshow_degrees_of_freedom(df):
    p = df["cancerpredmarker"]
    fitted = stats.hosmer_lemeshow(df["y"], p, groups=10, fitted=True)
    held_out = stats.hosmer_lemeshow(df["y"], p, groups=10, fitted=False)
    assert (fitted.df, held_out.df) == (8, 10)          # g - 2 in-sample, g for validation / out-of-fold
    assert held_out.statistic == fitted.statistic and held_out.p_value > fitted.p_value
    # ties merge the quantile breaks: this binary risk leaves the unique breaks (0.1, 0.3), one group:
    # df 1 held out, none left in-sample (no test) -- where R would still claim 8
    tied = 0.1 + 0.2 * df["famhistory"]
    assert stats.hosmer_lemeshow(df["y"], tied, fitted=False).df == 1
    t = stats.hosmer_lemeshow(df["y"], tied, fitted=True)
    assert t.df < 1 and np.isnan(t.p_value)
    three = stats.hosmer_lemeshow(df["y"], np.round(p, 1), groups=10, fitted=False)
    assert three.df == len(np.unique(np.quantile(np.round(p, 1), np.linspace(0, 1, 11)))) - 1
    # missing predictions are dropped, not propagated
    pn = p.copy()
    pn.iloc[:5] = np.nan
    h = stats.hosmer_lemeshow(df["y"], pn, groups=10, fitted=False)
    assert np.isfinite(h.statistic) and h.df == 10
    assert h.statistic == pytest.approx(stats.hosmer_lemeshow(df["y"].iloc[5:], p.iloc[5:], fitted=False).statistic)


def test_net_benefit_against_r_dcurves(df, examples):
    thr = np.round(np.arange(0, 1, 0.01), 2)
    nb = stats.net_benefit(df["y"], df["famhistory"], thr)
    nb = nb.set_index(nb["threshold"].round(2))
    r = pd.read_csv(examples / "stats" / "r_dca_famhistory.csv")
    r["threshold"] = r["threshold"].round(2)
    for var, col in (("famhistory", "model"), ("all", "treat_all"), ("none", "treat_none")):
        ref = r[r["variable"] == var].set_index("threshold")["net_benefit"]
        assert np.allclose(nb.loc[ref.index, col].to_numpy(), ref.to_numpy(), atol=1e-9), var
    c = REF["dca_cancerpredmarker_025"]
    one = stats.net_benefit(df["y"], df["cancerpredmarker"], [0.25]).iloc[0]
    assert (one["treat_all"], one["treat_none"], one["model"]) == pytest.approx((c["treat_all"], c["treat_none"], c["model"]), abs=c["tol"])
    # the formula, above threshold 0: TP/n - FP/n * t/(1-t), treating risk >= t
    t = 0.3
    pred = df["cancerpredmarker"] >= t
    tp, fp = (pred & (df["y"] == 1)).sum(), (pred & (df["y"] == 0)).sum()
    mine = tp / len(df) - fp / len(df) * t / (1 - t)
    assert stats.net_benefit(df["y"], df["cancerpredmarker"], [t]).iloc[0]["model"] == pytest.approx(mine, abs=1e-12)


def test_logistic_fit_and_nomogram_against_rms(df):
    """Coefficients, points and total points of the package's nomogram against R's rms values only."""
    from hcc25d import evaluation

    r = REF["rms"]
    X = sm.add_constant(df[["age", "famhistory", "marker"]].astype(float))
    fit = sm.Logit(df["y"].astype(float), X).fit(disp=0, method="newton", tol=1e-12, maxiter=100)
    assert np.allclose(fit.params.to_numpy(), r["coefficients"], atol=r["tol_coef"])
    coefs = dict(zip(["age", "famhistory", "marker"], r["coefficients"][1:]))
    axes = {"age": stats.r_pretty(df["age"].min(), df["age"].max()), "famhistory": np.array([0.0, 1.0]),
            "marker": stats.r_pretty(df["marker"].min(), df["marker"].max())}
    assert axes["age"][0] == 45 and axes["age"][-1] == 80 and axes["marker"][-1] == 7
    nomo = evaluation.nomogram(r["coefficients"][0], coefs, axes)
    tol = r["tol_points"]
    assert nomo.scale == pytest.approx(r["points_per_lp"], abs=tol)
    for name in ("age", "marker", "famhistory"):
        for x, p in r[f"{name}_points"].items():
            # read off the drawn axis (points are linear along it, as on the printed nomogram)
            got = np.interp(float(x), nomo.axes[name], nomo.points[name])
            assert got == pytest.approx(p, abs=tol), (name, x)
    risks = list(r["total_points_at_risk"])
    got = nomo.total_points(np.array(risks, float))
    assert got == pytest.approx([r["total_points_at_risk"][k] for k in risks], abs=r["tol_total_points"])


def test_statistics_on_bad_input():
    """One class, NaN and ties: a clear NaN or error, never a silent number."""
    y1 = np.array([1, 1, 1, 1])
    assert np.isnan(stats.auc(y1, [0.1, 0.2, 0.3, 0.4]))
    frame = pd.DataFrame({"cohort": ["training"] * 4 + ["external"] * 4, "label": [0, 1, 0, 1, 1, 1, 1, 1],
                          "prob": [0.2, 0.8, np.nan, 0.7, 0.5, 0.6, 0.7, 0.9]})
    t = stats.metrics_by_cohort(frame)
    assert list(t["cohort"]) == ["training"] and int(t["n"].iloc[0]) == 3   # one-class cohort skipped, NaN dropped
    tied = stats.auc_ci([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5])
    assert tied.auc == pytest.approx(0.5)
    with pytest.raises(ValueError):
        stats.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    h = stats.hosmer_lemeshow([0, 1, 0, 1, np.nan], [0.2, 0.8, np.nan, 0.6, 0.5], groups=2, fitted=False)
    assert np.isfinite(h.statistic)


def test_binary_metrics_and_threshold_from_training():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.7, 0.8, 0.3, 0.2])
    m = stats.binary_metrics(y, p, 0.5)
    assert (m["accuracy"], m["sensitivity"], m["specificity"], m["ppv"], m["npv"]) == pytest.approx((4 / 6, 2 / 3, 2 / 3, 2 / 3, 2 / 3))
    frame = pd.DataFrame({"cohort": ["training"] * 6 + ["external"] * 4, "label": list(y) + [0, 1, 0, 1],
                          "prob": list(p) + [0.9, 0.95, 0.1, 0.2]})
    t = stats.metrics_by_cohort(frame)
    thr = stats.youden_threshold(y, p)
    assert (t["threshold"] == thr).all()  # the external cohort's threshold is the training one


def test_r_pretty_matches_r_examples():
    assert list(stats.r_pretty(0, 1)) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert list(stats.r_pretty(1, 10)) == [0, 2, 4, 6, 8, 10]
    assert list(stats.r_pretty(0.13, 0.87)) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_paper_layout_stacks_cohorts_as_rows_or_spreads_them_as_in_the_paper():
    from hcc25d import evaluation

    rng = np.random.default_rng(3)
    n = 240
    frame = pd.DataFrame({"cohort": np.repeat(["training", "internal", "external"], n // 3),
                          "label": rng.integers(0, 2, n)})
    frame["prob"] = np.clip(0.3 * frame["label"] + rng.uniform(0, 0.7, n), 0, 1)
    long = pd.concat([evaluation.metrics_table(frame.assign(m=m), by="m") for m in ("A", "B")],
                     ignore_index=True)
    t = evaluation.paper_layout(long, "m", cohorts=["internal", "training"])
    assert list(t.index) == [("A", "internal"), ("A", "training"), ("B", "internal"), ("B", "training")]
    assert list(t.columns) == [label for _, label in evaluation.PAPER_METRICS]
    r = long[(long["m"] == "A") & (long["cohort"] == "training")].iloc[0]
    assert t.loc[("A", "training"), "AUC (95% CI)"] == f"{r['auc']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f})"
    assert t.loc[("A", "training"), "NPV"] == f"{r['npv']:.3f}"
    w = evaluation.paper_layout(long, "m", wide=True)
    assert w.shape == (2, 18) and w.loc["A", ("training", "AUC (95% CI)")] == t.loc[("A", "training"), "AUC (95% CI)"]


def test_side_by_side_puts_paper_run_and_reference_per_cohort_and_flags_differences():
    from hcc25d import paper

    rows = []
    for c, ref in (("training", 0.8), ("external", 0.85)):
        for m, p_val, ours in (("accuracy", 0.7, 0.69), ("auc", 0.9, 0.6), ("ci_low", 0.85, 0.5),
                               ("ci_high", 0.95, 0.7), ("sensitivity", 0.6, 0.61)):
            rows.append({"table": "Table 5", "model (paper)": "DL", "model (ours)": "DL", "cohort": c,
                         "metric": m, "paper": p_val, "ours": ours, "difference": ours - p_val,
                         "reference AUC": ref if m == "auc" else np.nan})
    comp = pd.DataFrame(rows)
    st = paper.side_by_side(comp, "Table 5")
    t = st.data
    assert list(t.index) == [("DL", c, s) for c in ("training", "external")
                             for s in ("paper", "this run", "reference (twin)")]
    assert t.loc[("DL", "external", "this run"), "AUC (95% CI)"] == "0.600 (0.500–0.700)"
    assert t.loc[("DL", "external", "reference (twin)"), "AUC (95% CI)"] == "0.850"
    css = st._compute().ctx  # highlighted cells: (row, column) positions
    auc_col = list(t.columns).index("AUC (95% CI)")
    flagged = {k for k, v in css.items() if any("fde2e1" in str(x) for x in v)}
    assert (1, auc_col) in flagged and (4, auc_col) in flagged  # 0.6 vs 0.9
    assert (1, list(t.columns).index("Accuracy")) not in flagged  # 0.69 vs 0.70
    w = paper.side_by_side(comp, "Table 5", wide=True).data
    assert w.shape == (3, 12) and w.loc[("DL", "this run"), ("external", "AUC (95% CI)")] == "0.600 (0.500–0.700)"


def test_delong_with_a_single_case_of_a_class_gives_no_interval_and_no_warning():
    import warnings

    y = np.array([1, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.5, 0.95, 0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ddof/divide warnings would fail here
        r = stats.auc_ci(y, s)
        t = stats.delong_test(y, s, s[::-1])
    assert r.auc == pytest.approx(0.75) and np.isnan(r.low) and np.isnan(r.high)
    assert np.isnan(t.p_value)


def test_threshold_transfer_separates_a_score_shift_from_the_ranking():
    from hcc25d import evaluation, paper

    rng = np.random.default_rng(5)
    n = 300
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)],
                          "cohort": np.repeat(["training", "internal", "external"], n // 3),
                          "label": rng.integers(0, 2, n)})
    logit = 1.5 * (frame["label"] - 0.5) + rng.normal(0, 0.8, n)
    frame["A"] = 1 / (1 + np.exp(-logit))
    frame["B"] = 1 / (1 + np.exp(-(logit - 4 * (frame["cohort"] == "external"))))  # same ranking, lower
    t5 = evaluation.table5(frame, ["A", "B"])
    t = evaluation.threshold_transfer(frame, t5)
    ext = t[t["cohort"] == "external"].set_index("signature")
    assert ext.loc["A", "AUC"] == pytest.approx(ext.loc["B", "AUC"])  # the ranking carries over
    assert ext.loc["B", "flagged at the training threshold"] < 0.05 < ext.loc["A", "flagged at the training threshold"]
    # the flagged share is what Table 5's sensitivity and specificity imply
    r = t5[(t5["cohort"] == "external") & (t5["signature"] == "A")].iloc[0]
    rate = ext.loc["A", "recurrence rate"]
    assert ext.loc["A", "flagged at the training threshold"] == pytest.approx(
        r["sensitivity"] * rate + (1 - r["specificity"]) * (1 - rate))
    s = evaluation.threshold_transfer_summary(t)
    assert "On the external cohort" in s and "B's training threshold flags" in s
    # no threshold (no training predictions): nothing flagged is claimed
    nan_thr = evaluation.threshold_transfer(frame, t5.assign(threshold=np.nan))
    assert nan_thr["flagged at the training threshold"].isna().all()
    assert evaluation.threshold_transfer_summary(nan_thr) == ""
    odd = paper.threshold_extremes("table5")  # the paper's own Clinical row on its internal cohort
    assert list(zip(odd["model"], odd["cohort"])) == [("Clinical", "internal")]
