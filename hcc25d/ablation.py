"""Ablations of the DL_2.5D pipeline (beyond the paper): which parts of the input carry the signal."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import signatures as sig
from .stats import auc_ci, delong_test

__all__ = ["selected_features", "run_ablations", "evaluate_variant"]


def selected_features(pipe) -> pd.DataFrame:
    """The features a fitted fusion pipeline keeps, with their univariate P and LASSO coefficient."""
    names = np.asarray(pipe.named_steps["fusion"].get_feature_names_out())
    uni = pipe.named_steps["univariate"]
    names_u = names[uni.get_support()]
    p_u = uni.pvalues_[uni.get_support()]
    cor = pipe.named_steps["correlation"]
    names_c, p_c = names_u[cor.get_support()], p_u[cor.get_support()]
    if "lasso" in pipe.named_steps:
        las = pipe.named_steps["lasso"]
        keep = las.get_support()
        return pd.DataFrame({"feature": names_c[keep], "univariate P": p_c[keep], "LASSO coefficient": las.coef_[keep]})
    return pd.DataFrame({"feature": names_c, "univariate P": p_c})


def evaluate_variant(name, X, meta, inst_cols, rad_cols, key, cfg, full_probs):
    S = cfg.signatures
    train = (meta["cohort"] == "training").to_numpy()
    y = meta["label"].to_numpy()
    pipe = sig.fusion_pipeline(key, inst_cols, rad_cols, cfg.seed, S.n_bins, S.n_words, S.p_threshold, S.corr_threshold)
    gs, oof = sig.tune(pipe, {**sig.DEFAULT_GRIDS[key], **S.grids.get(key, {})}, X[train], y[train], cfg.seed,
                       S.cv_folds, n_jobs=cfg.compute.n_jobs)
    p = sig.with_oof(train, oof, gs.predict_proba(X)[:, 1])
    row = {"variant": name, "instances": len(inst_cols), "radiomics features": len(rad_cols), "cv AUC": gs.best_score_}
    for c in ("training", "internal", "external"):
        m = (meta["cohort"] == c).to_numpy()
        if m.sum() == 0 or len(set(y[m])) < 2:
            continue
        a = auc_ci(y[m], p[m])
        row[f"AUC {c}"] = a.auc
        if full_probs is not None and c != "training":
            row[f"DeLong P vs full ({c})"] = delong_test(y[m], p[m], full_probs[m]).p_value
    return row, p


def _one_phase_bags(cfg, paths, phase):
    """Retrain the slice-level CNN on one phase (copied into the three channels) and return its
    leakage-safe instance probabilities."""
    from . import cnn
    from .config import to_dict

    bags = cnn.load_bags(paths.stage_dir("crop25d"))
    ch = list(cfg.crop.channels).index(phase)
    x = np.repeat(bags.x[:, ch:ch + 1], 3, axis=1)
    one = cnn.Bags(x, bags.index)
    sel = pd.read_csv(paths.stage_dir("cnn") / "instance_probs_selected.csv", nrows=1)["backbone"].iloc[0]
    make = lambda: cnn.build_model(sel, cfg.cnn.weights, cfg.cnn.on_missing_weights, cfg.cnn.dropout)[0]  # noqa: E731
    cache = paths.run_dir / ".cache" / f"cnn-{phase}" if cfg.cnn.resume else None
    preds, _, _, _ = cnn.crossfit_predict(one, make, to_dict(cfg.cnn), cfg.seed, folds=cfg.cnn.folds,
                                          prediction=cfg.cnn.prediction, device=cnn.torch_device(cfg.cnn.device),
                                          cache_dir=cache, name=f"{sel}-{phase}", progress=cfg.compute.progress)
    return preds


def run_ablations(cfg, paths, X, meta, inst_cols, rad_cols, key, full_oof, full_pred) -> pd.DataFrame:
    from .mil import bag_matrix

    train = (meta["cohort"] == "training").to_numpy()
    full = sig.with_oof(train, full_oof, full_pred)
    variants = [
        ("full model (all instances + radiomics)", inst_cols, rad_cols),
        ("central axial slice only (2D)", [c for c in inst_cols if c == "axial+0"], rad_cols),
        ("axial 2.5D stack only", [c for c in inst_cols if c.startswith("axial")], rad_cols),
        ("three views, no radiomics", inst_cols, []),
        ("central axial slice only, no radiomics", [c for c in inst_cols if c == "axial+0"], []),
    ]
    rows = []
    for name, ic, rc in variants:
        row, _ = evaluate_variant(name, X, meta, ic, rc, key, cfg, None if name.startswith("full") else full)
        rows.append(row)
    phase = cfg.signatures.ablation_phase
    if phase:
        preds = _one_phase_bags(cfg, paths, phase)
        B = bag_matrix(preds).reindex(X.index)
        rc = [c for c in rad_cols if c.startswith(phase + "_")]
        X1 = B.join(X[rc])
        row, _ = evaluate_variant(f"one phase ({phase}): CNN and radiomics", X1, meta, list(B.columns), rc, key, cfg, full)
        rows.append(row)
    return pd.DataFrame(rows)
