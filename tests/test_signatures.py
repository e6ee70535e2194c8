"""Signatures: selection steps, leakage tests (permuted labels; no fitted step sees validation rows)."""
import numpy as np
import pandas as pd
import pytest

from hcc25d import config, signatures as sig
from hcc25d.stats import auc_ci


def dataset(n_train=120, n_int=60, n_ext=80, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    rows = []
    for cohort, n in (("training", n_train), ("internal", n_int), ("external", n_ext)):
        for i in range(n):
            rows.append({"patient_id": f"{cohort[:2]}{i:03d}", "cohort": cohort, "label": int(rng.random() < 0.55)})
    meta = pd.DataFrame(rows).set_index("patient_id")
    y = meta["label"].to_numpy()
    inst = {f"axial{o:+d}": np.clip(0.5 + 0.15 * signal * (y - 0.5) + rng.normal(0, 0.15, len(y)), 0, 1)
            for o in (0, -1, 1, -2, 2)}
    rad = {f"arterial_original_firstorder_F{j}": rng.normal(0, 1, len(y)) + (signal * (y - 0.5) if j < 3 else 0)
           for j in range(12)}
    X = pd.DataFrame({**inst, **rad}, index=meta.index)
    return X, meta, list(inst), list(rad)


S = config.SignaturesCfg(cv_folds=3, models=("lr", "rf", "et", "xgb", "lgbm"),
                         grids={"rf": {"n_estimators": [50], "max_depth": [3], "min_samples_leaf": [2]},
                                "et": {"n_estimators": [50], "max_depth": [3], "min_samples_leaf": [2]},
                                "xgb": {"n_estimators": [30], "max_depth": [2], "learning_rate": [0.1]},
                                "lgbm": {"n_estimators": [30], "num_leaves": [4], "learning_rate": [0.1]},
                                "lr": {"C": [0.1, 1.0]}})


def test_no_fitted_step_ever_receives_validation_rows():
    X, meta, ic, rc = dataset()
    log = sig.FitLog()
    models = sig.build_models(X, meta, ic, rc, S, seed=0, recorder=log)
    train_ids = set(meta.index[meta["cohort"] == "training"])
    assert len(log) > 5 * 3  # every CV fit of every family went through the recorder
    for ids in log:
        assert ids is not None and set(ids) <= train_ids
    # and the validation cohorts were predicted
    for v in models.values():
        assert len(v.proba) == len(X) and len(v.oof) == len(train_ids)


def test_permuted_training_labels_give_chance_external_auc():
    X, meta, ic, rc = dataset(signal=0.6)
    perm = meta.copy()
    tr = perm["cohort"] == "training"
    perm.loc[tr, "label"] = np.random.default_rng(1).permutation(perm.loc[tr, "label"].to_numpy())
    models = sig.build_models(X, perm, ic, rc, S, seed=0)
    ext = (meta["cohort"] == "external").to_numpy()
    y = meta["label"].to_numpy()[ext]
    n1, n0 = y.sum(), len(y) - y.sum()
    bound = 3 * np.sqrt((n0 + n1 + 1) / (12 * n0 * n1))  # 3 SD of the AUC under no signal
    for key, v in models.items():
        auc = auc_ci(y, v.proba[ext]).auc
        assert abs(auc - 0.5) < bound, (key, auc, bound)
    # the same pipeline with the true labels finds the signal (the test is not vacuous)
    real = sig.build_models(X, meta, ic, rc, config.SignaturesCfg(cv_folds=3, models=("lr",), grids=S.grids), seed=0)
    assert auc_ci(y, real["lr"].proba[ext]).low > 0.5  # its 95 % interval excludes chance
    # combined model on permuted labels
    train = perm[tr].assign(score=models["lr"].oof, x1=X.loc[tr, "arterial_original_firstorder_F5"].to_numpy())
    fit = sig.fit_combined(train, "score", ["x1"])
    frame = X.assign(score=models["lr"].proba, x1=X["arterial_original_firstorder_F5"])
    p = sig.predict_combined(fit, frame[ext], "score", ["x1"])
    assert abs(auc_ci(y, p).auc - 0.5) < bound


def test_selectors():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40), np.ones(40)]
    a = rng.normal(0, 1, 80) + 2 * y
    X = np.c_[a, a + rng.normal(0, 0.01, 80), rng.normal(0, 1, 80), rng.lognormal(0, 1, 80) * (1 + y)]
    u = sig.UnivariateFilter(0.05).fit(X, y)
    assert u.get_support().tolist() == [True, True, False, True]
    c = sig.CorrelationPruner(0.9).fit(X[:, u.get_support()])
    assert c.get_support().tolist() == [True, False, True]
    las = sig.LassoSelector(random_state=0).fit(X, y)
    assert las.get_support()[0] or las.get_support()[1]
    assert np.all(las.coef_[~las.get_support()] == 0)
    none = sig.UnivariateFilter(0.05, min_features=1).fit(rng.normal(0, 1, (80, 3)), y)
    assert none.get_support().sum() >= 1


def test_selection_rules_and_clinical_screen():
    assert sig.select_signature({"lr": 0.7, "rf": 0.8}, "cv")[0] == "rf"
    assert sig.select_signature({"lr": 0.7, "rf": 0.8}, "lr")[0] == "lr"
    with pytest.raises(ValueError):
        sig.select_signature({"lr": 0.7}, "svm")
    t2 = pd.DataFrame({"variable": ["a", "b", "c"], "p_paper": [0.01, 0.02, 0.5], "m_p_paper": [0.01, 0.2, np.nan]})
    assert sig.clinical_screen(t2) == ["a"]


@pytest.mark.parametrize("est", [sig.UnivariateFilter(), sig.CorrelationPruner(), sig.LassoSelector(random_state=0)])
def test_selectors_pass_sklearn_estimator_checks(est):
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(est)


def test_clinical_screen_is_the_papers_rule_and_refits_per_fold():
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random(n) < 0.5).astype(int)
    strong = (rng.random(n) < 0.3 + 0.4 * y).astype(float)       # P << 0.05
    copy = np.where(rng.random(n) < 0.75, strong, 1 - strong)     # univariably significant, not multivariably
    noise = (rng.random(n) < 0.5).astype(float)
    X = pd.DataFrame({"strong": strong, "copy": copy, "noise": noise})
    s = sig.ClinicalScreen(0.05, 0.05).fit(X, y)
    assert s.pvalues_[0] < 0.001 and s.pvalues_[1] < 0.05 and s.pvalues_[2] > 0.05
    assert s.get_support().tolist() == [True, False, False]
    # nothing passes: the smallest P is kept so that a pipeline still has a feature
    none = sig.ClinicalScreen().fit(X[["noise"]].assign(n2=rng.random(n)), y)
    assert none.get_support().sum() == 1
    assert not s.rank_deficient_
    # two selected variables that coincide: said by the fitted step, not warned by every worker
    import warnings

    import statsmodels.api  # noqa: F401 - its own warning filters first, then ours on top

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = sig.ClinicalScreen(0.05, 0.05).fit(X.assign(copy=strong), y)
    assert twin.rank_deficient_ and twin.get_support()[0]
    # inside a pipeline the screening is redone on each fold's training rows only
    from sklearn.model_selection import cross_validate

    res = cross_validate(sig.clinical_pipeline("lr", 0), X, y, cv=3, return_estimator=True)
    for est in res["estimator"]:
        assert est.named_steps["screen"].pvalues_ is not s.pvalues_ and est.named_steps["screen"].get_support()[0]


def test_grid_search_uses_the_cnn_folds_and_balanced_weights():
    X, meta, ic, rc = dataset()
    tr = meta["cohort"] == "training"
    fold = pd.Series(np.arange(tr.sum()) % 4, index=meta.index[tr])
    cv = sig.folds_cv(fold)
    splits = list(cv.split(X[tr]))
    assert len(splits) == 4 and all(set(fold.iloc[test]) == {k} for k, (_, test) in enumerate(splits))
    models = sig.build_models(X, meta, ic, rc, config.SignaturesCfg(models=("lr",), grids=S.grids), seed=0, cv=cv)
    assert models["lr"].search.n_splits_ == 4
    w = sig.balanced_weights(np.r_[np.zeros(30), np.ones(90)])
    assert w[:30].sum() == pytest.approx(w[30:].sum())  # each class carries half the weight
    with pytest.raises(ValueError, match="no cross-fitting fold"):
        sig.folds_cv(pd.Series([0, 1, np.nan]))


def test_held_out_patients_are_scored_per_fold_model_and_averaged():
    X, meta, ic, rc = dataset()
    tr = (meta["cohort"] == "training").to_numpy()
    rows = []
    for pid, (c, yv) in meta[["cohort", "label"]].iterrows():
        for col in ic:
            view, off = col[:5], int(col[5:])
            r = {"patient_id": pid, "cohort": c, "label": yv, "view": view, "offset": off, "prob": X.loc[pid, col]}
            if c != "training":  # two fold models: one shifted up, one down, same mean
                r.update(prob_fold1=min(1.0, r["prob"] + 0.1), prob_fold2=max(0.0, r["prob"] - 0.1))
            rows.append(r)
    inst = pd.DataFrame(rows)
    views = sig.heldout_views(inst, X, ic)
    assert len(views) == 2
    assert np.allclose(views[0].loc[tr, ic], X.loc[tr, ic]) and np.allclose(views[0][rc], X[rc])
    assert np.allclose(views[0].loc[~tr, ic].to_numpy(), np.minimum(1, X.loc[~tr, ic].to_numpy() + 0.1))
    models = sig.build_models(X, meta, ic, rc, config.SignaturesCfg(models=("lr",), grids=S.grids), seed=0, views=views)
    gs = models["lr"].search
    expect = np.mean([gs.predict_proba(v)[:, 1] for v in views], axis=0)
    assert np.allclose(models["lr"].proba[~tr], expect[~tr])
    assert np.allclose(models["lr"].proba[tr], gs.predict_proba(X)[tr, 1])
    assert sig.heldout_views(inst.drop(columns=["prob_fold1", "prob_fold2"]), X, ic)[0] is X


def test_signal_sources_separate_the_two_halves_of_the_signature():
    # the instance probabilities carry the outcome, the radiomics features are noise except in training
    X, meta, ic, rc = dataset(signal=1.5)
    y = meta["label"].to_numpy()
    tr = (meta["cohort"] == "training").to_numpy()
    rng = np.random.default_rng(5)
    for c in rc:  # radiomics: a training-only association (what chance screening finds), none elsewhere
        X[c] = rng.normal(0, 1, len(X)) + np.where(tr, 1.2 * (y - 0.5), 0.0)
    inst = X[ic].stack().rename("prob").reset_index().rename(columns={"level_1": "slot"})
    inst = inst.join(meta, on="patient_id")
    S1 = config.SignaturesCfg(cv_folds=3, models=("lr",), grids={"lr": {"C": [1.0]}})
    both = sig.build_models(X, meta, ic, rc, S1, seed=0)["lr"]
    out = sig.signal_sources(X, meta, ic, rc, "lr", S1, 0, inst, both.scores).set_index("score")
    assert len(out) == 4 and out.index[-1].startswith("DL_2.5D")
    cnn = out.loc["CNN patient score (before fusion)"]
    ext = (meta["cohort"] == "external").to_numpy()
    assert np.isclose(cnn["AUC external"], auc_ci(y[ext], X.loc[ext, ic].mean(axis=1)).auc)
    mil, rad = out.iloc[1], out.iloc[2]
    assert mil["AUC external"] > 0.75 and rad["AUC external"] < 0.65 < rad["AUC training"]
    assert np.isclose(out.iloc[3]["AUC internal"], auc_ci(y[meta["cohort"] == "internal"],
                                                          both.scores[(meta["cohort"] == "internal").to_numpy()]).auc)
    assert out["95% CI internal"].str.match(r"^\d\.\d\d–\d\.\d\d$").all()
    page = sig.compact_sources(out.reset_index())
    assert list(page.columns) == ["training", "internal", "external"] and page.index.name == "AUC (95% CI)"
    assert page.iloc[0, 2] == f"{cnn['AUC external']:.3f} ({cnn['95% CI external']})"


def test_selected_by_cohort_shows_reversal_and_size():
    X, meta, ic, rc = dataset(signal=1.5)
    y = meta["label"].to_numpy()
    tr = (meta["cohort"] == "training").to_numpy()
    rng = np.random.default_rng(7)
    size = pd.Series(np.exp(rng.normal(3.5, 0.3, len(X))), index=X.index)
    # F0: a size proxy whose association with the outcome reverses outside the training cohort
    X["arterial_original_firstorder_F0"] = np.log(size) + np.where(tr, 1.0, -1.0) * 0.4 * (y - 0.5)
    S1 = config.SignaturesCfg(cv_folds=3, models=("lr",), grids={"lr": {"C": [1.0]}})
    pipe = sig.build_models(X, meta, [], rc, S1, seed=0)["lr"].search.best_estimator_
    out = sig.selected_by_cohort(pipe, X, meta, size).set_index("feature")
    assert list(out.columns[:2]) == ["univariate P", "LASSO coefficient"]
    f0 = out.loc["rad__arterial_original_firstorder_F0"]
    assert f0["AUC training"] > 0.55 and f0["AUC external"] < 0.5 and f0["AUC internal"] < 0.5
    assert f0["Spearman with ROI size (training)"] > 0.6
    f1 = out.loc["rad__arterial_original_firstorder_F1"]  # a real signal: same direction everywhere
    assert min(f1["AUC training"], f1["AUC internal"], f1["AUC external"]) > 0.6
    assert abs(f1["Spearman with ROI size (training)"]) < 0.3
    # continuous features: no value shared by many patients, so nothing is saturated
    assert (out[[f"{sig.ONE_VALUE} {c}" for c in ("training", "internal", "external")]] < 0.1).all().all()
    assert sig.saturation_note(out.reset_index()) == ""


def test_saturation_note_names_features_stuck_at_one_value_on_a_validation_cohort():
    sel = pd.DataFrame({"feature": ["bow__bow_p7", "hist__hist_label0", "rad__plain_original_glcm_X"],
                        f"{sig.ONE_VALUE} training": [0.43, 0.17, 0.01],
                        f"{sig.ONE_VALUE} internal": [0.36, 0.23, 0.02],
                        f"{sig.ONE_VALUE} external": [1.0, 0.60, 0.95]})
    note = sig.saturation_note(sel)
    assert note.startswith("Saturated on a validation cohort: on the external patients, 2 of the 3 selected")
    assert "bow__bow_p7 (100 %)" in note and "plain_glcm_X (95 %)" in note  # prefixes dropped
    assert "hist__hist_label0" not in note and "internal patients" not in note
    assert "training: at most 43 %" in note and "fusion's bins below" in note
    # only radiomics features saturated: no word about the fusion's bins
    rad = sig.saturation_note(sel.iloc[[2]])
    assert "plain_glcm_X (95 %)" in rad and "bins" not in rad
    # a feature already at one value on the training patients is not news on a validation cohort
    sel[f"{sig.ONE_VALUE} training"] = [0.95, 0.17, 0.92]
    assert sig.saturation_note(sel) == ""
    assert sig.saturation_note(sel.drop(columns=[f"{sig.ONE_VALUE} training"])) == ""


def test_selected_by_cohort_measures_a_multi_instance_feature_saturated_by_a_score_shift():
    X, meta, ic, rc = dataset(signal=1.5)
    ext = (meta["cohort"] == "external").to_numpy()
    X.loc[ext, ic] = X.loc[ext, ic] * 0.05  # the external instance scores pushed to the bottom bin
    S1 = config.SignaturesCfg(cv_folds=3, models=("lr",), grids={"lr": {"C": [1.0]}})
    pipe = sig.build_models(X, meta, ic, [], S1, seed=0)["lr"].search.best_estimator_
    out = sig.selected_by_cohort(pipe, X, meta)
    assert (out[f"{sig.ONE_VALUE} external"] >= 0.9).any()
    assert (out[f"{sig.ONE_VALUE} training"] < 0.9).any()
    assert "on the external patients" in sig.saturation_note(out)


def test_size_adjust_takes_the_size_slope_out_and_keeps_the_outcome():
    rng = np.random.default_rng(3)
    n = 400
    y = (rng.random(n) < 0.5).astype(int)
    size = np.exp(rng.normal(3.4, 0.35, n))
    signal = rng.normal(0, 1, n) + 1.0 * y          # an outcome signal that has nothing to do with size
    proxy = 2.0 * np.log(size) + rng.normal(0, 0.1, n)  # a volume surrogate
    X = pd.DataFrame({"signal": signal, "proxy": proxy, sig.SIZE_COL: size})
    st = sig.SizeAdjust().fit(X, y)
    assert np.isclose(st.slope_[1], 2.0, atol=0.05) and abs(st.slope_[0]) < 0.2
    out = st.transform(X)
    assert out.shape == (n, 2) and list(st.get_feature_names_out()) == ["signal", "proxy"]
    assert abs(np.corrcoef(out[:, 1], np.log(size))[0, 1]) < 0.1  # the proxy lost its size
    assert auc_ci(y, out[:, 0]).auc > 0.7  # the outcome signal survives
    # size that goes with the outcome is not removed: regressed jointly with the outcome
    proxy2 = np.log(size) + 0.8 * y
    st2 = sig.SizeAdjust().fit(pd.DataFrame({"p": proxy2, sig.SIZE_COL: size}), y)
    assert np.isclose(st2.slope_[0], 1.0, atol=0.05)
    # where large tumours go with the outcome, the joint fit keeps the outcome's share; a size-only fit
    # (no labels) would take it out too
    size3 = np.exp(3.4 + 0.3 * y + rng.normal(0, 0.2, n))
    proxy3 = pd.DataFrame({"p": np.log(size3) + 0.8 * y + rng.normal(0, 0.05, n), sig.SIZE_COL: size3})
    assert np.isclose(sig.SizeAdjust().fit(proxy3, y).slope_[0], 1.0, atol=0.1)
    assert sig.SizeAdjust().fit(proxy3).slope_[0] > 1.5
    with pytest.raises(ValueError, match="feature column"):
        sig.SizeAdjust().fit(X[[sig.SIZE_COL]], y)


def test_fusion_pipeline_adjusts_radiomics_for_size_inside_the_folds():
    X, meta, ic, rc = dataset(signal=1.5)
    rng = np.random.default_rng(11)
    X[sig.SIZE_COL] = np.exp(rng.normal(3.4, 0.3, len(X)))
    log = sig.FitLog()
    S1 = config.SignaturesCfg(cv_folds=3, models=("lr",), grids={"lr": {"C": [1.0]}})
    r = sig.build_models(X, meta, ic, rc, S1, seed=0, recorder=log, size_col=sig.SIZE_COL)["lr"]
    train_ids = set(meta.index[meta["cohort"] == "training"])
    assert log and all(set(ids) <= train_ids for ids in log)
    pipe = r.search.best_estimator_
    names = list(pipe.named_steps["fusion"].get_feature_names_out())
    assert sig.SIZE_COL not in " ".join(names) and sum(n.startswith("rad__") for n in names) == len(rc)
    ext = (meta["cohort"] == "external").to_numpy()
    assert auc_ci(meta["label"].to_numpy()[ext], r.proba[ext]).auc > 0.75


def _two_centre_bags():
    """Two centres' instance probabilities (the external centre's shifted down), harmonised, as bags:
    ``(instances, centre, harmonised instances, harmonisation log, X, instance columns, meta, train mask)``."""
    from hcc25d import mil
    from test_mil import _two_centre_instances

    d = _two_centre_instances(seed=1, n_train=120, n_external=120, n_small=0)
    centre = d.drop_duplicates("patient_id").set_index("patient_id")["centre"]
    h, log = mil.harmonise_centres(d, centre)
    X = mil.bag_matrix(d)
    meta = d.drop_duplicates("patient_id").set_index("patient_id").loc[X.index, ["cohort", "label"]]
    return d, centre, h, log, X, list(X.columns), meta, (meta["cohort"] == "training").to_numpy()


def test_harmonisation_effect_restores_a_shifted_centre_for_the_fusion():
    """A histogram fusion fitted on centre 1's scores reads little from a centre whose scores all moved to
    one end of its bins; harmonised, the same fitted pipeline reads the signal again. The CNN score column
    (mean logit) is the same either way."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from hcc25d import mil

    d, centre, h, log, X, cols, meta, train = _two_centre_bags()
    est = make_pipeline(mil.LikelihoodHistogram(n_bins=5), LogisticRegression()).fit(X[train], meta["label"][train])
    t = sig.harmonisation_effect(est, X, meta, cols, d, h, log, centre).set_index("cohort")
    ext, inn = t.loc["external"], t.loc["internal"]
    assert ext["DL_2.5D AUC (harmonised)"] > ext["DL_2.5D AUC (frozen)"] + 0.1
    assert inn["DL_2.5D AUC (harmonised)"] == inn["DL_2.5D AUC (frozen)"] and inn["centres moved"] == "—"
    assert ext["centres moved"].startswith("centre 2: logit mean")
    assert ext["CNN score AUC"] > 0.7 and ext["n"] == 120


def test_summary_fusion_keeps_the_order_of_a_centre_whose_scores_all_shifted():
    """``fusion: summary`` with a linear family: the external centre's patients keep their order whatever
    constant its instance logits are shifted by (exactly: the same AUC), so the frozen model ranks the shifted
    centre as well as the harmonised scores let it, where the paper's histogram and bag of words lose most of
    it. The features are named for the page (``logit__`` among the multi-instance prefixes)."""
    from hcc25d.stats import auc, logit

    d, centre, h, log, X, cols, meta, train = _two_centre_bags()
    y = meta["label"].to_numpy()
    ext = (meta["cohort"] == "external").to_numpy()
    res = {}
    for fusion in sig.FUSIONS:
        pipe = sig.fusion_pipeline("lr", cols, [], 0, n_bins=5, n_words=4, p_threshold=1.0, lasso=False,
                                   fusion=fusion).fit(X[train], y[train])
        t = sig.harmonisation_effect(pipe, X, meta, cols, d, h, log, centre).set_index("cohort")
        res[fusion] = t.loc["external"]
        if fusion == "summary":
            moved = X.copy()
            moved.loc[ext] = 1 / (1 + np.exp(-(logit(X.loc[ext].to_numpy()) + 2.0)))
            a0 = auc(y[ext], pipe.predict_proba(X[ext])[:, 1])
            assert auc(y[ext], pipe.predict_proba(moved[ext])[:, 1]) == pytest.approx(a0, abs=1e-12)
            names = sig.selected_features(pipe)["feature"]
            assert names.str.startswith(sig.MIL_PREFIXES).all() and names.str.startswith("logit__").any()
    s, p = res["summary"], res["paper"]
    assert s["DL_2.5D AUC (frozen)"] > p["DL_2.5D AUC (frozen)"] + 0.1
    assert abs(s["DL_2.5D AUC (frozen)"] - s["DL_2.5D AUC (harmonised)"]) < 0.03
    with pytest.raises(ValueError, match="unknown fusion"):
        sig.fusion_pipeline("lr", cols, [], 0, fusion="histogram")
    assert sig.pipeline_for("lr", cols, [], config.SignaturesCfg(fusion="summary"), 0).named_steps[
        "fusion"].transformers[0][0] == "logit"


def test_fusion_bins_show_where_a_shifted_centre_falls():
    """The bins a fitted fusion pipeline uses are read back from it, the fusion's input counts a validation
    instance once per fold model, and a centre whose scores moved down shows up below the label threshold
    and in the lowest bins until harmonised."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from hcc25d import mil, plotting

    d, _, h, _, X, cols, meta, train = _two_centre_bags()
    fusion = ColumnTransformer([("hist", mil.LikelihoodHistogram(n_bins=5), cols),
                                ("bow", mil.BagOfWordsTfidf(n_words=4), cols)])
    est = Pipeline([("fusion", fusion), ("clf", LogisticRegression())]).fit(X[train], meta["label"][train])
    bins = sig.fusion_bins(est)
    np.testing.assert_allclose(bins["hist_edges"], np.linspace(0, 1, 6))
    assert 0 < bins["hist_threshold"] < 1 and len(bins["bow_edges"]) >= 3
    assert sig.fusion_bins(Pipeline([("clf", LogisticRegression())])) == {}
    # the fusion's input: training instances once, the others once per fold model
    fin = sig.fusion_input_probs(d)
    n_tr = int((d["cohort"] == "training").sum())
    assert len(fin) == len(d)  # one fold column
    two = sig.fusion_input_probs(d.assign(prob_fold2=d["prob_fold1"] * 0.5))
    assert len(two) == n_tr + 2 * (len(d) - n_tr)
    np.testing.assert_allclose(np.sort(two.loc[two["cohort"] == "training", "prob"]),
                               np.sort(d.loc[d["cohort"] == "training", "prob"]))  # out of fold, once
    assert np.isclose(two.loc[two["cohort"] == "external", "prob"].sum(),
                      1.5 * d.loc[d["cohort"] == "external", "prob_fold1"].sum())  # each fold model's own
    occ = sig.bin_occupancy(d, h, bins).set_index(["cohort", "scores"])
    assert list(occ.index.get_level_values(0).unique()) == ["training", "internal", "external"]
    assert ("internal", "harmonised") not in occ.index  # harmonisation left the internal centre alone
    tr, ext, ext_h = occ.loc[("training", "frozen")], occ.loc[("external", "frozen")], occ.loc[("external", "harmonised")]
    lab = "at or above the label threshold"
    assert ext[lab] < tr[lab] - 0.2 and abs(ext_h[lab] - tr[lab]) < 0.1
    assert ext["in the histogram's lowest bin"] > tr["in the histogram's lowest bin"] + 0.2
    assert ext["median probability"] < tr["median probability"] < 1
    fig = plotting.fusion_bins_plot(fin, bins, sig.fusion_input_probs(h))
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["Training cohort", "Internal validation", "External validation"]
    labels = fig.legends[0].texts
    assert any("harmonised" in t.get_text() for t in labels) and any("threshold" in t.get_text() for t in labels)
    assert sig.bin_occupancy(d, h, {}).empty


def test_fusion_inputs_are_the_stages_steps():
    """The fusion's inputs from a run's tables: the bag (one column per slot) with the radiomics columns that
    hold a value and the ROI extent, the CNN's folds as the CV, one view per fold model, the harmonised
    scores only when asked for, and the deconfounding weights with ``cnn.deconfound``."""
    from test_mil import _two_centre_instances

    d = _two_centre_instances(seed=2, n_train=30, n_internal=10, n_external=24, n_small=0)
    d = d.assign(r0=0, r1=lambda x: 10 + x["label"] * 10 + x["offset"].abs(), c0=0, c1=3,
                 fold=np.where(d["cohort"] == "training", d["patient_id"].str.split("-").str[1].astype(int) % 3,
                               np.nan),
                 prob_fold2=d["prob_fold1"])
    patients = d.drop_duplicates("patient_id")[["patient_id", "centre", "cohort", "label"]].assign(
        grade=lambda x: x["label"].to_numpy() ^ (np.arange(len(x)) % 4 == 0))
    radf = pd.DataFrame({"rad_a": np.arange(len(patients), dtype=float), "rad_empty": np.nan},
                        index=patients["patient_id"].to_numpy())
    cfg = config.load("params/smoke.yaml", {"signatures": {"size_adjust": True, "cv": "cnn"}})
    fi = sig.fusion_inputs(cfg, patients, d, radf)
    slots = [f"axial{o:+d}" for o in (0, 1, -1, 2, -2, -3)]
    assert fi.inst_cols == slots and fi.rad_cols == ["rad_a"]
    assert list(fi.X.columns) == slots + ["rad_a", sig.SIZE_COL] and fi.size_col == sig.SIZE_COL
    assert len(fi.X) == len(patients) and list(fi.meta.columns) == ["cohort", "label"]
    assert fi.train.sum() == 30 and (fi.y == fi.meta["label"].to_numpy()).all()
    # the ROI extent from the central axial instance's box: 10 px larger for the label-1 patients
    np.testing.assert_allclose(fi.X[sig.SIZE_COL],
                               (11 + 10 * fi.meta["label"].to_numpy()) * cfg.crop.spacing_mm[1])
    # the CV is the CNN's folds; two fold models, two views of the validation patients
    splits = list(fi.cv.split(fi.X[fi.train]))
    fold = d.drop_duplicates("patient_id").set_index("patient_id")["fold"].reindex(fi.X.index[fi.train])
    assert len(splits) == 3 and all(set(fold.iloc[te]) == {k} for k, (_, te) in enumerate(splits))
    assert len(fi.views) == 2 and "CNN's 3 cross-fitting folds" in fi.cv_note
    # frozen scores by default, harmonised ones only when asked for; the harmonised copy is there either way
    assert fi.inst is d and fi.inst_frozen is d and fi.sample_weight is None
    ext = fi.meta["cohort"].eq("external").to_numpy()
    assert not np.allclose(fi.inst_harm["prob"], d["prob"]) and fi.harm_log["harmonised"].any()
    on = sig.fusion_inputs(config.load("params/smoke.yaml", {"signatures": {"harmonise_centres": True},
                                                             "cnn": {"deconfound": ["grade"]}}),
                           patients, d, radf)
    pd.testing.assert_frame_equal(on.inst, fi.inst_harm)
    assert on.X.loc[ext, slots].mean().mean() > fi.X.loc[ext, slots].mean().mean() + 0.1
    np.testing.assert_allclose(on.X.loc[~ext], fi.X.loc[~ext])  # only the new centre moves
    w = on.sample_weight
    assert len(w) == 30 and w.mean() == pytest.approx(1.0) and w.std() > 0
    # without the CNN's folds (in-sample CNN): stratified folds
    off = sig.fusion_inputs(cfg, patients, d.assign(fold=np.nan), radf)
    assert off.cv is None and "stratified folds" in off.cv_note and "in-sample" in off.cv_note


def test_fusion_alternative_refits_the_family_with_the_other_fusion_only():
    """The book's one-run comparison of the two fusions: the run's own scores in one column, the same family
    with the other fusion (and nothing else changed) in the other, for either setting of the run."""
    from hcc25d.stats import auc

    X, meta, ic, rc = dataset(seed=3)
    fi = sig.FusionInputs(X=X, meta=meta, inst_cols=ic, rad_cols=rc, size_col=None,
                          extent=pd.Series(1.0, index=X.index), views=[X], cv=None, cv_note="",
                          sample_weight=None, inst=pd.DataFrame(), inst_frozen=pd.DataFrame(),
                          inst_harm=pd.DataFrame(), harm_log=pd.DataFrame())
    y, cohort = meta["label"].to_numpy(), meta["cohort"].to_numpy()
    for run_fusion, other in (("paper", "summary"), ("summary", "paper")):
        Sf = S.model_copy(update={"fusion": run_fusion})
        own = sig.build_models(X, meta, ic, rc, Sf, 0, models=("lr",))["lr"].scores
        t = sig.fusion_alternative("lr", fi, Sf, 0, own).set_index("cohort")
        assert list(t.index) == ["training (cross-validated)", "internal", "external"]
        assert list(t.columns) == ["n", f"AUC (fusion: {run_fusion}, this run)", f"AUC (fusion: {other})"]
        ref = sig.build_models(X, meta, ic, rc, S.model_copy(update={"fusion": other}), 0, models=("lr",))["lr"]
        for c, name in (("training", "training (cross-validated)"), ("external", "external")):
            m = cohort == c
            assert t.loc[name, f"AUC (fusion: {other})"] == pytest.approx(auc(y[m], ref.scores[m]))
            assert t.loc[name, f"AUC (fusion: {run_fusion}, this run)"] == pytest.approx(auc(y[m], own[m]))
        assert t.loc["external", "n"] == 80


def test_radiomics_cv_lets_the_training_folds_decide_whether_the_radiomics_half_enters():
    """``signatures.radiomics: cv``: each family's grid also tries the pipeline without the radiomics half;
    the search keeps whichever cross-validates better (its CV AUC is the better of the two pipelines fitted
    separately), Table 4's best parameters say which, and a dropped half leaves no radiomics feature selected.
    A pipeline with only one half has nothing to choose."""
    X, meta, ic, rc = dataset(seed=5, signal=1.0)
    rng = np.random.default_rng(5)
    noise = {f"portal_original_glcm_N{j}": rng.normal(0, 1, len(X)) for j in range(40)}
    for radiomics, rad in (("signal", rc), ("noise", list(noise))):
        Xr = pd.concat([X[ic], X[rc] if radiomics == "signal" else pd.DataFrame(noise, index=X.index)], axis=1)
        Sl = S.model_copy(update={"models": ("lr",), "grids": {"lr": {"C": [1.0]}}})
        both = sig.build_models(Xr, meta, ic, rad, Sl, 0)["lr"]
        alone = sig.build_models(Xr[ic], meta, ic, [], Sl, 0)["lr"]
        chosen = sig.build_models(Xr, meta, ic, rad, Sl.model_copy(update={"radiomics": "cv"}), 0)["lr"]
        assert chosen.cv_auc == pytest.approx(max(both.cv_auc, alone.cv_auc))
        kept = chosen.best_params["radiomics"]
        assert kept == ("kept" if both.cv_auc >= alone.cv_auc else "dropped")
        feats = sig.selected_features(chosen.search.best_estimator_)["feature"]
        assert feats.str.startswith("rad__").any() == (kept == "kept" and
                                                       sig.selected_features(both.search.best_estimator_)[
                                                           "feature"].str.startswith("rad__").any())
        if radiomics == "signal":
            assert kept == "kept"
    pipe = sig.fusion_pipeline("lr", ic, rc, 0)
    assert set(sig.radiomics_choice(pipe)) == {sig.RADIOMICS_PARAM}
    assert sig.radiomics_choice(sig.fusion_pipeline("lr", ic, [], 0)) == {}
    assert sig.radiomics_choice(sig.fusion_pipeline("lr", [], rc, 0)) == {}
