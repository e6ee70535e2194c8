"""Statistics used across the book. Scores: higher means more likely recurrence.

* :func:`auc_ci` — AUC with a DeLong (or stratified bootstrap) confidence interval;
* :func:`delong_test` — paired two-sided DeLong test, the fast algorithm of Sun and Xu (2014);
* :func:`binary_metrics`, :func:`youden_threshold` — accuracy, sensitivity, specificity, PPV, NPV at a
  threshold fixed beforehand (on the training cohort).

The DeLong variance is written out here (not taken from a library) because no maintained Python
package exposes pROC's DeLong variance, covariance and paired test; the tests check every number against
pROC.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = ["AUCResult", "DeLongResult", "auc_ci", "delong_test", "delong_cov", "binary_metrics",
           "youden_threshold", "oracle_auc_table", "metrics_by_cohort"]

AUCResult = namedtuple("AUCResult", ["auc", "low", "high"])
DeLongResult = namedtuple("DeLongResult", ["z", "p_value", "auc_a", "auc_b"])


def _midrank(x: np.ndarray) -> np.ndarray:
    return _st.rankdata(x, method="average")


def delong_cov(y_true, *scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix (Sun & Xu's fast algorithm).

    .. math::

        \\hat\\theta_r = \\frac{1}{mn}\\sum_{i,j}\\psi(X_i^{(r)}, Y_j^{(r)}),\\qquad
        S = \\frac{S_{10}}{m} + \\frac{S_{01}}{n}

    with :math:`m` positives, :math:`n` negatives and :math:`S_{10}, S_{01}` the covariance matrices of
    the structural components computed from mid-ranks.
    """
    y = np.asarray(y_true).astype(bool)
    X = np.atleast_2d(np.asarray(scores, float))
    pos, neg = X[:, y], X[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("AUC needs both outcomes present")
    k = X.shape[0]
    tx = np.empty((k, m))
    ty = np.empty((k, n))
    tz = np.empty((k, m + n))
    for r in range(k):
        tx[r] = _midrank(pos[r])
        ty[r] = _midrank(neg[r])
        tz[r] = _midrank(np.concatenate([pos[r], neg[r]]))
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    s01 = np.atleast_2d(np.cov(v01))
    s10 = np.atleast_2d(np.cov(v10))
    return aucs, s01 / m + s10 / n


def auc_ci(y_true, y_score, level: float = 0.95, method: str = "delong", n_boot: int = 2000,
           seed: int = 0) -> AUCResult:
    """AUC with a confidence interval: DeLong (as pROC's ``ci.auc``) or a stratified bootstrap (percentile)."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(y_score, float)
    if method == "delong":
        auc, cov = delong_cov(y, s)
        se = float(np.sqrt(cov[0, 0]))
        z = _st.norm.ppf(1 - (1 - level) / 2)
        a = float(auc[0])
        return AUCResult(a, max(0.0, a - z * se), min(1.0, a + z * se))
    if method == "bootstrap":
        from sklearn.metrics import roc_auc_score

        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        boots = np.empty(n_boot)
        for b in range(n_boot):
            idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
            boots[b] = roc_auc_score(y[idx], s[idx])
        lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
        return AUCResult(float(roc_auc_score(y, s)), float(lo), float(hi))
    raise ValueError(f"method must be 'delong' or 'bootstrap', got {method!r}")


def delong_test(y_true, score_a, score_b) -> DeLongResult:
    """Paired two-sided DeLong test of two correlated AUCs (as pROC's ``roc.test(method="delong")``)."""
    aucs, cov = delong_cov(y_true, score_a, score_b)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 0:
        return DeLongResult(0.0, 1.0, float(aucs[0]), float(aucs[1]))
    z = float((aucs[0] - aucs[1]) / np.sqrt(var))
    return DeLongResult(z, float(2 * _st.norm.sf(abs(z))), float(aucs[0]), float(aucs[1]))


def youden_threshold(y_true, y_prob) -> float:
    """The threshold maximising sensitivity + specificity − 1 (choose it on the training cohort only)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y_true).astype(int), np.asarray(y_prob, float))
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def binary_metrics(y_true, y_prob, threshold: float) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV when predicting recurrence for risk ≥ ``threshold``."""
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(y_prob, float) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def div(a, b):
        return a / b if b else float("nan")

    return {"accuracy": div(tp + tn, len(y)), "sensitivity": div(tp, tp + fn), "specificity": div(tn, tn + fp),
            "ppv": div(tp, tp + fp), "npv": div(tn, tn + fn), "threshold": float(threshold)}


def oracle_auc_table(oracle: pd.DataFrame) -> pd.DataFrame:
    """AUC (DeLong 95 % CI) of the oracle probability per cohort."""
    rows = []
    for c in ("training", "internal", "external"):
        g = oracle[oracle["cohort"] == c]
        if g["label"].nunique() < 2:
            continue
        r = auc_ci(g["label"], g["oracle_prob"])
        rows.append({"cohort": c, "n": len(g), "oracle AUC": round(r.auc, 3),
                     "95% CI": f"{r.low:.3f}–{r.high:.3f}"})
    return pd.DataFrame(rows)


def metrics_by_cohort(frame: pd.DataFrame, prob: str = "prob", label: str = "label", cohort: str = "cohort",
                      train: str = "training", threshold: Optional[float] = None,
                      cohorts: Sequence[str] = ("training", "internal", "external")) -> pd.DataFrame:
    """Accuracy, AUC (DeLong 95 % CI), sensitivity, specificity, PPV and NPV per cohort.

    The threshold is chosen on the ``train`` cohort (Youden) unless given, and carried unchanged to the
    other cohorts — never chosen on the cohort being evaluated.
    """
    tr = frame[frame[cohort] == train]
    thr = youden_threshold(tr[label], tr[prob]) if threshold is None else float(threshold)
    rows = []
    for c in cohorts:
        g = frame[(frame[cohort] == c) & frame[prob].notna()]
        if g.empty or g[label].nunique() < 2:
            continue
        a = auc_ci(g[label], g[prob])
        m = binary_metrics(g[label], g[prob], thr)
        rows.append({"cohort": c, "n": len(g), "accuracy": m["accuracy"], "auc": a.auc, "ci_low": a.low,
                     "ci_high": a.high, "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                     "ppv": m["ppv"], "npv": m["npv"], "threshold": thr})
    return pd.DataFrame(rows)
