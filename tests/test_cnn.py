"""CNN stages: weights fallback, leakage-safe cross-fitting, training mechanics, Grad-CAM, 3D network."""
import numpy as np
import pandas as pd
import pytest
import torch

from hcc25d import cnn, cnn3d, config, crop25d, stats

_PRM = {"loss": "instance", "size_adjust": False, "repeats": 1, "epochs": 2, "batch_size": 16, "lr": 0.003, "weight_decay": 1e-4, "warmup_epochs": 1, "patience": 3,
       "val_fraction": 0.25, "deterministic": True, "augment": {"flip": True, "rotate_deg": 10.0, "intensity": 0.1}}


def P(**kw):
    """Training settings as the stages pass them: a validated, typed config section."""
    return config.CnnCfg.model_validate(dict(_PRM, **kw))


def tiny_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 1))


def make_bags(n_train=24, n_int=8, n_ext=8, inst=3, size=16, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    rows, xs = [], []
    k = 0
    for cohort, n in (("training", n_train), ("internal", n_int), ("external", n_ext)):
        for i in range(n):
            y = i % 2
            pid = f"{cohort[:3]}{i:03d}"
            for j in range(inst):
                x = rng.normal(0.5, 0.1, (3, size, size)).astype(np.float32)
                x[0, 4:12, 4:12] += signal * y * 0.3
                xs.append(x)
                rows.append({"patient_id": pid, "bag": pid, "instance": j, "cohort": cohort, "label": y,
                             "view": "axial", "offset": j})
                k += 1
    return crop25d.Bags(np.stack(xs).astype(np.float16), pd.DataFrame(rows))


class Recorder(torch.nn.Module):
    """A tiny model that records, while training, the patient code carried by channel 2 of every input."""

    seen: list = []

    def __init__(self):
        super().__init__()
        self.net = tiny_model()
        self.codes = set()
        Recorder.seen.append(self.codes)

    def forward(self, x):
        if self.training:  # channel 2 is constant per patient: undo the normalisation to read the code
            raw = x[:, 2].mean((1, 2)) * cnn.IMAGENET_STD[2] + cnn.IMAGENET_MEAN[2]
            self.codes.update(int(round(float(v) * 1000)) for v in raw)
        return self.net(x)


def test_crossfit_never_trains_on_a_patient_it_predicts():
    bags = make_bags()
    codes = {}
    for i, pid in enumerate(bags.index["patient_id"].unique()):
        codes[pid] = 100 + i  # a code per patient, written into channel 2 of all its instances
        bags.x[bags.rows([pid]), 2] = codes[pid] / 1000
    Recorder.seen = []
    prm = P(val_fraction=0.0, augment={"flip": True}, fold_scale="none")
    preds, logs, models, meta = cnn.crossfit_predict(bags, Recorder, prm, seed=1, folds=3, progress=False)
    train = preds[preds["cohort"] == "training"]
    assert len(Recorder.seen) == 3 and set(models) == {"fold1", "fold2", "fold3"}
    # the data each fold model actually received, decoded from its inputs
    for f, seen in enumerate(Recorder.seen):
        held = train.loc[train["source"] == f"fold{f + 1}", "patient_id"].unique()
        assert len(held) and not {codes[p] for p in held} & seen
        assert seen == {codes[p] for p in set(train["patient_id"]) - set(held)}
    # validation patients never reach training; the folds partition the training patients
    val_codes = {codes[p] for p in preds.loc[preds["cohort"] != "training", "patient_id"]}
    assert not val_codes & set().union(*Recorder.seen)
    assert sorted(meta["fold"]) == sorted(train["patient_id"].unique())
    assert train.groupby("patient_id")["fold"].nunique().eq(1).all()
    # one model set: validation patients are scored by the mean of the same fold models
    others = preds[preds["cohort"] != "training"]
    assert (others["source"] == "mean of 3 fold models").all()
    x = bags.x[bags.rows(others["patient_id"].unique())]
    mean = np.mean([cnn.predict(m, x) for m in models.values()], axis=0)
    assert np.allclose(np.sort(others["prob"].to_numpy()), np.sort(mean), atol=1e-6)
    assert np.allclose(cnn.predict(cnn.ensemble(models), x), mean, atol=1e-5)
    assert preds["prob"].between(0, 1).all() and train["prob_insample"].notna().all()
    assert set(logs["fit"]) == {"fold1", "fold2", "fold3"} and (logs["steps"] > 0).all()


def test_repeated_crossfit_averages_models_that_never_saw_the_patient():
    bags = make_bags()
    codes = {}
    for i, pid in enumerate(bags.index["patient_id"].unique()):
        codes[pid] = 100 + i
        bags.x[bags.rows([pid]), 2] = codes[pid] / 1000
    Recorder.seen = []
    prm = P(val_fraction=0.0, augment={"flip": True}, repeats=2, fold_scale="none")
    preds, logs, models, meta = cnn.crossfit_predict(bags, Recorder, prm, seed=1, folds=3, progress=False)
    assert list(models) == ["fold1", "fold2", "fold3", "rep2-fold1", "rep2-fold2", "rep2-fold3"]
    splits = meta["repeat_folds"]
    train = preds[preds["cohort"] == "training"]
    pids = sorted(train["patient_id"].unique())
    assert len(splits) == 2 and splits[0] == meta["fold"] and splits[1] != splits[0]
    # the seeds of the second repeat draw another partition of the training patients, not a relabelling
    same = {frozenset(p for p in pids if sp[p] == f) for sp in splits for f in range(3)}
    assert len(same) > 3 and all(sorted(sp) == pids for sp in splits)
    for (tag, m), seen in zip(models.items(), Recorder.seen):
        r, f = (0, int(tag[-1]) - 1) if tag.startswith("fold") else (1, int(tag[-1]) - 1)
        held = {p for p in pids if splits[r][p] == f}
        assert seen == {codes[p] for p in set(pids) - held}  # trained on every other training patient
        assert sorted(meta["trained_on"][tag]) == sorted(set(pids) - held)
    # a training patient's probability: the mean of the two models (one per repeat) that did not see it
    x = {p: bags.x[bags.rows([p])] for p in pids}
    for p in pids[:6]:
        m0, m1 = models[f"fold{splits[0][p] + 1}"], models[f"rep2-fold{splits[1][p] + 1}"]
        want = (cnn.predict(m0, x[p]) + cnn.predict(m1, x[p])) / 2
        assert np.allclose(train.loc[train["patient_id"] == p, "prob"], want, atol=1e-6)
    # a validation patient's fold-k column: the mean of the fold-k models of both repeats; prob: of all six
    others = preds[preds["cohort"] != "training"]
    xo = bags.x[others.index.to_numpy()]
    for k in (1, 2, 3):
        want = (cnn.predict(models[f"fold{k}"], xo) + cnn.predict(models[f"rep2-fold{k}"], xo)) / 2
        assert np.allclose(others[f"prob_fold{k}"], want, atol=1e-6)
    assert np.allclose(others["prob"], np.mean([cnn.predict(m, xo) for m in models.values()], axis=0), atol=1e-6)
    assert (others["source"] == "mean of 3 fold models × 2 repeats").all()
    assert train["prob_fold1"].isna().all()
    assert set(logs["fit"]) == set(models)
    assert (train["source"] == "out of fold in 2 repeats").all()
    # the first split alone: exactly what repeats: 1 gives with the same seeds (the ablations' reference)
    first = meta["first_repeat"]
    Recorder.seen = []
    single, _, m1, _ = cnn.crossfit_predict(bags, Recorder, P(val_fraction=0.0, augment={"flip": True},
                                                              fold_scale="none"), seed=1, folds=3, progress=False)
    cols = ["prob", "prob_insample", "source", "fold", "prob_fold1", "prob_fold2", "prob_fold3"]
    pd.testing.assert_frame_equal(first[cols], single[cols])
    assert not np.allclose(first["prob"], preds["prob"])


def test_models_progress_is_one_bar_over_the_sets_models(capsys):
    bags = make_bags(n_train=12, n_int=2, n_ext=2)
    prm = P(val_fraction=0.0, epochs=1, repeats=2)
    cnn.crossfit_predict(bags, tiny_model, prm, seed=1, folds=3, progress="models", verbose=False, name="net")
    err = capsys.readouterr().err
    assert "net: 100%" in err and "6/6" in err and "rep2-fold3" in err  # six models, the last one named
    assert "net fold1" not in err  # no bar per model's epochs
    cnn.crossfit_predict(bags, tiny_model, prm, seed=1, folds=3, progress=True, verbose=False, name="net")
    assert "net fold1" in capsys.readouterr().err
    cnn.crossfit_predict(bags, tiny_model, prm, seed=1, folds=3, progress=False, verbose=False, name="net")
    assert capsys.readouterr().err == ""


def test_checkpoints_of_a_named_variant_are_plain_files(tmp_path):
    bags = make_bags(n_train=8, n_int=2, n_ext=2)
    prm = P(val_fraction=0.0, epochs=1)
    cnn.crossfit_predict(bags, tiny_model, prm, seed=1, folds=2, progress=False, verbose=False,
                         name="net [axial 2.5D: no sagittal/coronal view]", cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["net_axial_2.5D_no_sagittal_coronal_view_-fold1.pt",
                     "net_axial_2.5D_no_sagittal_coronal_view_-fold2.pt"]


def test_crossfit_target_replaces_the_outcome_in_the_loss_only():
    bags = make_bags(n_train=30, n_int=10, n_ext=10, inst=2, signal=1.0, seed=4)
    prm = P(epochs=4, lr=0.01, val_fraction=0.0, repeats=2)
    base, _, _, meta = cnn.crossfit_predict(bags, tiny_model, prm, seed=3, folds=3, progress=False)
    label = bags.index.drop_duplicates("patient_id").set_index("patient_id")["label"]
    # the outcome itself as the target: the same folds, models and predictions
    same, _, _, meta_s = cnn.crossfit_predict(bags, tiny_model, prm, seed=3, folds=3, progress=False,
                                              target=label.astype(float))
    assert meta_s["repeat_folds"] == meta["repeat_folds"]
    assert np.allclose(same["prob"], base["prob"], atol=1e-6)
    # the opposite target: the models learn it (out-of-fold AUC against the outcome falls below chance),
    # while the folds and the label column stay the outcome's
    flip, _, _, meta_f = cnn.crossfit_predict(bags, tiny_model, prm, seed=3, folds=3, progress=False,
                                              target=1.0 - label)
    assert meta_f["repeat_folds"] == meta["repeat_folds"]
    assert (flip["label"] == base["label"]).all()
    train = flip["cohort"] == "training"
    assert stats.auc(base.loc[train, "label"], base.loc[train, "prob"]) > 0.8
    assert stats.auc(flip.loc[train, "label"], flip.loc[train, "prob"]) < 0.2
    with pytest.raises(ValueError, match="every training patient"):
        cnn.crossfit_predict(bags, tiny_model, prm, seed=3, folds=3, progress=False, target=label.iloc[:5])
    with pytest.raises(ValueError, match="every training patient"):
        cnn.crossfit_predict(bags, tiny_model, prm, seed=3, folds=3, progress=False, target=label * 2.0)


def test_latent_label_reference_is_the_method_taught_the_latent_score():
    bags = make_bags(n_train=30, n_int=10, n_ext=10, inst=2, signal=1.0, seed=5)
    C = config.CnnCfg.model_validate(dict(_PRM, val_fraction=0.0, repeats=1, folds=3, epochs=3, width=4,
                                          arterial_excess=False))
    pid = bags.index.drop_duplicates("patient_id")["patient_id"]
    label = bags.index.drop_duplicates("patient_id").set_index("patient_id")["label"]
    llr = pd.Series(np.where(label.to_numpy() == 1, -3.0, 3.0), index=pid.to_numpy())  # against the outcome
    ref = cnn.latent_label_reference(bags, C, "litecnn", llr, seed=2)
    preds, *_ = cnn.train_backbones(bags, C, 2, "cpu")
    assert (ref["backbone"] == cnn.LABEL_REFERENCE).all() and (ref["label"] == preds["label"]).all()
    assert ref["fold"].fillna(-1).equals(preds["fold"].fillna(-1))  # the method's folds
    train = ref["cohort"] == "training"
    assert stats.auc(preds.loc[train, "label"], preds.loc[train, "prob"]) > 0.7
    assert stats.auc(ref.loc[train, "label"], ref.loc[train, "prob"]) < 0.3  # it learned the latent score


def test_out_of_fold_and_held_out_probabilities_share_one_scale():
    # training, internal and external patients drawn from the same distribution: the out-of-fold
    # probabilities of the training patients and each fold model's probabilities of the others must agree
    # (the fold models' own offsets differ, so the plain mean is narrower: it is not what fitted steps get)
    bags = make_bags(n_train=60, n_int=60, n_ext=60, inst=2, signal=1.0, seed=3)
    prm = P(epochs=6, lr=0.01, val_fraction=0.0)
    preds, _, _, _ = cnn.crossfit_predict(bags, tiny_model, prm, seed=2, folds=3, progress=False)
    oof = preds.loc[preds["cohort"] == "training", "prob"]
    others = preds[preds["cohort"] != "training"]
    held = pd.concat([others[f"prob_fold{k}"] for k in (1, 2, 3)])  # every fold model's view
    assert oof.std() > 0.02  # the models learned something (else every scale is a constant)
    assert stats.auc(preds.loc[oof.index, "label"], oof) > 0.8
    assert abs(oof.mean() - held.mean()) < 0.03
    assert 0.85 < held.std() / oof.std() < 1.18
    assert np.allclose(others[["prob_fold1", "prob_fold2", "prob_fold3"]].mean(axis=1), others["prob"])


def test_align_scale_puts_two_models_on_one_scale():
    # two "models" that rank the same instances identically but on different logit scales
    z = np.random.default_rng(0).normal(size=4000)
    p1, p2 = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-(3 * z - 2)))
    sc = cnn.fold_scales([("a", p1[:2000]), ("b", p2[2000:])])
    assert sc.loc["b", "sd"] > 2 * sc.loc["a", "sd"] and sc.loc["b", "mu"] < sc.loc["a", "mu"] - 1
    a1, a2 = cnn.align_scale(p1, sc.loc["a"], sc), cnn.align_scale(p2, sc.loc["b"], sc)
    assert np.allclose(a1, a2, atol=0.02)  # the same instance gets (nearly) the same probability
    assert (np.argsort(a2) == np.argsort(p2)).all()  # one model's order is unchanged
    # pooling the two halves, each scored by a different model: the scale difference costs AUC
    y = (z + np.random.default_rng(1).normal(size=4000) > 0).astype(int)
    mixed = np.r_[p1[:2000], p2[2000:]]
    aligned = np.r_[a1[:2000], a2[2000:]]
    assert stats.auc(y, aligned) > stats.auc(y, mixed) + 0.02


def test_crossfit_aligns_each_fold_model_on_its_held_out_fold():
    bags = make_bags(n_train=30, n_int=10, n_ext=10, inst=2, signal=1.0, seed=4)
    preds, _, models, meta = cnn.crossfit_predict(bags, tiny_model, P(epochs=3, lr=0.01, val_fraction=0.0),
                                                  seed=2, folds=3, progress=False)
    sc = meta["fold_scale"]
    assert list(sc.index) == ["fold1", "fold2", "fold3"] and (sc["sd"] > 0).all()
    train = preds[preds["cohort"] == "training"]
    others = preds[preds["cohort"] != "training"]
    xo = bags.x[others.index.to_numpy()]
    for k in (1, 2, 3):
        m = models[f"fold{k}"]
        held = train[train["source"] == f"fold{k}"]
        raw = cnn.predict(m, bags.x[held.index.to_numpy()])
        lg = np.log(raw / (1 - raw))
        assert np.isclose(sc.loc[f"fold{k}", "mu"], lg.mean(), atol=1e-5)  # measured on its held-out fold
        assert np.allclose(held["prob"], cnn.align_scale(raw, sc.loc[f"fold{k}"], sc), atol=1e-6)
        assert np.allclose(others[f"prob_fold{k}"], cnn.align_scale(cnn.predict(m, xo), sc.loc[f"fold{k}"], sc),
                           atol=1e-6)
    # aligned: every fold model's held-out logits have the set's mean and SD
    lo = np.log(train["prob"] / (1 - train["prob"]))
    by = lo.groupby(train["source"]).agg(["mean", "std"])
    assert np.allclose(by["mean"], sc["mu"].mean(), atol=1e-4)
    assert np.allclose(by["std"], sc["sd"].mean(), rtol=0.05)


def test_training_is_deterministic_and_learns():
    bags = make_bags(signal=3.0)
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    prm = P(epochs=6, lr=0.01)
    m1, log1 = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=3, progress=False)
    m2, log2 = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=3, progress=False)
    assert np.allclose(cnn.predict(m1, bags.x), cnn.predict(m2, bags.x))
    assert stats.auc(y, cnn.predict(m1, bags.x)) > 0.9
    assert {"epoch", "train_loss", "lr", "steps", "seconds", "images_per_s"} <= set(log1.columns)


def test_ema_returns_the_moving_average_of_the_weights_and_trains_on_the_live_ones():
    bags = make_bags(signal=3.0)
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    prm = P(epochs=3, lr=0.01, val_fraction=0.0)
    seen = []
    real = cnn._ema_update

    def spy(ema_state, model, decay):
        seen.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, decay))
        real(ema_state, model, decay)

    plain, _ = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=3, progress=False)
    cnn._ema_update = spy
    try:
        avg, log = cnn.train_model(tiny_model, bags.x, y, g, prm.model_copy(update={"ema": 0.9}), seed=3,
                                   progress=False)
    finally:
        cnn._ema_update = real
    assert len(seen) == int(log["steps"].iloc[-1]) > 3  # one update per optimiser step
    # the live trajectory is the plain one: the averaging does not feed back into training
    last = seen[-1][0]
    assert all(torch.allclose(last[k], v) for k, v in plain.state_dict().items())
    # the returned weights are the average: start from the initial weights (a run that cannot move them),
    # then decay per step with the warmed-up decay
    init = cnn.train_model(tiny_model, bags.x, y, g, prm.model_copy(update={"epochs": 1, "lr": 1e-12}), seed=3,
                           progress=False)[0].state_dict()
    expect = {k: v.clone() for k, v in init.items()}
    for t, (state, d) in enumerate(seen, start=1):
        assert d == pytest.approx(min(0.9, t / (t + 1)))
        expect = {k: d * expect[k] + (1 - d) * state[k] for k in expect}
    got = avg.state_dict()
    assert all(torch.allclose(got[k], expect[k], atol=1e-5) for k in expect)
    assert not all(torch.allclose(got[k], last[k]) for k in expect)


def test_pool_logits():
    t = torch.tensor([1.0, 1.0, 1.0, -2.0, 0.0, 4.0])
    lse = cnn.pool_logits(t, [3, 3], "lse")
    assert lse[0].item() == pytest.approx(1.0)  # agreeing instances: their common value
    assert 0.0 - 2 / 3 < lse[1].item() < 4.0 and lse[1].item() > 4.0 - np.log(3) - 1e-6  # a smooth maximum
    assert cnn.pool_logits(t, [3, 3], "mean")[1].item() == pytest.approx(2 / 3)
    p = np.array([0.5, 0.9, 0.5, 0.2])
    out = cnn.pool_probabilities(p, np.array(["b", "a", "b", "a"]), "mean")  # sorted by group: a, b
    assert out[1] == pytest.approx(0.5) and out[0] == pytest.approx(1 / (1 + np.exp(-(np.log(9) + np.log(0.25)) / 2)))
    with pytest.raises(ValueError, match="bag_pooling"):
        cnn.pool_logits(t, [6], "max")


def one_instance_bags(n=48, inst=5, size=16, seed=0):
    """Bags where a positive patient shows its trait on exactly one (random) instance."""
    rng = np.random.default_rng(seed)
    xs, rows, where = [], [], {}
    for i in range(n):
        y, pid = i % 2, f"p{i:03d}"
        hit = int(rng.integers(inst))
        where[pid] = hit
        for j in range(inst):
            x = rng.normal(0.5, 0.05, (3, size, size)).astype(np.float32)
            if y and j == hit:
                x[0, 5:11, 5:11] += 0.4
            xs.append(x)
            rows.append({"patient_id": pid, "instance": j, "label": y})
    return np.stack(xs), pd.DataFrame(rows), where


def test_bag_loss_finds_the_instance_that_shows_the_trait():
    x, idx, where = one_instance_bags()
    y, g = idx["label"].to_numpy(), idx["patient_id"].to_numpy()
    prm = P(loss="bag", bag_batch=8, epochs=15, lr=0.01, val_fraction=0.0, augment={"flip": True})
    model, log = cnn.train_model(tiny_model, x, y, g, prm, seed=1, progress=False)
    assert log["steps"].iloc[-1] == 15 * 6  # 48 patients, 8 per step
    p = cnn.predict(model, x)
    pooled = cnn.pool_probabilities(p, g, "lse")
    assert stats.auc(idx.groupby("patient_id")["label"].first().to_numpy(), pooled) > 0.95
    pos = idx.assign(p=p)[idx["label"] == 1]
    top = pos.loc[pos.groupby("patient_id")["p"].idxmax()]
    assert np.mean([where[r.patient_id] == r.instance for r in top.itertuples()]) > 0.9
    # the patients' loss, not the instances': negatives' instances stay low, not only on average
    assert p[y == 0].max() < np.sort(top["p"].to_numpy())[len(top) // 4]
    # early stopping on held-out patients: their loss is taken per patient too
    _, vlog = cnn.train_model(tiny_model, x, y, g, P(loss="bag", bag_batch=8, epochs=3, lr=0.01), seed=1,
                              progress=False, val_ids=["p000", "p001", "p002", "p003"])
    assert vlog["val_loss"].notna().all() and vlog["steps"].iloc[-1] == 3 * 6  # 44 patients left, 8 per step


def size_confounded_preds(seed=0, n=300, inst=3):
    """Instance probabilities whose logit = 1.0 · log(extent) + 0.8 · outcome + noise; the extent goes with
    the outcome in training and against it in the external cohort."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cohort = ("training", "internal", "external")[i % 3]
        y = int(rng.uniform() < 0.5)
        sign = -1 if cohort == "external" else 1
        ext = float(np.exp(rng.normal(3.5 + 0.3 * sign * (y - 0.5), 0.4)))
        z = 1.0 * np.log(ext) - 3.5 + 0.8 * y + rng.normal(0, 0.3)
        for j in range(inst):
            p = 1 / (1 + np.exp(-(z + rng.normal(0, 0.1))))
            rows.append({"patient_id": f"p{i:03d}", "cohort": cohort, "label": y, "prob": p,
                         "prob_fold1": p, "extent": ext})
    df = pd.DataFrame(rows)
    return df.drop(columns="extent"), df.drop_duplicates("patient_id").set_index("patient_id")["extent"]


def test_size_adjust_removes_the_size_slope_and_keeps_the_outcome():
    preds, ext = size_confounded_preds()
    out, info = cnn.size_adjust(preds, ext)
    assert info["slope"] == pytest.approx(1.0, abs=0.1) and info["n_training"] == 100
    pat = out.groupby("patient_id").agg(prob=("prob", "mean"), label=("label", "first"), cohort=("cohort", "first"))
    before = preds.groupby("patient_id")["prob"].mean()
    logit = np.log(pat["prob"] / (1 - pat["prob"]))
    resid = logit - 0.8 * pat["label"]  # what is left once the outcome's part is taken out
    assert abs(np.corrcoef(np.log(ext.reindex(pat.index)), resid)[0, 1]) < 0.1
    ext_rows = pat["cohort"] == "external"
    assert stats.auc(pat.loc[ext_rows, "label"], pat.loc[ext_rows, "prob"]) > \
        stats.auc(pat.loc[ext_rows, "label"], before[ext_rows]) + 0.1
    assert np.allclose(out["prob"], out["prob_fold1"])  # every probability column shifted alike
    assert np.allclose(cnn.undo_size_adjust(out)["prob"], preds["prob"])
    # fitted on training patients only: validation outcomes do not move the slope
    flipped = preds.assign(label=np.where(preds["cohort"] != "training", 1 - preds["label"], preds["label"]))
    assert cnn.size_adjust(flipped, ext)[1]["slope"] == pytest.approx(info["slope"])
    with pytest.raises(ValueError, match="no ROI extent"):
        cnn.size_adjust(preds, ext.iloc[:-5])


def test_score_size_outcome_recovers_slope_and_outcome_per_cohort():
    preds, ext = size_confounded_preds(n=600)
    out, _ = cnn.size_adjust(preds, ext)
    t = cnn.score_size_outcome(out, ext).set_index("cohort")
    assert list(t.index) == ["training", "internal", "external"] and (t["n"] == 200).all()
    # the book's cohort order whatever order the predictions come in
    rev = cnn.score_size_outcome(out.iloc[::-1], ext)
    assert list(rev["cohort"]) == ["training", "internal", "external"]
    assert np.allclose(rev.set_index("cohort")["outcome"], t["outcome"])
    # the raw score is logit = 1.0 log(extent) + 0.8 outcome: both recovered in every cohort, from raw scores
    assert np.allclose(t["size slope"], 1.0, atol=0.1) and np.allclose(t["outcome"], 0.8, atol=0.1)
    assert (t["outcome SE"] > 0).all() and (t["outcome SE"] < 0.1).all()
    # size goes with the outcome in training and against it externally; the adjustment helps there
    assert t.loc["training", "AUC size"] > 0.6 > 0.4 > t.loc["external", "AUC size"]
    assert t.loc["external", "AUC adjusted"] > t.loc["external", "AUC raw"] + 0.1
    # without a size adjustment the raw and adjusted columns are the same score
    same = cnn.score_size_outcome(preds, ext)
    assert np.allclose(same["AUC raw"], same["AUC adjusted"])


def test_crossfit_applies_the_size_adjustment():
    bags = make_bags(n_train=24, inst=2, signal=1.0, seed=5)
    pats = bags.index["patient_id"].unique()
    ext = pd.Series(np.linspace(20, 80, len(pats)), index=pats)
    with pytest.raises(ValueError, match="ROI extent"):
        cnn.crossfit_predict(bags, tiny_model, P(size_adjust=True, epochs=1), seed=1, folds=2, progress=False)
    preds, _, _, meta = cnn.crossfit_predict(bags, tiny_model, P(size_adjust=True, epochs=1, val_fraction=0.0),
                                             seed=1, folds=2, progress=False, size=ext)
    assert "size_adjust" in meta and np.isfinite(meta["size_adjust"]["slope"])
    assert preds["size_shift"].abs().max() > 0
    raw, _, _, _ = cnn.crossfit_predict(bags, tiny_model, P(size_adjust=False, epochs=1, val_fraction=0.0),
                                        seed=1, folds=2, progress=False)
    assert np.allclose(cnn.undo_size_adjust(preds)["prob"], raw["prob"], atol=1e-6)


def test_learning_rate_warms_up_then_decays():
    f = cnn._lr_lambda("cosine", total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)
    assert f(5) < f(9) < f(10) and f(50) < 1.0 and f(100) == pytest.approx(0.0, abs=1e-9)
    assert cnn._lr_lambda("none", 100, 0)(70) == 1.0


def test_augmentation_keeps_intensities():
    x = torch.rand(8, 3, 16, 16)
    out = cnn._augment(x.clone(), torch.Generator().manual_seed(0), config.AugmentCfg(flip=True), dims=2)
    # flips and transpositions only move pixels: each image keeps its sorted values
    assert torch.allclose(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    noisy = cnn._augment(x.clone(), torch.Generator().manual_seed(0), config.AugmentCfg(flip=False, noise=0.05), dims=2)
    assert 0 < float((noisy - x).std()) < 0.05


def test_reference_shift_moves_parenchyma_to_the_training_median():
    bags = make_bags()
    pats = bags.index["patient_id"]
    ref = pats.map({p: (0.4 if p.startswith("ext") else 0.3) for p in pats.unique()})
    bags.index["ref_arterial"], bags.index["ref_plain"], bags.index["ref_portal"] = ref, ref + 0.1, ref + 0.2
    shifted, shifts = cnn.reference_shift(bags)
    ext = bags.rows([p for p in pats.unique() if p.startswith("ext")])
    assert np.allclose(shifted.x[ext].astype(float) - bags.x[ext].astype(float), -0.1, atol=2e-3)
    assert np.allclose(shifts.loc["tra000"], 0) and np.allclose(shifts.loc["ext000"], -0.1)
    same, zero = cnn.reference_shift(bags, "none")
    assert same.x is bags.x and (zero == 0).all().all()
    with pytest.raises(ValueError, match="ref_"):
        cnn.reference_shift(make_bags())


def test_two_point_reference_puts_liver_and_tumour_at_the_training_levels():
    """A later arterial phase (the external patients) lowers the tumour's enhancement against the liver: the
    shift alone keeps that difference, the two-point reference removes it; a phase whose tumour does not
    stand out from the liver is only shifted; without the tumour levels it says what to rerun."""
    bags = make_bags(signal=0.0)
    pats = bags.index["patient_id"]
    ext = pats.str.startswith("ext").to_numpy()
    x = np.full(bags.x.shape, 0.5, np.float32)  # liver 0.5 in every phase
    x[:, 0, 4:12, 4:12] = np.where(ext, 0.62, 0.70)[:, None, None]  # arterial tumour: +0.2, externally +0.12
    x[:, 1, 4:12, 4:12] = 0.51  # plain: the tumour barely stands out (below the threshold)
    x[:, 2, 4:12, 4:12] = np.where(ext, 0.44, 0.40)[:, None, None]  # portal wash-out
    x[ext] += 0.03  # and a scanner offset
    bags = crop25d.Bags(x.astype(np.float16), bags.index)
    for ch, c in enumerate(("arterial", "plain", "portal")):
        bags.index[f"ref_{c}"] = x[:, ch, 0, 0]
        bags.index[f"tum_{c}"] = x[:, ch, 8, 8]
    shifted, _ = cnn.reference_shift(bags, "parenchyma")
    tp, shifts = cnn.reference_shift(bags, "two-point")
    inside = lambda b, ch: b.x[:, ch, 8, 8].astype(float) - b.x[:, ch, 0, 0].astype(float)  # noqa: E731
    assert np.allclose(inside(shifted, 0)[ext], 0.12, atol=4e-3)  # the shift keeps the timing's difference
    assert np.allclose(inside(tp, 0), 0.2, atol=4e-3)  # the two-point reference removes it
    assert np.allclose(tp.x[:, :, 0, 0].astype(float), 0.5, atol=2e-3)  # the liver at the training level
    assert np.allclose(inside(tp, 2), -0.1, atol=4e-3)
    gain = shifts.attrs["gain"]
    assert np.allclose(gain.loc["ext000", "arterial"], 0.2 / 0.12) and np.allclose(gain.loc["tra000"], 1.0)
    assert np.allclose(gain["plain"], 1.0)  # 0.01 of contrast: shifted only
    assert np.allclose(tp.x[:, 1].astype(float), shifted.x[:, 1].astype(float), atol=1e-3)
    wide = crop25d.Bags(bags.x, bags.index.assign(tum_arterial=np.where(ext, 0.51, 0.70)))
    assert cnn.reference_shift(wide, "two-point")[1].attrs["gain"].loc["ext000", "arterial"] == 1.0
    with pytest.raises(ValueError, match="tum_"):
        cnn.reference_shift(crop25d.Bags(bags.x, bags.index.drop(columns=["tum_plain"])), "two-point")


def test_vessel_reference_rescales_the_arterial_enhancement_by_the_bloods():
    """A later arterial phase (the external patients) scales every arterial enhancement over the plain phase,
    the blood's too: normalised to the vessel ROI's enhancement, the tumour's arterial enhancement and its
    contrast to the liver come back to the training patients' while the plain and portal channels are only
    shifted; a patient without a vessel reading is not rescaled; without the columns it says what to add;
    with no plain channel the arterial channel is scaled about its own parenchyma level."""
    bags = make_bags(signal=0.0)
    pats = bags.index["patient_id"]
    ext = pats.str.startswith("ext").to_numpy()
    k = np.where(ext, 0.85, 1.0)[:, None, None]
    x = np.full(bags.x.shape, 0.40, np.float32)  # plain: liver 0.40, tumour 0.34
    x[:, 1, 4:12, 4:12] = 0.34
    x[:, 0] = x[:, 1] + k * 0.08  # arterial: liver enhances by 0.08 ...
    x[:, 0, 4:12, 4:12] = 0.34 + k * 0.30  # ... the tumour by 0.30
    x[:, 2] = 0.55
    x[ext] += 0.03  # and a scanner offset
    bags = crop25d.Bags(x.astype(np.float16), bags.index)
    for ch, c in enumerate(("arterial", "plain", "portal")):
        bags.index[f"ref_{c}"] = x[:, ch, 0, 0]
    bags.index["ves_plain"] = 40.0 + 8.0 * ext
    bags.index["ves_arterial"] = bags.index["ves_plain"] + np.where(ext, 85.0, 100.0)
    bags.index["ves_portal"] = 175.0
    inside = lambda b, ch: b.x[:, ch, 8, 8].astype(float) - b.x[:, ch, 0, 0].astype(float)  # noqa: E731
    par, _ = cnn.reference_shift(bags, "parenchyma")
    ves, shifts = cnn.reference_shift(bags, "vessel")
    assert np.allclose(inside(par, 0)[ext], 0.85 * 0.22 - 0.06, atol=4e-3)  # the shift keeps the timing
    assert np.allclose(inside(ves, 0), 0.22 - 0.06, atol=4e-3)  # the vessel's gain gives it back
    assert np.allclose(ves.x[:, 0, 0, 0].astype(float), 0.48, atol=2e-3)  # liver at the training level
    assert np.allclose(ves.x[:, 1:].astype(float), par.x[:, 1:].astype(float), atol=1e-3)  # others: shifted
    gain = shifts.attrs["gain"]
    assert np.allclose(gain.loc["ext000", "arterial"], 100 / 85) and np.allclose(gain.loc["tra000"], 1.0)
    assert np.allclose(gain[["plain", "portal"]], 1.0)
    unread = bags.index.assign(ves_arterial=np.where(pats == "ext000", np.nan, bags.index["ves_arterial"]))
    assert cnn.reference_shift(crop25d.Bags(bags.x, unread), "vessel")[1].attrs["gain"].loc["ext000",
                                                                                         "arterial"] == 1.0
    with pytest.raises(ValueError, match="vessel_hu_plain"):
        cnn.reference_shift(crop25d.Bags(bags.x, bags.index.drop(columns=["ves_plain"])), "vessel")
    one = crop25d.Bags(bags.x[:, :1].copy(), bags.index.drop(columns=["ref_plain", "ref_portal"]))
    art, _ = cnn.reference_shift(one, "vessel")
    want = np.where(ext, (0.85 * 0.22 - 0.06) * 100 / 85, 0.16)  # the contrast to the liver, rescaled
    assert np.allclose(inside(art, 0), want, atol=4e-3)


def test_checkpoint_resume(tmp_path, monkeypatch):
    bags = make_bags()
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    prm = P(epochs=3, val_fraction=0.0)
    full, log_full = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=5, checkpoint=tmp_path / "full.pt", progress=False)
    steps_per_epoch = int(log_full["steps"].iloc[0])
    # a run interrupted in the middle of its third epoch (after the second epoch's checkpoint) ...
    calls = {"n": 0}
    real = cnn._augment

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch + 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cnn, "_augment", interrupted)
    ck = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        cnn.train_model(tiny_model, bags.x, y, g, prm, seed=5, checkpoint=ck, progress=False)
    assert torch.load(ck, weights_only=False)["epoch"] == 1  # epochs 1 and 2 were saved
    monkeypatch.setattr(cnn, "_augment", real)
    # ... and resumed: weights, optimiser, schedule and random streams restored, the same model
    resumed, log_res = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=5, checkpoint=ck, progress=False)
    assert log_res["epoch"].tolist() == [1, 2, 3]
    assert log_res["steps"].tolist() == log_full["steps"].tolist()
    assert np.allclose(cnn.predict(full, bags.x), cnn.predict(resumed, bags.x), atol=1e-6)
    # a checkpoint of other settings is not resumed
    other, log_other = cnn.train_model(tiny_model, bags.x, y, g, prm.model_copy(update={"lr": 0.001}), seed=5, checkpoint=ck, progress=False)
    assert log_other["steps"].tolist() == log_full["steps"].tolist()
    assert not np.allclose(cnn.predict(full, bags.x), cnn.predict(other, bags.x))
    # nor a checkpoint of another network with the same settings (a changed architecture trains anew)
    wider = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),  # noqa: E731
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 1))
    _, log_wide = cnn.train_model(wider, bags.x, y, g, prm, seed=5, checkpoint=tmp_path / "full.pt", progress=False)
    assert log_wide["epoch"].tolist() == [1, 2, 3]  # all three epochs trained, none loaded


def test_a_finished_checkpoint_keeps_the_returned_model_only_and_is_reused(tmp_path, monkeypatch):
    bags = make_bags(n_train=12, n_int=2, n_ext=2)
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    prm = P(epochs=2, val_fraction=0.25)
    ck = tmp_path / "m.pt"
    model, log = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=5, checkpoint=ck, progress=False,
                                 val_ids=sorted(set(g))[:3])
    saved = torch.load(ck, weights_only=False)
    assert saved["finished"] and set(saved) == {"fingerprint", "finished", "model", "log"}  # no optimiser
    monkeypatch.setattr(cnn, "_augment", lambda *a, **k: pytest.fail("a finished model was trained again"))
    again, log_again = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=5, checkpoint=ck, progress=False,
                                       val_ids=sorted(set(g))[:3])
    assert np.array_equal(cnn.predict(model, bags.x), cnn.predict(again, bags.x))
    assert log_again.equals(log)


def test_a_full_disk_is_said_before_the_checkpoint_is_written(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    bags = make_bags(n_train=8, n_int=2, n_ext=2)
    y, g = bags.index["label"].to_numpy(), bags.index["patient_id"].to_numpy()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(cnn.CheckpointSpace, match=r"disk space for the checkpoint of net fold1.*cnn.resume: false"):
        cnn.train_model(tiny_model, bags.x, y, g, P(epochs=1), seed=5, checkpoint=tmp_path / "m.pt",
                        progress=False, desc="net fold1")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_remove_checkpoints_takes_one_sets_files_only(tmp_path):
    for name in ("litecnn", "litecnn-latent-label", "litecnn [2D: central axial slice]"):
        for tag in ("fold1", "rep2-fold3", "final"):
            cnn.checkpoint_path(tmp_path, name, tag).write_bytes(b"")
    assert cnn.remove_checkpoints(tmp_path, "litecnn") == 3
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 6 and all(n.startswith(("litecnn-latent-label-", "litecnn_2D_")) for n in left)
    assert cnn.remove_checkpoints(tmp_path, "litecnn [2D: central axial slice]") == 3
    assert cnn.remove_checkpoints(tmp_path / "none", "litecnn") == 0


def test_weights_fallback_is_explicit(monkeypatch, capsys):
    import torchvision

    tries = []

    def offline(*a, **k):
        if k.get("weights") is not None:
            tries.append(k["weights"])
            print(f'Downloading: "{k["weights"].url}" to the hub cache')  # what torch.hub prints
            orig(*a)  # as torchvision does: the network is built (random weights drawn) before the fetch
            raise OSError("no network")
        return orig(*a, **k)

    orig = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    monkeypatch.setattr(cnn, "_UNAVAILABLE", {})
    with pytest.raises(cnn.WeightsUnavailable, match="on_missing_weights: random"):
        cnn.build_model("resnet18", "imagenet", "fail")
    model, info = cnn.build_model("resnet18", "imagenet", "random")
    assert info["used"] == "random" and info["note"].startswith("FALLBACK") and "no network" in info["note"]
    # the book's warning box shows the reason, even one that looks like an HTML tag
    box = cnn.no_imagenet_warning("resnet18", {"note": "FALLBACK: URLError: <urlopen error [Errno -3]>"})
    assert "&lt;urlopen error [Errno -3]&gt;" in box and "<urlopen" not in box
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1)
    # tried once per process, not once per fold model, and nothing printed into the book
    assert len(tries) == 1 and "Downloading" not in capsys.readouterr().out
    # the fallback starts from the same random weights whether or not this build tried the download
    # (torchvision draws the network's initial weights before it fetches): resumed runs match
    monkeypatch.setattr(cnn, "_UNAVAILABLE", {})
    states = []
    for weights in ("imagenet", "imagenet", "none"):  # tried, not tried again, not asked for
        torch.manual_seed(0)
        states.append(cnn.build_model("resnet18", weights, "random")[0].state_dict())
    assert len(tries) == 2
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])
    _, info = cnn.build_model("resnet18", "none")
    assert info["used"] == "random"


def test_weights_from_path(tmp_path):
    m, _ = cnn.build_model("resnet18", "none")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    m2, info = cnn.build_model("resnet18", str(tmp_path / "w.pt"))
    assert info["used"] == str(tmp_path / "w.pt")
    assert torch.equal(m.state_dict()["conv1.weight"], m2.state_dict()["conv1.weight"])


def test_litecnn_is_light_and_refuses_imagenet():
    m, info = cnn.build_model("litecnn", "none", width=16)
    assert info["used"] == "random" and sum(p.numel() for p in m.parameters()) < 100_000
    assert m.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 1)
    assert cnn.target_layer(m) is m.features[-1]
    with pytest.raises(ValueError, match="no ImageNet weights"):
        cnn.build_model("litecnn", "imagenet")


@pytest.mark.parametrize("name", ["resnet18", "vgg19", "densenet121"])
def test_backbones_get_one_logit_heads(name):
    m, _ = cnn.build_model(name, "none")
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 1)
    assert cnn.target_layer(m) is not None


def test_gradcam_maps():
    m, _ = cnn.build_model("resnet18", "none")
    x = np.random.default_rng(0).random((2, 3, 64, 64)).astype(np.float32)
    maps = cnn.gradcam(m, x, [1, 0])
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_select_backbone_rule():
    t = pd.DataFrame({"backbone": ["a", "a", "b", "b"], "cohort": ["training", "internal"] * 2, "auc": [0.7, 0.9, 0.8, 0.6]})
    assert cnn.select_backbone(t, "cv")[0] == "b"   # training (out-of-fold) AUC decides, not internal
    assert cnn.select_backbone(t, "a")[0] == "a"
    with pytest.raises(ValueError):
        cnn.select_backbone(t, "vgg19")


def test_resnet3d_shapes():
    m = cnn3d.ResNet3D(3, width=4)
    assert m(torch.zeros(2, 3, 32, 32, 32)).shape == (2, 1)
    blocks = [mod for mod in m.modules() if type(mod).__name__ == "BasicBlock3d"]
    assert len(blocks) == 8  # ResNet-18 layout: 4 stages x 2 basic blocks


@pytest.mark.gpu
def test_gpu_training_step():
    bags = make_bags()
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    m, log = cnn.train_model(tiny_model, bags.x, y, g, P(amp=True), seed=1, device="cuda", progress=False)
    assert np.isfinite(log["train_loss"]).all()


def test_deconfounding_weights_make_the_confounder_uninformative():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.6).astype(int)
    size = (rng.random(400) < 0.3 + 0.4 * y).astype(int)  # size goes with the outcome
    w = cnn.deconfounding_weights(y, pd.DataFrame({"tumor_size": size}))
    assert w.mean() == pytest.approx(1.0)
    tot = pd.DataFrame({"y": y, "s": size, "w": w}).groupby(["y", "s"])["w"].sum()
    assert np.allclose(tot, tot.iloc[0])  # every (outcome, size) cell carries the same weight
    # under the weights, size no longer tells the outcome apart (weighted mean of size equal per class)
    m = [np.average(size[y == k], weights=w[y == k]) for k in (0, 1)]
    assert m[0] == pytest.approx(m[1])


def test_deconfounded_training_receives_the_weights():
    bags = make_bags(n_train=30)
    pats = bags.patients().set_index("patient_id")
    conf = pd.DataFrame({"tumor_size": (np.arange(len(pats)) % 3 == 0).astype(int)}, index=pats.index)
    prm = P(val_fraction=0.0)
    a, _, _, _ = cnn.crossfit_predict(bags, tiny_model, prm, seed=1, folds=3, progress=False)
    b, _, _, _ = cnn.crossfit_predict(bags, tiny_model, prm, seed=1, folds=3, progress=False, confounders=conf)
    assert not np.allclose(a["prob"], b["prob"])  # the weighted loss trains other models


# --------------------------------------------------------------------------------------------------
# the arterial excess
# --------------------------------------------------------------------------------------------------
def _tissue_bags(n_train=12, n_val=6, size=24, blob=0.12, seed=0):
    """Two tissues with their own (arterial, plain, portal) levels, image noise, and in every patient a
    spot that brightens in the arterial phase only (``blob`` window units)."""
    rng = np.random.default_rng(seed)
    levels = {"liver": (0.48, 0.42, 0.62), "tumour": (0.66, 0.36, 0.50)}
    xs, rows = [], []
    for cohort, n in (("training", n_train), ("internal", n_val)):
        for i in range(n):
            x = np.empty((3, size, size), np.float32)
            for c in range(3):
                x[c] = levels["liver"][c]
                x[c, :, size // 2:] = levels["tumour"][c]
            x += rng.normal(0, 0.03, x.shape).astype(np.float32)
            x[0, 4:10, 4:10] += blob  # liver that enhances in the arterial phase only
            xs.append(x)
            pid = f"{cohort[:3]}{i:03d}"
            rows.append({"patient_id": pid, "bag": pid, "instance": 0, "cohort": cohort, "label": i % 2,
                         "view": "axial", "offset": 0})
    return crop25d.Bags(np.stack(xs).astype(np.float16), pd.DataFrame(rows))


def test_arterial_excess_marks_arterial_only_enhancement_and_keeps_the_phases():
    bags = _tissue_bags()
    out, ae = cnn.add_arterial_excess(bags, ("arterial", "plain", "portal"))
    assert out.x.shape == (len(bags.x), 4) + bags.x.shape[2:]
    np.testing.assert_array_equal(out.x[:, :3], bags.x)  # the three phases are unchanged
    exc = out.x[:, 3].astype(np.float32)
    spot = exc[:, 5:9, 5:9].mean() - 0.5
    liver = exc[:, 14:20, 2:8].mean() - 0.5  # liver without the spot: what the table predicts
    tumour = exc[:, 4:20, 16:22].mean() - 0.5  # the tumour is bright in the arterial phase, and expected so
    # scale 2 × about 0.12 (less at the smoothed edges); the liver's cells hold the spot's pixels too, so the
    # table sits a little above the plain liver and the liver's own excess a little below zero
    assert spot - liver > 0.15, (spot, liver)
    assert abs(liver) < 0.05 and abs(tumour) < 0.03, (liver, tumour)
    # the table: the liver's cell predicts the liver's arterial level
    pl, po = int(0.42 * ae.bins), int(0.62 * ae.bins)
    assert abs(ae.table_[pl, po] - 0.48) < 0.03


def test_arterial_excess_uses_no_label_and_no_validation_image():
    bags = _tissue_bags()
    _, ae = cnn.add_arterial_excess(bags, ("arterial", "plain", "portal"))
    flipped = crop25d.Bags(bags.x, bags.index.assign(label=1 - bags.index["label"]))
    _, ae_flipped = cnn.add_arterial_excess(flipped, ("arterial", "plain", "portal"))
    np.testing.assert_array_equal(ae.table_, ae_flipped.table_)
    x = bags.x.copy()
    val = (bags.index["cohort"] != "training").to_numpy()
    x[val] = np.float16(0.9)  # validation images changed beyond recognition
    _, ae_val = cnn.add_arterial_excess(crop25d.Bags(x, bags.index), ("arterial", "plain", "portal"))
    np.testing.assert_array_equal(ae.table_, ae_val.table_)


def test_prepare_input_is_the_reference_shift_then_the_excess():
    bags = _tissue_bags()
    ch = ("arterial", "plain", "portal")
    rng = np.random.default_rng(3)  # each patient's measured parenchyma, as the cropping stage writes it
    idx = bags.index.assign(**{f"ref_{c}": 0.5 + rng.normal(0, 0.02, len(bags.index)) for c in ch})
    bags = crop25d.Bags(bags.x, idx)
    shifted, shifts = cnn.reference_shift(bags, "parenchyma")
    assert shifts.abs().to_numpy().max() > 0.005  # the reference does move the patients
    want, _ = cnn.add_arterial_excess(shifted, ch)
    got, got_shifts, ae = cnn.prepare_input(bags, P(arterial_excess=True), ch)
    np.testing.assert_array_equal(got.x, want.x)
    pd.testing.assert_frame_equal(got_shifts, shifts)
    assert isinstance(ae, cnn.ArterialExcess) and got.x.shape[1] == 4
    plain, _, none = cnn.prepare_input(bags, P(arterial_excess=False), ch, reference="none")
    assert none is None and plain.x.shape[1] == 3
    np.testing.assert_array_equal(plain.x, cnn.reference_shift(bags, "none")[0].x)


def test_arterial_excess_needs_the_three_phases_and_works_on_cubes():
    with pytest.raises(ValueError, match="needs the arterial, plain and portal"):
        cnn.ArterialExcess(("arterial", "portal"))
    rng = np.random.default_rng(1)
    cubes = rng.uniform(0.3, 0.7, (4, 3, 5, 12, 12)).astype(np.float16)
    out = cnn.ArterialExcess(("arterial", "plain", "portal"), bins=8, min_count=1).fit(cubes).transform(cubes)
    assert out.shape == (4, 4, 5, 12, 12) and np.isfinite(out.astype(np.float32)).all()
    with pytest.raises(RuntimeError, match="fit first"):
        cnn.ArterialExcess(("arterial", "plain", "portal")).transform(cubes)


def test_four_input_channels_for_the_own_network_only():
    model, _ = cnn.build_model("litecnn", "none", width=4, in_channels=4)
    assert model(torch.zeros(2, 4, 32, 32)).shape == (2, 1)
    with pytest.raises(ValueError, match="three input channels"):
        cnn.build_model("resnet18", "none", in_channels=4)


def test_split_stem_is_one_convolution_computed_in_two():
    torch.manual_seed(0)
    split = cnn3d.SplitConv3d(4, 5, 3, 2, 1)
    one = torch.nn.Conv3d(4, 5, 3, 2, 1, bias=False)
    with torch.no_grad():
        one.weight.copy_(torch.cat([split.head.weight, split.rest.weight], 1))
    x = torch.randn(2, 4, 9, 9, 9)
    torch.testing.assert_close(split(x), one(x), rtol=1e-5, atol=1e-5)
    m = cnn3d.ResNet3D(4, width=4)
    assert isinstance(m.stem[0], cnn3d.SplitConv3d) and m(torch.zeros(2, 4, 16, 16, 16)).shape == (2, 1)
    assert isinstance(cnn3d.ResNet3D(3, width=4).stem[0], torch.nn.Conv3d)  # three channels: as before


def test_input_shift_shows_a_cohort_shifted_at_the_input():
    bags = make_bags(n_train=10, n_int=6, n_ext=6, inst=2, size=16, signal=0.0, seed=5)
    ext = (bags.index["cohort"] == "external").to_numpy()
    x = bags.x.astype(np.float32)
    x[ext, 0, 4:12, 4:12] -= 0.2  # the external centre's first channel darker in the middle only
    t = cnn.input_shift(crop25d.Bags(x.astype(np.float16), bags.index), ["arterial", "plain", "portal"])
    assert list(t.index) == ["training", "internal", "external"]
    assert (t.loc["training"] == 0).all()
    assert t.loc["external", ("centre", "arterial")] == pytest.approx(-0.2, abs=0.01)
    assert t.loc["external", ("whole crop", "arterial")] == pytest.approx(-0.2 * 64 / 256, abs=0.01)
    assert abs(t.loc["internal"]).max() < 0.02 and abs(t.loc["external", ("centre", "plain")]) < 0.02


def test_histogram_reference_uses_the_given_folds_and_learns_intensity():
    bags = make_bags(n_train=30, n_int=10, n_ext=10, signal=1.0, seed=3)
    train = bags.patients().query("cohort == 'training'")
    split = {p: i % 3 for i, p in enumerate(train["patient_id"])}
    ref = crop25d.histogram_reference(bags, [split])
    assert ref["prob"].between(0, 1).all() and len(ref) == len(bags.index)
    assert all(stats.auc(g["label"], g["prob"]) > 0.9 for _, g in ref.groupby("cohort"))
    # a training patient's score comes only from models that did not see it: relabelling the patients of
    # fold 0 leaves their own scores unchanged and moves those of the other folds
    fold0 = [p for p, f in split.items() if f == 0]
    flip = bags.index["patient_id"].isin(fold0)
    relabelled = crop25d.Bags(bags.x, bags.index.assign(label=np.where(flip, 1 - bags.index["label"],
                                                                       bags.index["label"])))
    ref2 = crop25d.histogram_reference(relabelled, [split])
    assert np.allclose(ref2.loc[flip, "prob"], ref.loc[flip, "prob"])
    others = (bags.index["cohort"] == "training") & ~flip
    assert not np.allclose(ref2.loc[others, "prob"], ref.loc[others, "prob"])
    # two repeats: a training patient is the mean of the two models that did not see it
    split2 = {p: (i + 1) % 3 for i, p in enumerate(train["patient_id"])}
    both = crop25d.histogram_reference(bags, [split, split2])
    lone = crop25d.histogram_reference(bags, [split2])
    lg = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert np.allclose(lg(both["prob"]), (lg(ref["prob"]) + lg(lone["prob"])) / 2)
    with pytest.raises(ValueError, match="no fold for training patient"):
        crop25d.histogram_reference(bags, [dict(list(split.items())[1:])])


def _referenced_tissue_bags():
    """The tissue bags with each patient's parenchyma measured, through the parenchyma reference and the
    arterial excess (the CNN's input)."""
    bags = _tissue_bags()
    ch = ("arterial", "plain", "portal")
    rng = np.random.default_rng(3)
    idx = bags.index.assign(**{f"ref_{c}": 0.5 + rng.normal(0, 0.02, len(bags.index)) for c in ch})
    shifted, _ = cnn.reference_shift(crop25d.Bags(bags.x, idx), "parenchyma")
    full, ae = cnn.add_arterial_excess(shifted, ch)
    return shifted, full, ae


def test_timing_augmentation_scales_arterial_contrast_and_moves_the_excess_with_it():
    shifted, full, ae = _referenced_tissue_bags()
    assert full.channels == ("arterial", "plain", "portal", "excess")
    art, ex, level = cnn.timing_reference(full)
    assert art == [0] and ex == 3
    # after the reference every patient's parenchyma sits at the training median of its measurement
    train = (full.index["cohort"] == "training").to_numpy()
    assert np.allclose(level, np.median(full.index.loc[train, "ref_arterial"].drop_duplicates()), atol=0.02)
    x = torch.from_numpy(full.x.astype(np.float32))
    out = cnn._augment(x.clone(), torch.Generator().manual_seed(4), config.AugmentCfg(flip=False, timing=0.3),
                       dims=2, timing=(art, ex, level))
    # plain and portal are untouched; the arterial contrast to the liver is scaled by one factor per image
    assert torch.equal(out[:, 1:3], x[:, 1:3])
    lv = torch.from_numpy(level).view(-1, 1, 1)
    d0, d1 = x[:, 0] - lv, out[:, 0] - lv
    far = d0.abs() > 0.05
    ratio = torch.stack([(d1[i][far[i]] / d0[i][far[i]]).mean() for i in range(len(x))])
    spread = torch.stack([(d1[i][far[i]] / d0[i][far[i]]).std() for i in range(len(x))])
    assert float(spread.max()) < 1e-3
    assert 0.7 - 1e-4 <= float(ratio.min()) and float(ratio.max()) <= 1.3 + 1e-4
    assert float(ratio.std()) > 0.05  # a factor of its own for each image
    # the excess channel is what ArterialExcess gives for the scaled arterial phase (interior: the two
    # smoothings treat the border differently)
    want = ae.transform(out[:, :3].numpy())[:, 3]
    np.testing.assert_allclose(out[:, 3, 5:-5, 5:-5].numpy(), want[:, 5:-5, 5:-5], atol=2e-3)
    # timing 0 (the default) draws nothing and changes nothing
    same = cnn._augment(x.clone(), torch.Generator().manual_seed(4), config.AugmentCfg(flip=False), dims=2,
                        timing=(art, ex, level))
    assert torch.equal(same, x)


def test_timing_reference_follows_the_channels_a_model_sees():
    shifted, full, _ = _referenced_tissue_bags()
    from hcc25d import ablation

    one = {v.key: v for v in ablation.VARIANTS}
    portal = ablation.subset_bags(shifted, one["portal"], ("arterial", "plain", "portal"))
    assert portal.channels == ("portal",) * 3 and cnn.timing_reference(portal) is None
    arterial = ablation.subset_bags(shifted, one["arterial"], ("arterial", "plain", "portal"))
    assert cnn.timing_reference(arterial)[:2] == ([0, 1, 2], None)
    # no reference: each patient's own parenchyma is the level
    raw, _ = cnn.reference_shift(crop25d.Bags(shifted.x, shifted.index.drop(columns=["lvl_arterial",
                                                                                      "lvl_plain", "lvl_portal"])),
                                 "none")
    np.testing.assert_allclose(cnn.timing_reference(raw)[2], raw.index["ref_arterial"].to_numpy(np.float32))
    with pytest.raises(ValueError, match="name of every input channel"):
        cnn.timing_reference(crop25d.Bags(full.x, full.index.drop(columns=[c for c in full.index
                                                                            if c.startswith("ref_")])))
    with pytest.raises(ValueError, match="channel names"):
        crop25d.Bags(full.x, full.index, ("arterial",))


def test_crossfit_with_timing_augmentation_keeps_its_output_columns():
    bags = make_bags()
    ch = ("arterial", "plain", "portal")
    idx = bags.index.assign(**{f"ref_{c}": 0.5 for c in ch})
    ref, _ = cnn.reference_shift(crop25d.Bags(bags.x, idx), "parenchyma")
    prm = P(val_fraction=0.0, epochs=1, augment={"flip": True, "timing": 0.3})
    on, _, _, _ = cnn.crossfit_predict(ref, tiny_model, prm, seed=1, folds=3, progress=False)
    off, _, _, _ = cnn.crossfit_predict(ref, tiny_model, P(val_fraction=0.0, epochs=1, augment={"flip": True}),
                                        seed=1, folds=3, progress=False)
    assert list(on.columns) == list(off.columns) and not any(c.startswith("lvl_") for c in on.columns)
    assert not np.allclose(on["prob"], off["prob"])  # the augmentation reached the training


def test_blur_augmentation_smooths_each_image_with_its_own_width():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0.5, 0.05, (6, 4, 32, 32)).astype(np.float32))
    # an SD of 0 leaves the image exactly; one of 1 pixel equals the fixed-width smoothing the excess uses
    out = cnn._blur_each(x.clone(), torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5, 0.0]))
    for i in (0, 2, 5):
        assert torch.equal(out[i], x[i])
    np.testing.assert_allclose(out[1].numpy(), cnn._smooth_inplane(x[1:2], 1.0)[0].numpy(), atol=1e-5)
    # wider blurs take more of the pixel noise away, a flat image keeps its value, the mean is kept
    sd = [float(out[i].std()) for i in (4, 1, 3)]
    assert sd[0] > sd[1] > sd[2] and sd[2] < 0.5 * float(x[3].std())
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(cnn._blur_each(flat, torch.tensor([1.5, 3.0])), flat, atol=1e-6)
    np.testing.assert_allclose(out.mean((2, 3)).numpy(), x.mean((2, 3)).numpy(), atol=5e-3)
    # through the augmentation: SDs drawn per image from [0, blur]; blur 0 (the default) changes nothing
    prm = config.AugmentCfg(flip=False, blur=1.5)
    aug = cnn._augment(x.clone(), torch.Generator().manual_seed(3), prm, dims=2)
    drop = torch.stack([aug[i].std() / x[i].std() for i in range(len(x))])
    # no image sharper, some much softer, each by its own amount (an SD near 0 leaves an image nearly as is)
    assert float(drop.max()) <= 1.0 + 1e-6 and float(drop.min()) < 0.6 and float(drop.std()) > 0.05
    assert torch.equal(cnn._augment(x.clone(), torch.Generator().manual_seed(3), config.AugmentCfg(flip=False),
                                    dims=2), x)
    with pytest.raises(ValueError):
        config.AugmentCfg(blur=-1)


def test_blurring_the_excess_channel_follows_the_excess_of_blurred_phases():
    """The augmentation blurs the arterial-excess channel as it blurs the phases; on tissue, that is close to
    the excess the table gives for the blurred phases (the table is smooth where tissue lies)."""
    shifted, full, ae = _referenced_tissue_bags()
    x = torch.from_numpy(full.x.astype(np.float32))
    out = cnn._blur_each(x.clone(), torch.full((len(x),), 1.0))
    want = ae.transform(out[:, :3].numpy())[:, 3]
    got = out[:, 3].numpy()
    inner = (slice(None), slice(5, -5), slice(5, -5))
    err = np.abs(got[inner] - want[inner])
    assert np.median(err) < 0.008
    assert np.corrcoef(got[inner].ravel(), want[inner].ravel())[0, 1] > 0.95
