"""Why is the slice-level CNN's cross-validated training AUC lower than its validation AUCs?
``python tools/oof_diagnostics.py --params params/synthetic.yaml [--permutations 6]``

Reads a finished run's crops and CNN predictions (``results/<run>/crop25d``, ``cnn``) and prints four
checks, each with the numbers it measured. The multi-instance fusion and the signatures are fitted on the
training patients' out-of-fold scores, so when those carry less of the signal than the same networks show on
new patients, the fused signatures fall below the CNN's own validation AUCs.

1. **More repeats.** Cross-fit again with ``--repeats`` repeats (default 9): if the gap were the noise of
   single models, averaging more of them would close it.
2. **Permuted outcomes (null).** Cross-fit on the training patients with their outcomes permuted
   (``--permutations`` times, one repeat each, no size adjustment): the out-of-fold AUC must centre on 0.5;
   a mean well below it would be the anti-learning of cross-validation on small samples.
3. **In the pool or outside it.** Cross-fit over the training *and* internal patients together and compare
   the internal patients' out-of-fold AUC with their AUC as outsiders (the run's CNN stage): the same
   patients, scored from inside the pool of the fold models' training data or from outside it.
4. **A low-variance learner.** Logistic regression on each phase's intensity histogram of the same crops
   (averaged over a patient's instances): its cross-validated training AUC against its validation AUCs,
   and (3) for it.
5. **A view's own network.** Cross-fit the network on the sagittal and coronal instances alone (the CNN
   stage's folds and settings): if those views' instances stay near chance because the shared network
   spends itself on the axial ones, their own network reads them better than the run's does.

Everything here is a diagnostic of the run: no result of the book changes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hcc25d import cnn, config, crop25d  # noqa: E402
from hcc25d.io import RunPaths  # noqa: E402
from hcc25d.stats import auc  # noqa: E402


def permute_training_labels(bags: crop25d.Bags, seed: int) -> crop25d.Bags:
    """The same bags with the training patients' outcomes permuted between patients (one label per
    patient, kept for all its instances); the other cohorts keep theirs."""
    pats = bags.patients()
    tr = pats[pats["cohort"] == "training"]
    new = dict(zip(tr["patient_id"], np.random.default_rng(seed).permutation(tr["label"].to_numpy())))
    idx = bags.index.copy()
    m = idx["cohort"] == "training"
    idx.loc[m, "label"] = idx.loc[m, "patient_id"].map(new).astype(idx["label"].dtype)
    return crop25d.Bags(bags.x, idx, bags.channels)


def pool_cohorts(bags: crop25d.Bags, join: str = "internal") -> crop25d.Bags:
    """The same bags with the ``join`` cohort's patients counted as training patients."""
    idx = bags.index.copy()
    idx.loc[idx["cohort"] == join, "cohort"] = "training"
    return crop25d.Bags(bags.x, idx, bags.channels)


def patient_scores(preds: pd.DataFrame) -> pd.DataFrame:
    """Mean instance logit per patient (the probabilities as given, e.g. size-adjusted), with its cohort and
    label."""
    return (preds.assign(logit=cnn._logit(preds["prob"])).groupby("patient_id")
            .agg(cohort=("cohort", "first"), label=("label", "first"), score=("logit", "mean")))


def histogram_features(bags: crop25d.Bags, lo: float = 0.2, hi: float = 1.0, bins: int = 16) -> pd.DataFrame:
    """Per patient: the fraction of pixels in each of ``bins`` intensity bins on [lo, hi] (window units), per
    phase channel, averaged over the patient's instances."""
    x = bags.x
    edges = np.linspace(lo, hi, bins + 1)
    rows = np.stack([np.concatenate([np.histogram(x[i, c], edges)[0] for c in range(x.shape[1])])
                     for i in range(len(x))]) / float(np.prod(x.shape[2:]))
    cols = [f"c{c}_b{b}" for c in range(x.shape[1]) for b in range(bins)]
    return pd.DataFrame(rows, columns=cols).assign(patient_id=bags.index["patient_id"].to_numpy()).groupby(
        "patient_id").mean()


def view_subset(bags: crop25d.Bags, views) -> crop25d.Bags:
    """The instances of the given views only (every patient keeps its instances of those views)."""
    keep = bags.index["view"].isin(list(views)).to_numpy()
    if not keep.any():
        raise ValueError(f"no instance of the views {list(views)} (the crops have {sorted(set(bags.index['view']))})")
    return crop25d.Bags(np.ascontiguousarray(bags.x[keep]), bags.index[keep].reset_index(drop=True), bags.channels)


def view_auc(preds: pd.DataFrame, views) -> dict:
    """Instance AUC per cohort over the instances of ``views`` (pooled)."""
    p = preds[preds["view"].isin(list(views))]
    return {c: round(auc(g["label"], g["prob"]), 3) for c, g in p.groupby("cohort")}


def _by_cohort(s: pd.DataFrame) -> dict:
    return {c: round(auc(g["label"], g["score"]), 3) for c, g in s.groupby("cohort")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/synthetic.yaml")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--permutations", type=int, default=6)
    ap.add_argument("--skip", default="", help="comma-separated checks to skip (1-4)")
    a = ap.parse_args(argv)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    cfg = config.load(a.params, {})
    paths = RunPaths(cfg.run)
    C = cfg.cnn
    raw = crop25d.load_bags(paths.stage_dir("crop25d"))
    bags, _, _ = cnn.prepare_input(raw, C, cfg.crop.channels)
    size = crop25d.roi_extent_mm(raw.index, cfg.crop.spacing_mm)
    name = C.backbones[0]
    make = lambda: cnn.build_model(name, C.weights, C.on_missing_weights, C.dropout, width=C.width,  # noqa: E731
                                   in_channels=bags.x.shape[1])[0]

    def crossfit(b, prm, seed, fold_of=None):
        return cnn.crossfit_predict(b, make, prm, seed, folds=prm.folds, progress=False, verbose=False,
                                    size=size if prm.size_adjust else None, fold_of=fold_of)[0]

    run_preds = pd.read_csv(paths.stage_dir("cnn") / "instance_probs_selected.csv", dtype={"patient_id": str})
    run = patient_scores(run_preds)
    print(f"run {cfg.run}: {name}, {C.folds} folds x {C.repeats} repeats; patient AUC (mean instance logit) "
          f"{_by_cohort(run)}")
    if "1" not in skip:
        s = patient_scores(crossfit(bags, C.model_copy(update={"repeats": a.repeats}), cfg.cnn_seed()))
        print(f"1. {a.repeats} repeats: {_by_cohort(s)}")
    if "2" not in skip:
        prm = C.model_copy(update={"repeats": 1, "size_adjust": False})
        null = []
        for k in range(a.permutations):
            s = patient_scores(crossfit(permute_training_labels(bags, k), prm, cfg.cnn_seed() + k))
            t = s[s["cohort"] == "training"]
            null.append(auc(t["label"], t["score"]))
        print(f"2. permuted outcomes: out-of-fold training AUC {np.mean(null):.3f} "
              f"(SD {np.std(null):.3f} over {len(null)} permutations: {np.round(null, 3).tolist()})")
    if "3" not in skip:
        s = patient_scores(crossfit(pool_cohorts(bags), C, cfg.cnn_seed()))
        s["origin"] = bags.patients().set_index("patient_id")["cohort"]
        got = {o: round(auc(g["label"], g["score"]), 3) for o, g in s.groupby("origin")}
        print(f"3. training + internal cross-fitted together: out-of-fold {got}; the internal patients as "
              f"outsiders (run): {_by_cohort(run).get('internal')}")
    if "4" not in skip:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        F = histogram_features(bags)
        P = bags.patients().set_index("patient_id").loc[F.index]
        y, coh = P["label"].to_numpy(), P["cohort"].to_numpy()
        lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))

        def cv(mask):
            return np.mean([cross_val_predict(lr, F.to_numpy()[mask], y[mask], method="predict_proba",
                                              cv=StratifiedKFold(C.folds, shuffle=True, random_state=r))[:, 1]
                            for r in range(10)], axis=0)

        tr = coh == "training"
        p = lr.fit(F.to_numpy()[tr], y[tr]).predict_proba(F.to_numpy())[:, 1]
        out = {c: round(auc(y[coh == c], p[coh == c]), 3) for c in ("internal", "external")}
        pool = coh != "external"
        pp, cp = cv(pool), coh[pool]
        print(f"4. histogram + logistic regression: training CV {auc(y[tr], cv(tr)):.3f}, validation {out}; "
              f"training + internal cross-validated together: training "
              f"{auc(y[pool][cp == 'training'], pp[cp == 'training']):.3f}, internal "
              f"{auc(y[pool][cp == 'internal'], pp[cp == 'internal']):.3f}")
    if "5" not in skip:
        views = ("sagittal", "coronal")
        f = run_preds.dropna(subset=["fold"]).drop_duplicates("patient_id")
        fold_of = f.set_index("patient_id")["fold"].astype(int).to_dict()
        own = crossfit(view_subset(bags, views), C, cfg.cnn_seed(), fold_of)
        print(f"5. the sagittal and coronal instances' AUC (training cohort out of fold): their own "
              f"network {view_auc(own, views)}; the run's network {view_auc(run_preds, views)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
