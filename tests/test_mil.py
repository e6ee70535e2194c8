"""MIL fusion transformers: scikit-learn API, training-only fitting, exact histogram values."""
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimator

from hcc25d import mil, stats


def test_bag_matrix_orders_slots():
    rows = []
    for pid in ("a", "b"):
        for view, off in (("axial", 0), ("axial", -1), ("axial", 1), ("sagittal", 0), ("coronal", 0)):
            rows.append({"patient_id": pid, "view": view, "offset": off, "prob": 0.1 * (off + 2)})
    m = mil.bag_matrix(pd.DataFrame(rows))
    assert list(m.columns) == ["axial+0", "axial+1", "axial-1", "sagittal+0", "coronal+0"]
    assert m.loc["a", "axial-1"] == pytest.approx(0.1)
    central = mil.bag_matrix(pd.DataFrame(rows), views=[("axial", 0)])
    assert list(central.columns) == ["axial+0"]


def test_histogram_values():
    X = np.array([[0.05, 0.15, 0.95, np.nan], [0.5, 0.5, 0.5, 0.5]])
    h = mil.LikelihoodHistogram(n_bins=10, threshold=0.5).fit(X)
    out = h.transform(X)
    assert out.shape == (2, 12)
    assert np.allclose(out[0, :10], [1 / 3, 1 / 3, 0, 0, 0, 0, 0, 0, 0, 1 / 3])
    assert np.allclose(out[0, 10:], [2 / 3, 1 / 3]) and np.allclose(out[1, 10:], [0, 1])
    assert h.get_feature_names_out()[-1] == "hist_label1"


def test_youden_threshold_fitted_on_training_only():
    rng = np.random.default_rng(0)
    Xtr = np.vstack([rng.uniform(0, 0.4, (10, 5)), rng.uniform(0.6, 1, (10, 5))])
    ytr = np.r_[np.zeros(10), np.ones(10)]
    h = mil.LikelihoodHistogram().fit(Xtr, ytr)
    assert Xtr[:10].max() < h.threshold_ <= Xtr[10:].min()
    # transforming other data never changes the fitted state
    before = (h.threshold_, h.edges_.copy())
    h.transform(rng.uniform(0, 1, (7, 5)))
    assert h.threshold_ == before[0] and np.array_equal(h.edges_, before[1])


def test_bow_vocabulary_and_idf_from_training_bags_only():
    rng = np.random.default_rng(1)
    Xtr = rng.uniform(0, 0.5, (20, 7))
    ytr = np.r_[np.zeros(10), np.ones(10)]
    b = mil.BagOfWordsTfidf(n_words=4).fit(Xtr, ytr)
    vocab, idf = dict(b.vocabulary_), b.idf_.copy()
    Xother = rng.uniform(0.5, 1.0, (30, 7))  # a validation cohort with other values
    out = b.transform(Xother)
    assert b.vocabulary_ == vocab and np.array_equal(b.idf_, idf)
    assert out.shape == (30, len(vocab))
    # refitting on the union would change the IDF: the training-only fit is what we keep
    both = mil.BagOfWordsTfidf(n_words=4).fit(np.vstack([Xtr, Xother]), np.r_[ytr, np.zeros(30)])
    assert both.vocabulary_ != vocab or not np.allclose(both.idf_, idf)
    assert set(b.get_feature_names_out()) <= {f"bow_p{i}" for i in range(4)} | {"bow_y0", "bow_y1"}


@pytest.mark.parametrize("est", [mil.LikelihoodHistogram(threshold=0.5), mil.BagOfWordsTfidf(threshold=0.5),
                                 mil.LogitSummary()])
def test_sklearn_estimator_checks(est):
    # scikit-learn's own API checks (clone, fit/transform contracts, no logic in __init__, ...); the
    # transformers take probabilities in [0, 1], so checks that feed arbitrary data are expected to pass too
    check_estimator(est)


def test_logit_summary_moves_with_a_shift_of_the_scores():
    """The summary is of the logits (mean, SD, quartiles ...), a bag's missing instances are skipped, and a
    shift of every logit by c moves every location feature by c and leaves the SD: nothing was fitted on the
    training scores that a shifted centre could fall outside of."""
    from hcc25d.stats import logit

    rng = np.random.default_rng(4)
    P = rng.uniform(0.05, 0.95, (40, 9))
    P[3, 4:] = np.nan
    t = mil.LogitSummary().fit(P)
    F = t.transform(P)
    assert list(t.get_feature_names_out()) == [f"logit_{s}" for s in mil.SUMMARY_STATS]
    L = logit(P[3, :4])
    np.testing.assert_allclose(F[3], [L.mean(), L.std(), L.min(), np.quantile(L, 0.25), np.median(L),
                                      np.quantile(L, 0.75), L.max()])
    c = -1.5
    shifted = 1 / (1 + np.exp(-(logit(P) + c)))
    G = t.transform(shifted)
    sd = list(t.get_feature_names_out()).index("logit_sd")
    loc = [i for i in range(F.shape[1]) if i != sd]
    np.testing.assert_allclose(G[:, loc], F[:, loc] + c, atol=1e-9)
    np.testing.assert_allclose(G[:, sd], F[:, sd], atol=1e-9)
    assert np.isnan(t.transform(np.full((1, 9), np.nan))).all()
    with pytest.raises(ValueError, match="unknown statistic"):
        mil.LogitSummary(stats=("mean", "mode")).fit(P)


def test_in_pipeline():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    X = np.vstack([rng.uniform(0, 0.5, (30, 7)), rng.uniform(0.4, 1, (30, 7))])
    y = np.r_[np.zeros(30), np.ones(30)]
    p = make_pipeline(mil.LikelihoodHistogram(), LogisticRegression()).fit(X, y)
    assert p.score(X, y) > 0.8


def test_slot_auc_tells_which_slot_carries_the_signal():
    from hcc25d import evaluation

    rng = np.random.default_rng(0)
    rows = []
    for cohort in ("external", "training"):
        for i in range(40):
            y = i % 2
            for view, off in (("axial", 0), ("axial", 2), ("sagittal", 0)):
                p = (0.2 + 0.6 * y) if (view, off) == ("axial", 2) else rng.uniform()
                rows.append({"patient_id": f"{cohort}{i}", "cohort": cohort, "label": y, "view": view,
                             "offset": off, "prob": p})
    t = evaluation.slot_auc(pd.DataFrame(rows))
    assert list(t.index) == ["training", "external"]  # the package's cohort order
    assert list(t.columns) == ["axial+0", "axial+2", "sagittal+0"]  # central axial first
    assert (t["axial+2"] == 1.0).all()
    assert (t[["axial+0", "sagittal+0"]] < 0.8).all().all()


def test_instance_reference_shows_each_model_and_its_score_before_size_adjustment():
    from hcc25d import evaluation

    rng = np.random.default_rng(1)
    n = 80
    idx = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "label": np.arange(n) % 2,
                        "cohort": np.where(np.arange(n) < 40, "training", "external")})
    good = idx.assign(prob=np.clip(0.3 + 0.4 * idx["label"] + rng.normal(0, 0.2, n), 0.01, 0.99))
    shift = np.where(idx["label"] == 1, 1.0, -1.0)  # the adjustment took the label's separation away
    lg = np.log(good["prob"] / (1 - good["prob"])) - shift
    adjusted = good.assign(prob=1 / (1 + np.exp(-lg)), size_shift=shift)
    plain = idx.assign(prob=rng.uniform(size=n))
    t = evaluation.instance_reference({"net": adjusted, "reference": plain})
    assert list(t.index) == ["training", "external"]
    assert list(t.columns) == ["net", "net, before size adjustment", "reference"]  # no shift, no extra column
    assert np.allclose(t["net, before size adjustment"], [stats.auc(g["label"], g["prob"])
                                                          for _, g in good.groupby("cohort", sort=False)])
    assert (t["net, before size adjustment"] > t["net"]).all()
    assert (t["reference"] < 0.8).all()


def _two_centre_instances(seed=0, n_train=60, n_internal=30, n_external=40, n_small=5, shift=-3.0):
    """Instance probabilities of four cohorts: training and internal at centre 1, external at centre 2
    (logits shifted by ``shift`` and halved in spread), and a tiny centre 3; signal: the label raises the
    logits by one."""
    rng = np.random.default_rng(seed)
    rows = []
    groups = [("training", 1, n_train, 0.0, 1.0), ("internal", 1, n_internal, 0.0, 1.0),
              ("external", 2, n_external, shift, 0.5), ("small", 3, n_small, shift, 1.0)]
    for cohort, centre, n, d, sd in groups:
        for i in range(n):
            y = i % 2
            lg = (rng.normal(size=6) + y) * sd + d
            for j, v in enumerate(1 / (1 + np.exp(-lg))):
                rows.append({"patient_id": f"{cohort}-{i}", "cohort": cohort, "centre": centre, "label": y,
                             "view": "axial", "offset": j - 3, "prob": v,
                             "prob_fold1": np.nan if cohort == "training" else v})
    return pd.DataFrame(rows)


def test_harmonise_centres_maps_only_new_centres_onto_the_training_scale():
    from hcc25d.stats import logit

    d = _two_centre_instances()
    centre = d.drop_duplicates("patient_id").set_index("patient_id")["centre"]
    h, log = mil.harmonise_centres(d, centre)
    ref = logit(d.loc[d.cohort == "training", "prob"])
    ext = d.cohort == "external"
    for col in ("prob", "prob_fold1"):  # the external centre: the training logits' mean and SD, every column
        lg = logit(h.loc[ext, col])
        assert lg.mean() == pytest.approx(ref.mean(), abs=1e-6) and lg.std() == pytest.approx(ref.std(), rel=1e-6)
        # an increasing map: each instance keeps its rank within the centre
        assert (np.argsort(h.loc[ext, col].to_numpy()) == np.argsort(d.loc[ext, col].to_numpy())).all()
    same = d.cohort.isin(["training", "internal", "small"])  # centre 1 has training patients; centre 3 is tiny
    pd.testing.assert_frame_equal(h[same], d[same])
    assert set(log["centre"]) == {2, 3}
    assert log.set_index(["centre", "column"]).loc[(2, "prob"), "harmonised"]
    assert not log[log["centre"] == 3]["harmonised"].any()
    assert (log.loc[log.centre == 2, "mean before"] < ref.mean() - 2).all()
    # nothing to do without a new centre
    h1, log1 = mil.harmonise_centres(d[d.centre == 1], centre)
    pd.testing.assert_frame_equal(h1, d[d.centre == 1])
    assert log1.empty


def test_slot_auc_plot_keeps_every_slot_on_the_chart():
    from hcc25d import plotting

    t = pd.DataFrame({"axial+0": [0.30, 0.70], "coronal+0": [0.97, np.nan]}, index=["training", "external"])
    fig = plotting.slot_auc_plot({"net": t, "reference": t - 0.05})
    low, high = fig.axes[0].get_ylim()
    assert low < 0.25 and high >= 0.97  # a near-chance or inverted small-run AUC is drawn, not clipped
    assert len(fig.axes) == 2 and [ln.get_label() for ln in fig.axes[0].lines[:2]] == ["net", "reference"]
