"""Ablation stage: which model the variants are compared against."""
from types import SimpleNamespace

import pandas as pd
import pytest

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
    monkeypatch.setattr(cnn, "add_arterial_excess", lambda bags, ch: seen.update(excess=True) or (bags, None))
    cfg = config.from_dict({"cnn": {"repeats": 3, "loss": "bag"}, "ablations": {"cnn_repeats": 1}})
    v = next(v for v in ablation.VARIANTS if v.key == "instance-loss")
    assert ablation.retrain_cnn(None, v, cfg, {"a": 0}, "litecnn", progress=False) == "preds"
    assert seen == {"repeats": 1, "loss": "instance", "fold_of": {"a": 0}, "excess": True}


@pytest.mark.parametrize("keep", [True, False])
def test_a_variants_checkpoints_are_kept_or_removed_once_its_predictions_are_in(monkeypatch, tmp_path, keep):
    from hcc25d import cnn

    def fake_crossfit(bags, make, C, seed, cache_dir=None, name="", **k):
        for tag in ("fold1", "fold2"):
            cnn.checkpoint_path(cache_dir, name, tag).write_bytes(b"weights")
        return "preds", None, None, None

    monkeypatch.setattr(cnn, "crossfit_predict", fake_crossfit)
    monkeypatch.setattr(cnn, "reference_shift", lambda bags, how: (bags, None))
    monkeypatch.setattr(ablation, "subset_bags", lambda bags, v, ch: bags)
    monkeypatch.setattr(cnn, "add_arterial_excess", lambda bags, ch: (bags, None))
    other = cnn.checkpoint_path(tmp_path, "litecnn", "fold1")  # the CNN stage's, say: never touched
    other.write_bytes(b"")
    cfg = config.from_dict({"ablations": {"keep_checkpoints": keep}})
    v = next(v for v in ablation.VARIANTS if v.key == "2d")
    assert ablation.retrain_cnn(None, v, cfg, {"a": 0}, "litecnn", tmp_path, progress=False) == "preds"
    assert len(list(tmp_path.iterdir())) == (3 if keep else 1) and other.exists()


def test_timing_variant_changes_the_augmentation_only(monkeypatch):
    from hcc25d import cnn

    seen = {}

    def fake_crossfit(bags, make, C, seed, **k):
        seen.update(timing=C.augment.timing, flip=C.augment.flip, loss=C.loss, reference=C.intensity_reference)
        return "preds", None, None, None

    monkeypatch.setattr(cnn, "crossfit_predict", fake_crossfit)
    monkeypatch.setattr(cnn, "reference_shift", lambda bags, how: (bags, None))
    monkeypatch.setattr(ablation, "subset_bags", lambda bags, v, ch: bags)
    monkeypatch.setattr(cnn, "add_arterial_excess", lambda bags, ch: (bags, None))
    cfg = config.from_dict({"cnn": {"augment": {"flip": False}}})
    by_key = {v.key: v for v in ablation.VARIANTS}
    ablation.retrain_cnn(None, by_key["timing"], cfg, {"a": 0}, "litecnn", progress=False)
    assert seen == {"timing": ablation.ABLATION_TIMING, "flip": False, "loss": cfg.cnn.loss,
                    "reference": cfg.cnn.intensity_reference}
    ablation.retrain_cnn(None, by_key["full"], cfg, {"a": 0}, "litecnn", progress=False)
    assert seen["timing"] == cfg.cnn.augment.timing == 0.0
    assert "timing" in config.from_dict({}).ablations.variants


def test_the_arterial_excess_follows_the_cnn_stage_except_where_a_variant_cannot_or_must_not_have_it():
    on = config.from_dict({}).cnn
    off = config.from_dict({"cnn": {"arterial_excess": False}}).cnn
    by_key = {v.key: v for v in ablation.VARIANTS}
    assert ablation.uses_excess(by_key["full"], on) and ablation.uses_excess(by_key["2d"], on)
    assert not ablation.uses_excess(by_key["no-excess"], on)  # the factor the variant isolates
    assert not ablation.uses_excess(by_key["arterial"], on)  # one phase: nothing to set it against
    assert not ablation.uses_excess(by_key["full"], off)
    names = ablation.loading_model_names()
    assert names[by_key["no-excess"].name] == "2.5D, no arterial excess" and len(names) == 3


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


def test_trait_probe_trains_on_each_trait_split_at_the_training_median(monkeypatch):
    """The probe relabels every patient by its trait against the *training* median, trains with the full
    model's folds and seed but one cross-fitting, no size adjustment and no deconfounding, and reports how
    each network's score follows each trait."""
    import numpy as np

    from hcc25d import cnn
    from hcc25d.crop25d import Bags

    rng = np.random.default_rng(1)
    cohorts = ["training"] * 40 + ["internal"] * 30
    pids = [f"p{i:02d}" for i in range(70)]
    shift = np.array([0.0 if c == "training" else 2.0 for c in cohorts])  # validation traits run higher
    traits = pd.DataFrame({k: rng.normal(shift, 1.0) for k in ablation.PROBE_TRAITS}, index=pids)
    index = pd.DataFrame({"patient_id": np.repeat(pids, 2), "cohort": np.repeat(cohorts, 2),
                          "label": np.repeat(rng.integers(0, 2, 70), 2)})
    seen = {}

    def fake_crossfit(bags, make, C, seed, **k):
        trait = next(t for t in ablation.PROBE_TRAITS if ablation.LOADING_TERMS[t] in k["name"])
        seen[trait] = dict(zip(bags.index["patient_id"], bags.index["label"]))
        seen["settings"] = (C.repeats, C.size_adjust, tuple(C.deconfound), seed, k["fold_of"], k["prediction"])
        seen.setdefault("names", []).append(k["name"])
        u = traits.loc[bags.index["patient_id"], trait].to_numpy()
        score = u if trait == "u_heterogeneity" else rng.normal(size=len(u))  # only one trait is "seen"
        return bags.index.assign(prob=1 / (1 + np.exp(-score))), None, None, None

    monkeypatch.setattr(cnn, "crossfit_predict", fake_crossfit)
    refs = []
    monkeypatch.setattr(cnn, "reference_shift", lambda bags, how: refs.append(how) or (bags, None))
    monkeypatch.setattr(cnn, "add_arterial_excess", lambda bags, ch: (bags, None))
    cfg = config.from_dict({"cnn": {"repeats": 3, "size_adjust": True, "deconfound": ["tumor_size"]}})
    meta = pd.DataFrame({"cohort": cohorts}, index=pids)
    full = index.assign(prob=0.5)
    ctx = SimpleNamespace(cfg=cfg, raw=Bags(np.zeros((140, 1), np.float16), index), meta=meta, cache=None,
                          backbone="litecnn", fold_of={"p00": 0}, predictions={("default", ablation.VARIANTS[0].name): full},
                          nc_raw=Bags(np.zeros((140, 1), np.float16), index.assign(tum_plain=0.5)))
    probe = ablation.trait_probe(ctx, traits)
    # the negative-control twin is probed for the traits it moves onto the central slice, and only those;
    # the peritumoral enhancement once more with the two-point intensity reference
    assert sorted(n for n in seen["names"] if "negative control" in n) == [
        "litecnn [negative control, trained on peritumoral enhancement]",
        "litecnn [negative control, trained on satellites]",
        "litecnn [negative control, two-point reference, trained on peritumoral enhancement]"]
    assert len(seen["names"]) == 6 and refs.count("two-point") == 1 and refs.count("parenchyma") == 5
    assert set(probe["cohort"]) == {"internal"}  # the models were trained on every training patient
    nc = probe[probe["twin"] == "negative-control twin"]
    assert set(nc["trained on"]) == {"peritumoral enhancement", "satellites"} and len(nc) == 2
    tp = probe[probe["twin"] == ablation.PROBE_TWINS[2]]
    assert tp["trained on"].tolist() == ["peritumoral enhancement"]
    # a run that already references the tumour (or whose crops lack its level) is not probed again
    ctx.nc_raw = Bags(ctx.nc_raw.x, index)
    seen["names"].clear()
    ablation.trait_probe(ctx, traits)
    assert len(seen["names"]) == 5
    probe = probe[probe["twin"] == "default twin"]
    assert seen["settings"] == (1, False, (), cfg.seed, {"p00": 0}, "insample")
    train = traits.index[:40]
    for t in ablation.PROBE_TRAITS:
        med = traits.loc[train, t].median()
        assert seen[t] == {p: int(traits.loc[p, t] > med) for p in pids}
        assert sum(seen[t].values()) > 45  # most validation patients lie above the training median
    P = probe.set_index(["trained on", "cohort"])
    assert list(P.index.get_level_values(0).unique()) == [ablation.PROBE_OUTCOME] + [
        ablation.LOADING_TERMS[t] for t in ablation.PROBE_TRAITS]
    het = P.loc[("heterogeneity", "internal")]
    assert het["ρ heterogeneity"] > 0.99 and abs(het["ρ peritumoral enhancement"]) < 0.5 and het["n"] == 30
    assert abs(P.loc[("peritumoral enhancement", "internal"), "ρ peritumoral enhancement"]) < 0.5
    assert P.loc[("heterogeneity", "internal"), "AUC on its label"] > 0.999  # the score is the trait itself
    assert np.isnan(P.loc[(ablation.PROBE_OUTCOME, "internal"), "ρ satellites"])  # a constant score
    words = ablation._probe_lines(probe)
    assert any(line.startswith("* trained on heterogeneity: +1.00.") for line in words)
    unseen = next(line for line in words if line.startswith("Below ρ 0.5"))
    assert "peritumoral enhancement" in unseen and "heterogeneity" not in unseen
    assert not any(line.startswith("The clean label teaches") for line in words)  # constant score: no ρ


def test_probe_words_say_when_the_central_placement_makes_a_trait_readable():
    rows = []
    for twin, rho in (("default twin", 0.2), ("negative-control twin", 0.7)):
        for c in ("training", "internal", "external"):
            rows.append({"twin": twin, "trained on": "satellites", "cohort": c, "n": 50, "ρ satellites": rho})
    words = "\n".join(ablation._probe_lines(pd.DataFrame(rows)))
    assert "trained on satellites: +0.20 / +0.20 / +0.20; on the negative-control twin" in words
    assert "reads satellites clearly better" in words and "Below ρ 0.5 in every validation cohort" in words
    same = pd.DataFrame(rows).assign(**{"ρ satellites": 0.6})
    words = "\n".join(ablation._probe_lines(same))
    assert "clearly better" not in words and "Below ρ" not in words and "one validation cohort" not in words
    split = pd.DataFrame(rows).assign(**{"ρ satellites": [0.2, 0.7, 0.3] * 2})  # internal 0.7, external 0.3
    words = "\n".join(ablation._probe_lines(split))
    assert "in one validation cohort but below ρ 0.5 in another: satellites" in words and "every" not in words
    method = pd.DataFrame(rows[:3]).assign(**{"trained on": ablation.PROBE_OUTCOME, "ρ satellites": 0.1})
    words = "\n".join(ablation._probe_lines(pd.concat([method, split])))
    assert "The clean label teaches satellites far better" in words


def test_patient_scores_pool_as_the_loss_does(monkeypatch):
    import numpy as np

    from hcc25d import cnn
    from hcc25d.crop25d import Bags

    preds = pd.DataFrame({"patient_id": ["a", "a", "b", "b"], "cohort": "internal", "label": [1, 1, 0, 0],
                          "prob": 1 / (1 + np.exp(-np.array([0.0, 2.0, 1.0, 1.0])))})
    mean = ablation.raw_patient_scores(preds)["score"]
    lse = ablation.raw_patient_scores(preds, "lse")["score"]
    assert np.allclose(mean, [1.0, 1.0]) and np.isclose(lse["a"], np.log((1 + np.exp(2)) / 2))
    assert np.isclose(lse["b"], 1.0)  # all instances agree: the common value
    # the probe scores a patient the way the network was trained to: pooled like the bag loss
    got = []
    monkeypatch.setattr(ablation, "probe_table",
                        lambda models, t, pooling="mean": got.append(pooling) or pd.DataFrame({"cohort": []}))
    monkeypatch.setattr(cnn, "crossfit_predict", lambda bags, *a, **k: (bags.index, None, None, None))
    monkeypatch.setattr(cnn, "reference_shift", lambda bags, how: (bags, None))
    monkeypatch.setattr(cnn, "add_arterial_excess", lambda bags, ch: (bags, None))
    index = pd.DataFrame({"patient_id": ["a", "b"], "cohort": "training", "label": [1, 0]})
    traits = pd.DataFrame({k: [1.0, 0.0] for k in ablation.PROBE_TRAITS}, index=["a", "b"])
    for loss, want in (("bag", "lse"), ("instance", "mean")):
        cfg = config.from_dict({"cnn": {"loss": loss, "bag_pooling": "lse"}})
        ctx = SimpleNamespace(cfg=cfg, raw=Bags(np.zeros((2, 1), np.float16), index), nc_raw=None, cache=None,
                              meta=pd.DataFrame({"cohort": "training"}, index=["a", "b"]), backbone="litecnn",
                              fold_of={"a": 0, "b": 1}, predictions={})
        ablation.trait_probe(ctx, traits)
        assert got[-1] == want


def test_probe_words_say_what_the_two_point_reference_moves():
    rows = []
    for twin, rho in (("default twin", (0.2, 0.6, 0.1)), ("negative-control twin", (0.9, 0.9, 0.4)),
                      (ablation.PROBE_TWINS[2], (0.9, 0.85, 0.8))):
        for c, r in zip(("training", "internal", "external"), rho):
            rows.append({"twin": twin, "trained on": "peritumoral enhancement", "cohort": c, "n": 50,
                         "ρ peritumoral enhancement": r})
    words = "\n".join(ablation._probe_lines(pd.DataFrame(rows)))
    assert "there with the two-point intensity reference: +0.90 / +0.85 / +0.80" in words
    assert "peritumoral enhancement in the external cohort (+0.40 → +0.80)" in words
    same = pd.DataFrame(rows).assign(**{"ρ peritumoral enhancement": 0.5})
    assert "Referencing the tumour" not in "\n".join(ablation._probe_lines(same))


def test_variants_fusion_reads_the_scores_as_the_signatures_stage_does():
    """With ``signatures.harmonise_centres`` the ablation variants' fusion reads harmonised scores, as the
    signatures stage's does; off (the default), the variant's own predictions unchanged."""
    import numpy as np

    from hcc25d import mil

    rng = np.random.default_rng(0)
    rows = [{"patient_id": f"{c}-{i}", "cohort": c, "label": i % 2, "view": "axial", "offset": j,
             "prob": 1 / (1 + np.exp(-(rng.normal() + (-2 if c == "external" else 0))))}
            for c in ("training", "external") for i in range(25) for j in (0, 1)]
    preds = pd.DataFrame(rows)
    first = preds.drop_duplicates("patient_id").set_index("patient_id")
    centre = first["cohort"].map({"training": 1, "external": 2})
    off = config.load("params/smoke.yaml", {})
    on = config.load("params/smoke.yaml", {"signatures": {"harmonise_centres": True}})
    assert ablation.Context(off, None, preds, None, None, "lr", centre=centre).fusion_input(preds) is preds
    got = ablation.Context(on, None, preds, None, None, "lr", centre=centre).fusion_input(preds)
    pd.testing.assert_frame_equal(got, mil.harmonise_centres(preds, centre)[0])
    assert got.loc[preds.cohort == "external", "prob"].mean() > preds.loc[preds.cohort == "external", "prob"].mean() + 0.1


def test_yardstick_table_rows_in_cohort_order_with_margin_shares():
    import numpy as np

    rng = np.random.default_rng(0)
    cohorts = ["external"] * 30 + ["training"] * 60 + ["internal"] * 30  # the manifest's order, not the book's
    ids = [f"p{i:03d}" for i in range(len(cohorts))]
    y = np.tile([0, 1], len(ids) // 2)
    meta = pd.DataFrame({"cohort": cohorts, "label": y}, index=ids)
    readout = pd.DataFrame({"pae": y + rng.normal(0, 1.0, len(ids)), "nodules": rng.normal(0, 1, len(ids))},
                           index=ids)
    dl = pd.Series(np.where(y == 1, 0.7, 0.3), index=ids)  # separates perfectly
    ctx = SimpleNamespace(meta=meta, cv=None, cfg=SimpleNamespace(seed=1))
    ref = {"image": {"training": 0.8, "internal": 0.75, "external": 0.9}}
    t = ablation.yardstick_table(ctx, readout, dl, ref)
    assert t["cohort"].tolist() == ["training", "internal", "external"]
    assert t["n"].tolist() == [60, 30, 30] and np.allclose(t["DL_2.5D"], 1.0)
    share = t.set_index("cohort")["DL_2.5D: share of the reference margin"]
    assert np.allclose(share, [0.5 / 0.3, 0.5 / 0.25, 0.5 / 0.4])
    assert t["knowledge-driven reading"].between(0.5, 1.0).all()  # the readout carries the label
