"""Statistics used across the book. Scores: higher means more likely recurrence.

* :func:`auc_ci` — AUC with a DeLong (or stratified bootstrap) confidence interval;
* :func:`auc_ci_clustered` — the same with whole patients resampled, for scores of several correlated
  instances per patient (the slice-level tables);
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

__all__ = [
    "AUCResult",
    "DeLongResult",
    "delong_cov",
    "auc_ci",
    "auc_ci_clustered",
    "delong_test",
    "auc",
    "logit",
    "two_sample_test",
    "youden_threshold",
    "binary_metrics",
    "reference_auc_table",
    "REFERENCE_COLUMNS",
    "load_reference",
    "metrics_by_cohort",
    "HLResult",
    "hosmer_lemeshow",
    "net_benefit",
    "r_pretty",
    "nomogram_scale",
]

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
    if m < 2 or n < 2:  # one case of a class: its structural components have no variance to estimate
        return aucs, np.full((k, k), np.nan)
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
        if not np.isfinite(se):  # no interval from a single case of a class (not [0, 1])
            return AUCResult(a, np.nan, np.nan)
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


def _weighted_auc(pos: np.ndarray, inv: np.ndarray, k: int, w: np.ndarray) -> float:
    """Mann–Whitney AUC of instances weighted by ``w`` (``pos``: which are positive; ``inv``: each score's
    rank among the ``k`` distinct scores); ties count one half."""
    wp = np.bincount(inv[pos], weights=w[pos], minlength=k)
    wn = np.bincount(inv[~pos], weights=w[~pos], minlength=k)
    return float(wp @ (np.cumsum(wn) - 0.5 * wn)) / (wp.sum() * wn.sum())


def auc_ci_clustered(y_true, y_score, groups, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> AUCResult:
    """Instance-level AUC with a confidence interval that resamples **whole patients** (a stratified
    cluster bootstrap, percentile interval): ``groups`` names each instance's patient, whose label must be
    the same on all its instances; each resample draws as many patients with the outcome, and as many
    without, as there are, with replacement, and takes all their instances. The nine instances of one
    patient are not nine independent cases, so DeLong's interval on instances (:func:`auc_ci`) is too
    narrow by about the square root of the instances per patient when they agree; this one is not. With one
    instance per patient it is the stratified bootstrap of :func:`auc_ci`. Returns NaN bounds where a class
    has fewer than two patients."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(y_score, float)
    codes, g = pd.factorize(pd.Series(np.asarray(groups)), sort=False)
    if len(y) != len(s) or len(codes) != len(y):
        raise ValueError("y_true, y_score and groups must have the same length")
    lab = np.full(g.size, -1)
    for c in (0, 1):
        hit = np.unique(codes[y == c])
        if np.any(lab[hit] >= 0):
            raise ValueError("auc_ci_clustered: a patient's instances carry both labels; the label must be "
                             "the patient's")
        lab[hit] = c
    a = auc(y, s)
    pos, neg = np.flatnonzero(lab == 1), np.flatnonzero(lab == 0)
    if len(pos) < 2 or len(neg) < 2:
        return AUCResult(a, np.nan, np.nan)
    _, inv = np.unique(s, return_inverse=True)
    k, is_pos = int(inv.max()) + 1, y == 1
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):  # the draws of auc_ci's bootstrap, made on patients
        drawn = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boots[b] = _weighted_auc(is_pos, inv, k, np.bincount(drawn, minlength=g.size)[codes].astype(float))
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return AUCResult(a, float(lo), float(hi))


def delong_test(y_true, score_a, score_b) -> DeLongResult:
    """Paired two-sided DeLong test of two correlated AUCs (as pROC's ``roc.test(method="delong")``)."""
    aucs, cov = delong_cov(y_true, score_a, score_b)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 0:
        return DeLongResult(0.0, 1.0, float(aucs[0]), float(aucs[1]))
    z = float((aucs[0] - aucs[1]) / np.sqrt(var))
    return DeLongResult(z, float(2 * _st.norm.sf(abs(z))), float(aucs[0]), float(aucs[1]))


def logit(p) -> np.ndarray:
    """log(p / (1 − p)), probabilities clipped to [1e-7, 1 − 1e-7] so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def auc(y_true, y_prob) -> float:
    """The area under the ROC curve; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true)
    return float(roc_auc_score(y, y_prob)) if len(np.unique(y)) == 2 else float("nan")


def two_sample_test(x0, x1, alpha: float = 0.05) -> tuple[float, str]:
    """The paper's rule for a continuous variable between two groups: Student's t-test when both pass
    Shapiro–Wilk at ``alpha`` (a group with fewer than 3 values or no spread counts as not normal), else
    Mann–Whitney U (two-sided). Returns ``(P, test name)``."""
    from scipy import stats as st

    x0, x1 = np.asarray(x0, float), np.asarray(x1, float)
    normal = all(len(v) >= 3 and np.std(v) > 0 and st.shapiro(v).pvalue > alpha for v in (x0, x1))
    if normal:
        return float(st.ttest_ind(x0, x1).pvalue), "t-test"
    return float(st.mannwhitneyu(x0, x1, alternative="two-sided").pvalue), "Mann-Whitney U"


def youden_threshold(y_true, y_prob) -> float:
    """The threshold maximising sensitivity + specificity − 1 (choose it on the training cohort only)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(y_true).astype(int), np.asarray(y_prob, float))
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def binary_metrics(y_true, y_prob, threshold: float) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV when predicting recurrence for risk ≥ ``threshold``, and
    ``flagged``, the share of patients so predicted."""
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(y_prob, float) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def div(a, b):
        return a / b if b else float("nan")

    return {"accuracy": div(tp + tn, len(y)), "sensitivity": div(tp, tp + fn), "specificity": div(tn, tn + fp),
            "ppv": div(tp, tp + fp), "npv": div(tn, tn + fn), "flagged": div(tp + fp, len(y)),
            "threshold": float(threshold)}


def reference_auc_table(oracle: pd.DataFrame) -> pd.DataFrame:
    """The twin's reference AUCs per cohort (DeLong 95 % CI): the oracle probability, which knows the
    clinical variables *and* the exact latent imaging variables (the ceiling of a clinical + imaging
    model), and its imaging part alone (the ceiling of an image-only model such as DL_2.5D)."""
    rows = []
    for c in ("training", "internal", "external"):
        g = oracle[oracle["cohort"] == c]
        if g["label"].nunique() < 2:
            continue
        r = auc_ci(g["label"], g["oracle_prob"])
        i = auc_ci(g["label"], g["imaging_llr"])
        rows.append({"cohort": c, "n": len(g), REFERENCE_COLUMNS["combined"]: round(r.auc, 3),
                     "95% CI (clinical + image)": f"{r.low:.3f}–{r.high:.3f}",
                     REFERENCE_COLUMNS["image"]: round(i.auc, 3), "95% CI (image only)": f"{i.low:.3f}–{i.high:.3f}"})
    return pd.DataFrame(rows)


#: column names of the two reference AUCs (tab-reference-auc.csv of the data stage)
REFERENCE_COLUMNS = {"combined": "reference AUC (clinical + image)", "image": "reference AUC (image only)"}


def load_reference(data_dir) -> Optional[dict]:
    """The twin's reference AUCs as ``{"combined": {cohort: auc}, "image": {cohort: auc}}`` from a data
    stage's folder, or None (own data: the true probabilities are unknown)."""
    from pathlib import Path

    f = Path(data_dir) / "tab-reference-auc.csv"
    if not f.exists():
        return None
    t = pd.read_csv(f).set_index("cohort")
    return {k: t[col].to_dict() for k, col in REFERENCE_COLUMNS.items()}


def metrics_by_cohort(frame: pd.DataFrame, prob: str = "prob", label: str = "label", cohort: str = "cohort",
                      train: str = "training", threshold: Optional[float] = None,
                      cohorts: Sequence[str] = ("training", "internal", "external"),
                      cluster: Optional[str] = None) -> pd.DataFrame:
    """Accuracy, AUC (DeLong 95 % CI), sensitivity, specificity, PPV and NPV per cohort.

    ``cluster``: a column naming each row's patient, for rows that are instances of patients; the AUC then
    also gets the interval of :func:`auc_ci_clustered` (whole patients resampled), as ``ci_low_patients``
    and ``ci_high_patients``.

    The threshold is chosen on the ``train`` cohort (Youden) unless given, and carried unchanged to the
    other cohorts — never chosen on the cohort being evaluated. Patients without a prediction (NaN) are
    left out and ``n`` counts those that have one; a cohort with no prediction or one class is skipped.
    """
    tr = frame[(frame[cohort] == train) & frame[prob].notna()]
    if threshold is not None:
        thr = float(threshold)
    elif tr[label].nunique() == 2:
        thr = youden_threshold(tr[label], tr[prob])
    else:
        thr = float("nan")  # no training predictions to choose a threshold on
    rows = []
    for c in cohorts:
        g = frame[(frame[cohort] == c) & frame[prob].notna()]
        if g.empty or g[label].nunique() < 2:
            continue
        a = auc_ci(g[label], g[prob])
        m = binary_metrics(g[label], g[prob], thr)
        row = {"cohort": c, "n": len(g), "accuracy": m["accuracy"], "auc": a.auc, "ci_low": a.low,
               "ci_high": a.high, "sensitivity": m["sensitivity"], "specificity": m["specificity"],
               "ppv": m["ppv"], "npv": m["npv"], "threshold": thr}
        if cluster is not None:
            cl = auc_ci_clustered(g[label], g[prob], g[cluster])
            row.update(patients=g[cluster].nunique(), ci_low_patients=cl.low, ci_high_patients=cl.high)
        rows.append(row)
    return pd.DataFrame(rows)


HLResult = namedtuple("HLResult", ["statistic", "p_value", "df"])


def hosmer_lemeshow(y_true, y_prob, groups: int = 10, method: str = "quantile", fitted: bool = True,
                    df_rule: str = "formed") -> HLResult:
    r"""Hosmer–Lemeshow goodness-of-fit test.

    ``method="quantile"`` groups exactly as R's ``ResourceSelection::hoslem.test``: breaks are the unique
    type-7 quantiles of the probabilities at 0, 1/g, …, 1 (duplicates removed), groups are
    ``cut(p, breaks, include.lowest = TRUE)`` (right-closed intervals, the lowest included).
    ``method="stata"`` sorts the patients by risk and splits them into ``g`` groups of (nearly) equal
    size, as Stata's ``estat gof`` deciles do.

    Degrees of freedom (``df_rule="formed"``, the default): :math:`G - 2` when the probabilities were
    ``fitted`` on these patients (in-sample: the two fitted parameters of a logistic model cost two
    degrees of freedom), :math:`G` when they were not (a validation cohort, or out-of-fold predictions:
    nothing was estimated on these patients), where :math:`G` counts the groups actually formed — after
    tied probabilities merged quantile breaks. ``df_rule="requested"`` is R's ``hoslem.test``, which
    always uses ``g − 2`` with the requested ``g`` whatever the ties and the origin of the probabilities.
    Missing probabilities (NaN) are dropped; a test with no degree of freedom left has P = NaN.

    .. math::

        \hat C = \sum_{k}\left[\frac{(O_{1k}-E_{1k})^2}{E_{1k}} + \frac{(O_{0k}-E_{0k})^2}{E_{0k}}\right]
        \sim \chi^2_{\text{df}}

    (Hand-written because no maintained Python package implements the R grouping.)
    """
    y = np.asarray(y_true, float)
    p = np.asarray(y_prob, float)
    ok = np.isfinite(p) & np.isfinite(y)
    y, p = y[ok], p[ok]
    if method == "quantile":
        breaks = np.unique(np.quantile(p, np.linspace(0, 1, groups + 1)))  # numpy's default is R's type 7
        idx = np.searchsorted(breaks, p, side="left") - 1  # right-closed intervals (a, b]
        idx[p <= breaks[0]] = 0                            # include.lowest
        idx = np.clip(idx, 0, max(len(breaks) - 2, 0))
    elif method == "stata":
        order = np.argsort(p, kind="stable")
        idx = np.empty(len(p), int)
        idx[order] = np.floor(np.arange(len(p)) * groups / len(p)).astype(int)
    else:
        raise ValueError("method must be 'quantile' or 'stata'")
    stat = 0.0
    formed = np.unique(idx)
    for k in formed:
        m = idx == k
        o1, e1 = y[m].sum(), p[m].sum()
        o0, e0 = m.sum() - o1, m.sum() - e1
        stat += (o1 - e1) ** 2 / e1 + (o0 - e0) ** 2 / e0
    if df_rule == "requested":
        df = groups - 2
    elif df_rule == "formed":
        df = len(formed) - (2 if fitted else 0)
    else:
        raise ValueError("df_rule must be 'formed' or 'requested'")
    pval = float(_st.chi2.sf(stat, df)) if df > 0 else float("nan")
    return HLResult(float(stat), pval, int(df))


def net_benefit(y_true, y_prob, thresholds) -> pd.DataFrame:
    """Net benefit of the model, treat-all and treat-none at each threshold (treat when risk ≥ threshold):

    .. math::

        \\mathrm{NB}(t) = \\frac{TP}{n} - \\frac{FP}{n}\\,\\frac{t}{1-t}

    Computed with the maintained ``dcurves`` package (the Python port of R ``dcurves``); returns one row
    per threshold with columns ``threshold``, ``model``, ``treat_all``, ``treat_none``.
    """
    from dcurves import dca

    thresholds = [float(t) for t in thresholds]
    d = pd.DataFrame({"y": np.asarray(y_true, int), "model": np.asarray(y_prob, float)})
    r = dca(data=d, outcome="y", modelnames=["model"], thresholds=thresholds)
    piv = r.pivot_table(index="threshold", columns="model", values="net_benefit", aggfunc="first")
    out = pd.DataFrame({"threshold": piv.index.to_numpy(), "model": piv["model"].to_numpy(),
                        "treat_all": piv["all"].to_numpy(), "treat_none": piv["none"].to_numpy()})
    return out.reset_index(drop=True)


def r_pretty(lo: float, up: float, n: int = 5) -> np.ndarray:
    """R's ``pretty()`` (the algorithm of R's ``src/appl/pretty.c``, defaults): nice axis values covering
    [lo, up] — used for nomogram axes as ``rms::nomogram`` draws them."""
    h, h5 = 1.5, 0.5 + 1.5 * 1.5
    min_n = n // 3
    eps = np.finfo(float).eps
    dx = up - lo
    if dx == 0 and up == 0:
        cell, small = 1.0, True
    else:
        cell = max(abs(lo), abs(up))
        U = 1 + (1 / (1 + h) if h5 >= 1.5 * h + 0.5 else 1.5 / (1 + h5))
        U *= max(1, n) * eps
        small = dx < cell * U * 3
    if small:
        if cell > 10:
            cell = 9 + cell / 10
        cell *= 0.75
        if min_n > 1:
            cell /= min_n
    else:
        cell = dx / n if n > 1 else dx
    base = 10.0 ** np.floor(np.log10(cell))
    unit = base
    if 2 * base - cell < h * (cell - unit):
        unit = 2 * base
        if 5 * base - cell < h5 * (cell - unit):
            unit = 5 * base
            if 10 * base - cell < h * (cell - unit):
                unit = 10 * base
    ns, nu = np.floor(lo / unit + 1e-7), np.ceil(up / unit - 1e-7)
    while ns * unit > lo + 1e-10 * unit:
        ns -= 1
    while nu * unit < up - 1e-10 * unit:
        nu += 1
    k = int(0.5 + nu - ns)
    if k < min_n:
        k = min_n - k
        if ns >= 0:
            nu += k / 2
            ns -= k / 2 + k % 2
        else:
            ns -= k / 2
            nu += k / 2 + k % 2
    return np.round(np.arange(ns, nu + 0.5) * unit, 12)


def nomogram_scale(coefs: dict, axes: dict) -> dict:
    """Points as ``rms::nomogram`` scales them: the predictor whose contribution β·x varies most over its
    axis spans 0–100 points; every predictor's points are (β·x − min over its axis) × scale.

    ``coefs``: {name: β} (no intercept); ``axes``: {name: axis values}. Returns ``scale`` (points per unit
    of linear predictor), ``offset`` (Σ of each predictor's minimum contribution) and ``points`` per axis.
    """
    ranges = {k: (coefs[k] * np.asarray(v, float)) for k, v in axes.items()}
    scale = 100.0 / max(r.max() - r.min() for r in ranges.values())
    points = {k: (r - r.min()) * scale for k, r in ranges.items()}
    return {"scale": scale, "offset": float(sum(r.min() for r in ranges.values())), "points": points}
