"""Ablation stage: which model the variants are compared against."""
from types import SimpleNamespace

import pandas as pd

from hcc25d import ablation, config


def _ctx(cnn_repeats, ablation_repeats):
    cfg = config.from_dict({"cnn": {"repeats": cnn_repeats}, "ablations": {"cnn_repeats": ablation_repeats}})
    full = pd.DataFrame({"patient_id": ["a"], "fold": [0], "backbone": ["litecnn"], "prob": [0.5]})
    return SimpleNamespace(cfg=cfg, full_preds=full, raw=None, fold_of={"a": 0}, backbone="litecnn", cache=None,
                           confounders=None, size=None, first_repeat=None)


def test_full_row_is_retrained_when_the_variants_cross_fit_fewer_times(monkeypatch):
    calls = []

    def fake_retrain(raw, variant, cfg, fold_of, backbone, *a, **k):
        calls.append((variant.key, ablation.ablation_repeats(cfg)))
        return pd.DataFrame({"prob": [0.1]})

    monkeypatch.setattr(ablation, "retrain_cnn", fake_retrain)
    same = _ctx(3, 3)
    assert ablation.full_reference(same) is same.full_preds and not calls
    inherit = _ctx(2, None)  # null: as often as the CNN stage
    assert ablation.ablation_repeats(inherit.cfg) == 2 and ablation.full_reference(inherit) is inherit.full_preds
    fewer = _ctx(3, 1)
    out = ablation.full_reference(fewer)
    assert calls == [("full", 1)] and out["prob"].tolist() == [0.1]
    # the CNN stage's first split alone is the same model set as one retrained cross-fitting: reused
    fewer.first_repeat = pd.DataFrame({"prob": [0.2]})
    assert ablation.full_reference(fewer) is fewer.first_repeat and len(calls) == 1
    two = _ctx(3, 2)  # two repeats: no stored equivalent, retrained
    two.first_repeat = fewer.first_repeat
    ablation.full_reference(two)
    assert calls[-1] == ("full", 2)


def test_retrained_variants_use_the_ablation_repeats(monkeypatch):
    from hcc25d import cnn

    seen = {}

    def fake_crossfit(bags, make, C, seed, **k):
        seen.update(repeats=C.repeats, loss=C.loss, fold_of=k["fold_of"])
        return "preds", None, None, None

    monkeypatch.setattr(cnn, "crossfit_predict", fake_crossfit)
    monkeypatch.setattr(cnn, "reference_shift", lambda bags, how: (bags, None))
    monkeypatch.setattr(ablation, "subset_bags", lambda bags, v, ch: bags)
    cfg = config.from_dict({"cnn": {"repeats": 3, "loss": "bag"}, "ablations": {"cnn_repeats": 1}})
    v = next(v for v in ablation.VARIANTS if v.key == "instance-loss")
    assert ablation.retrain_cnn(None, v, cfg, {"a": 0}, "litecnn", progress=False) == "preds"
    assert seen == {"repeats": 1, "loss": "instance", "fold_of": {"a": 0}}


def _twin_scores(seed=0, n=300):
    """Patients of two cohorts whose outcome shows in two traits; in cohort "external" the diameter goes
    with the peritumoral enhancement (through the outcome), in "internal" it does not. The score reads the
    heterogeneity (0.5 logit per SD) and the diameter (1.0 per ln unit), never the enhancement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, traits = [], []
    for c in ("internal", "external"):
        y = rng.integers(0, 2, n)
        pae, het = rng.normal(0.9 * y, 1.0), rng.normal(0.5 * y, 1.0)
        ld = np.log(40.0) + (0.4 * (2 * y - 1) if c == "external" else 0.0) + rng.normal(0, 0.3, n)
        score = 0.5 * het + 1.0 * (ld - np.log(40.0)) + rng.normal(0, 0.2, n)
        for i in range(n):
            pid = f"{c}-{i}"
            traits.append({"patient_id": pid, "u_pae": pae[i], "u_satellites": rng.normal(), "u_heterogeneity": het[i],
                           "diameter_mm": float(np.exp(ld[i])), "irregular_margin": bool(rng.integers(0, 2)),
                           "necrosis": bool(rng.integers(0, 2)), "vessel_contact": False, "n_extra_tumours": 0})
            for k in range(3):  # three instances around the patient's score
                rows.append({"patient_id": pid, "cohort": c, "label": int(y[i]), "instance": k,
                             "prob": 1 / (1 + np.exp(-(score[i] + (k - 1) * 0.1)))})
    return pd.DataFrame(rows), pd.DataFrame(traits).set_index("patient_id")


def test_trait_loadings_read_what_the_score_follows_at_equal_size():
    import numpy as np

    preds, traits = _twin_scores()
    L = ablation.trait_loadings({("a twin", "net"): preds, "plain": preds}, traits)
    assert set(L["twin"]) == {"a twin", ""} and set(L["model"]) == {"net", "plain"}
    g = L[L["model"] == "net"].set_index(["cohort", "term"])
    sd_het = traits["u_heterogeneity"].std()
    for c in ("internal", "external"):
        het, pae = g.loc[(c, "heterogeneity")], g.loc[(c, "peritumoral enhancement")]
        assert abs(het["coef"] - 0.5 * sd_het) < 3 * het["se"] and het["coef"] > 10 * het["se"]
        assert abs(pae["coef"]) < 3 * pae["se"]  # not read, at equal size
        assert abs(g.loc[(c, "ln diameter"), "coef"] - 1.0) < 0.1
        assert np.isnan(g.loc[(c, "vessel contact"), "coef"])  # constant in the cohort
        assert g.loc[(c, "heterogeneity"), "n"] == 300
    # a plain correlation picks the enhancement up through the outcome where the size goes with it
    score = preds.groupby("patient_id")["prob"].mean()
    ext = [p for p in score.index if p.startswith("external")]
    assert score[ext].corr(traits.loc[ext, "u_pae"], method="spearman") > 0.15
    # the size adjustment is undone first: an adjusted copy gives the same loadings
    shift = np.log(traits["diameter_mm"]).reindex(preds["patient_id"]).to_numpy() - np.log(40.0)
    logit = np.log(preds["prob"] / (1 - preds["prob"])) - shift
    adjusted = preds.assign(prob=1 / (1 + np.exp(-logit)), size_shift=shift)
    L2 = ablation.trait_loadings({"plain": adjusted}, traits)
    assert np.allclose(L2["coef"], L[L["model"] == "plain"]["coef"], equal_nan=True, atol=1e-6)
