"""Evaluation results, computed once: the tables and curves behind Tables 3–5 and Figures 4–9.

Every statistic of the book's result figures is computed here (with :mod:`hcc25d.stats`, whose DeLong,
Hosmer–Lemeshow, net-benefit and nomogram computations are checked against R) and returned as a table
or a small result object; :mod:`hcc25d.plotting` only draws these results and computes nothing
statistical. The stage notebooks save the same objects as CSV, so a number in a figure is a number in a
table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import stats
from .cohort import COHORTS, in_cohort_order

__all__ = [
    "COHORTS",
    "metrics_table",
    "slot_auc",
    "instance_reference",
    "margin_share",
    "table5",
    "threshold_transfer",
    "threshold_transfer_summary",
    "ROC",
    "roc",
    "Calibration",
    "calibration",
    "delong_matrix",
    "decision_curves",
    "Nomogram",
    "nomogram",
    "PAPER_METRICS",
    "PATIENT_CI_LABEL",
    "paper_layout",
    "auc_text",
]

_ORDER = {c: i for i, c in enumerate(COHORTS)}


def metrics_table(frame: pd.DataFrame, prob: str = "prob", by: Optional[str] = None,
                  insample: Optional[str] = None, threshold: Optional[float] = None,
                  reference: Optional[dict] = None, which: str = "image",
                  training_label: str = "training", cluster: Optional[str] = None) -> pd.DataFrame:
    """Metrics per cohort (:func:`hcc25d.stats.metrics_by_cohort`), one block per value of ``by``.

    ``insample``: a column of in-sample training probabilities, added as a ``training (in-sample)`` row
    (the paper's way of reporting, beside the honest out-of-sample one). ``reference``: the twin's
    reference AUCs (:func:`hcc25d.stats.load_reference`); ``which`` picks the column (``image`` or
    ``combined``). ``training_label`` renames the out-of-sample training row (for example
    ``training (cross-validated)``). ``cluster``: the column naming each row's patient where rows are
    instances (adds the AUC's interval with whole patients resampled, see
    :func:`hcc25d.stats.metrics_by_cohort`).
    """
    groups = frame.groupby(by, sort=False) if by else [(None, frame)]
    rows = []
    for key, g in groups:
        parts = []
        if insample is not None:
            ins = stats.metrics_by_cohort(g.assign(**{prob: g[insample]}), prob, threshold=threshold,
                                          cohorts=("training",), cluster=cluster)
            parts.append(ins.assign(cohort="training (in-sample)"))
        t = stats.metrics_by_cohort(g, prob, threshold=threshold, cluster=cluster)
        t["cohort"] = t["cohort"].replace({"training": training_label})
        parts.append(t)
        block = pd.concat(parts, ignore_index=True)
        if by:
            block.insert(0, by, key)
        rows.append(block)
    out = pd.concat(rows, ignore_index=True)
    if reference and which in reference:
        col = stats.REFERENCE_COLUMNS.get(which, f"reference AUC ({which})")
        out[col] = out["cohort"].str.split(" ").str[0].map(reference[which])
    return out


def slot_auc(preds: pd.DataFrame, prob: str = "prob") -> pd.DataFrame:
    """Instance AUC per slot and cohort: which of the 2.5D instances (``view`` and ``offset``) carry what a
    slice-level model reads. Rows: cohorts (training = the column ``prob`` holds, out of fold for a
    cross-fitted model); columns: slots (``axial+0``, ``axial-1``, …, ``sagittal+0``, ``coronal+0``),
    central axial first; NaN where a cohort lacks a class."""
    from .mil import bag_matrix
    from .stats import auc

    out = {}
    for cohort, g in preds.groupby("cohort", sort=False):
        B = bag_matrix(g, prob=prob)
        y = g.groupby("patient_id")["label"].first().reindex(B.index).to_numpy()
        out[cohort] = {slot: (auc(y[B[slot].notna()], B[slot].dropna()) if len(set(y[B[slot].notna()])) == 2
                              else np.nan) for slot in B.columns}
    t = pd.DataFrame(out).T
    return t.reindex(in_cohort_order(t.index))


def margin_share(auc: pd.Series, reference: pd.Series) -> pd.Series:
    """The share of a reference's margin over chance that an AUC recovers, cohort by cohort:
    ``(AUC − 0.5) / (reference − 0.5)``; NaN where either is missing or the reference is not above 0.5."""
    a, r = auc.astype(float), reference.reindex(auc.index).astype(float)
    return ((a - 0.5) / (r - 0.5)).where(r > 0.5)


def instance_reference(models: dict) -> pd.DataFrame:
    """Instance AUC of several instance-level models side by side, per cohort: ``models`` maps a name to
    its instance predictions (columns ``cohort``, ``label``, ``prob``, and optionally ``size_shift`` from
    :func:`hcc25d.cnn.size_adjust`). A model with a non-zero ``size_shift`` also gets a column "<name>,
    before size adjustment" (its scores with the shift added back). Rows: cohorts in the usual order;
    NaN where a cohort lacks a class. For comparing an instance-level AUC with an instance-level yardstick,
    never with a patient-level reference."""
    from .cnn import undo_size_adjust

    cols = {}
    for name, preds in models.items():
        cols[name] = preds
        if "size_shift" in preds and np.abs(preds["size_shift"].to_numpy(float)).max() > 0:
            cols[f"{name}, before size adjustment"] = undo_size_adjust(preds)
    out = {}
    for name, p in cols.items():
        out[name] = {c: (stats.auc(g["label"], g["prob"]) if g["label"].nunique() == 2 else np.nan)
                     for c, g in p.groupby("cohort", sort=False)}
    t = pd.DataFrame(out)
    return t.reindex(in_cohort_order(t.index))


def table5(sigs: pd.DataFrame, names: Sequence[str], reference: Optional[dict] = None) -> pd.DataFrame:
    """Table 5: metrics of each signature per cohort (threshold from its training predictions), with
    both reference AUCs of the twin beside each cohort."""
    t = pd.concat([stats.metrics_by_cohort(sigs, s).assign(signature=s) for s in names], ignore_index=True)
    if reference:
        for k, col in stats.REFERENCE_COLUMNS.items():
            t[col] = t["cohort"].map(reference[k])
    rank = {n: i for i, n in enumerate(names)}
    return t.sort_values(["cohort", "signature"], key=lambda c: c.map(_ORDER if c.name == "cohort" else rank),
                         kind="stable").reset_index(drop=True)


def threshold_transfer(sigs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """How each signature's training threshold carries over to the other cohorts: per signature and
    cohort (the rows of :func:`table5` ``table``, whose threshold it uses), the patients with a prediction,
    the observed recurrence rate, the mean predicted risk, and the share of patients the threshold flags
    (risk ≥ threshold, as Table 5 counts them). Where a cohort's flagged share is far from its recurrence
    rate while its AUC holds, the signature ranks that cohort's patients but its scores sit elsewhere."""
    rows = []
    for _, r in table.iterrows():
        g = sigs[(sigs["cohort"] == r["cohort"]) & sigs[r["signature"]].notna()]
        p = g[r["signature"]].to_numpy(float)
        flagged = stats.binary_metrics(g["label"], p, r["threshold"])["flagged"]
        rows.append({"signature": r["signature"], "cohort": r["cohort"], "n": len(g),
                     "recurrence rate": float(g["label"].mean()), "mean predicted risk": float(p.mean()),
                     "flagged at the training threshold": flagged if np.isfinite(r["threshold"]) else np.nan,
                     "threshold": float(r["threshold"]), "AUC": float(r["auc"])})
    return pd.DataFrame(rows)


def threshold_transfer_summary(t: pd.DataFrame, train: str = "training") -> str:
    """Per validation cohort, the signature whose flagged share lies farthest from the recurrence rate,
    with its AUC there and its flagged share and mean predicted risk against the training cohort's: one
    sentence per cohort."""
    out = []
    base = t[t["cohort"] == train].set_index("signature")
    shown = t[(t["cohort"] != train) & t["flagged at the training threshold"].notna()]
    for c, g in shown.groupby("cohort", sort=False):
        far = g.loc[(g["flagged at the training threshold"] - g["recurrence rate"]).abs().idxmax()]
        s = far["signature"]
        txt = (f"On the {c} cohort, where {100 * far['recurrence rate']:.0f} % of the patients had a recurrence, "
               f"{s}'s training threshold flags {100 * far['flagged at the training threshold']:.0f} % of them")
        if s in base.index:
            b = base.loc[s]
            txt += (f" (the {train} cohort: {100 * b['flagged at the training threshold']:.0f} %), while its AUC "
                    f"there is {far['AUC']:.3f}; its mean predicted risk is {far['mean predicted risk']:.2f}, "
                    f"against {b['mean predicted risk']:.2f} on the {train} cohort.")
        else:
            txt += f", while its AUC there is {far['AUC']:.3f}."
        out.append(txt)
    return " ".join(out)


@dataclass
class ROC:
    """ROC curves and AUCs (95 % DeLong intervals) per model and cohort."""

    summary: pd.DataFrame                      # model, cohort, n, auc, low, high
    curves: dict = field(default_factory=dict)  # (model, cohort) -> (fpr, tpr)
    cohorts: tuple = COHORTS


def roc(frame: pd.DataFrame, model_col: str, prob: str = "prob", label: str = "label",
        cohorts: Sequence[str] = COHORTS) -> ROC:
    """ROC curves and DeLong AUC intervals of every model (``model_col``) in every cohort; a model or
    cohort with one class only is left out."""
    from sklearn.metrics import roc_curve

    rows, curves = [], {}
    for c in cohorts:
        g = frame[frame["cohort"] == c]
        for name, h in g.groupby(model_col, sort=False):
            h = h[h[prob].notna()]
            if h[label].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(h[label], h[prob])
            a = stats.auc_ci(h[label], h[prob])
            curves[(name, c)] = (fpr, tpr)
            rows.append({"model": name, "cohort": c, "n": len(h), "auc": a.auc, "low": a.low, "high": a.high})
    return ROC(pd.DataFrame(rows, columns=["model", "cohort", "n", "auc", "low", "high"]), curves, tuple(cohorts))


@dataclass
class Calibration:
    """Calibration curves (quantile bins) and Hosmer–Lemeshow tests per signature and cohort."""

    curves: pd.DataFrame      # signature, cohort, predicted, observed
    hl: pd.DataFrame          # signature, cohort, n, statistic, df, p_value, groups
    cohorts: tuple = COHORTS


def calibration(frame: pd.DataFrame, signatures: Sequence[str], cohorts: Sequence[str] = COHORTS,
                n_bins: int = 5, fitted: bool = False) -> Calibration:
    """scikit-learn's ``calibration_curve`` (``n_bins`` quantile bins) and the Hosmer–Lemeshow test (10
    groups; ``fitted`` says whether the probabilities were fitted on these patients, which sets the
    degrees of freedom) of each signature in each cohort."""
    from sklearn.calibration import calibration_curve

    curves, hl = [], []
    for c in cohorts:
        g = frame[frame["cohort"] == c]
        for s in signatures:
            h = g[g[s].notna()]
            if h["label"].nunique() < 2:
                continue
            frac, mean = calibration_curve(h["label"], h[s], n_bins=n_bins, strategy="quantile")
            curves.append(pd.DataFrame({"signature": s, "cohort": c, "predicted": mean, "observed": frac}))
            t = stats.hosmer_lemeshow(h["label"], np.clip(h[s], 1e-6, 1 - 1e-6), fitted=fitted)
            hl.append({"signature": s, "cohort": c, "n": int(len(h)), **t._asdict()})
    return Calibration(pd.concat(curves, ignore_index=True) if curves else
                       pd.DataFrame(columns=["signature", "cohort", "predicted", "observed"]),
                       pd.DataFrame(hl), tuple(cohorts))


def delong_matrix(frame: pd.DataFrame, signatures: Sequence[str], cohorts: Sequence[str] = COHORTS) -> dict:
    """Paired DeLong P values between every pair of signatures: ``{cohort: square DataFrame}`` (patients
    with every signature's prediction)."""
    out = {}
    for c in cohorts:
        g = frame[frame["cohort"] == c].dropna(subset=list(signatures))
        P = pd.DataFrame(np.nan, index=list(signatures), columns=list(signatures))
        for a in signatures:
            for b in signatures:
                P.loc[a, b] = 1.0 if a == b else stats.delong_test(g["label"], g[a], g[b]).p_value
        out[c] = P
    return out


def decision_curves(frame: pd.DataFrame, signatures: Sequence[str], cohorts: Sequence[str] = COHORTS,
                    thresholds=None) -> pd.DataFrame:
    """Net benefit of each signature, of treating all and of treating none, per cohort: one row per
    threshold, signature and cohort (with the cohort's prevalence)."""
    thresholds = np.round(np.arange(0.01, 0.96, 0.01), 2) if thresholds is None else thresholds
    rows = []
    for c in cohorts:
        g = frame[frame["cohort"] == c]
        for s in signatures:
            h = g[g[s].notna()]
            rows.append(stats.net_benefit(h["label"], h[s], thresholds)
                        .assign(signature=s, cohort=c, prevalence=float(g["label"].mean())))
    return pd.concat(rows, ignore_index=True)


@dataclass
class Nomogram:
    """A logistic model's nomogram, scaled as ``rms::nomogram``: the points of each axis value, the
    total-points axis and where each risk falls on it."""

    intercept: float
    axes: dict            # name -> axis values
    points: dict          # name -> points of each axis value
    scale: float          # points per unit of the linear predictor
    offset: float         # sum of each predictor's minimum contribution
    max_total: float
    total_ticks: np.ndarray
    risk_ticks: np.ndarray  # risks whose total points fall on the axis
    risk_points: np.ndarray

    def total_points(self, risk) -> np.ndarray:
        """Total points at which the model predicts ``risk``."""
        r = np.asarray(risk, float)
        return (np.log(r / (1 - r)) - self.intercept - self.offset) * self.scale


def nomogram(intercept: float, coefs: dict, axes: dict,
             risk_ticks=(0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)) -> Nomogram:
    """The nomogram of a logistic model (``coefs`` without the intercept; ``axes``: values per
    predictor): points as ``rms::nomogram`` scales them, total points on R's ``pretty()`` ticks."""
    s = stats.nomogram_scale(coefs, axes)
    max_total = float(sum(v.max() for v in s["points"].values()))
    ticks = stats.r_pretty(0, max_total)
    ticks = ticks[ticks <= max_total + 1e-9]
    nomo = Nomogram(float(intercept), {k: np.asarray(v, float) for k, v in axes.items()}, s["points"],
                    float(s["scale"]), float(s["offset"]), max_total, ticks, np.array([]), np.array([]))
    r = np.asarray(risk_ticks, float)
    tot = nomo.total_points(r)
    ok = (tot >= 0) & (tot <= max_total)
    nomo.risk_ticks, nomo.risk_points = r[ok], tot[ok]
    return nomo


#: the paper's metric columns of Tables 3–5, in its order
PAPER_METRICS = [("accuracy", "Accuracy"), ("auc", "AUC (95% CI)"), ("sensitivity", "Sensitivity"),
                 ("specificity", "Specificity"), ("ppv", "PPV"), ("npv", "NPV")]


#: the column :func:`paper_layout` gives an instance-level AUC's interval with whole patients resampled.
PATIENT_CI_LABEL = "95% CI, patients resampled"


def auc_text(auc, lo=None, hi=None) -> str:
    """An AUC with its 95 % CI as the tables print it: ``0.689 (0.531–0.847)`` (3 decimals; the AUC
    alone without bounds, empty for a missing AUC)."""
    if pd.isna(auc):
        return ""
    return f"{auc:.3f} ({lo:.3f}–{hi:.3f})" if pd.notna(lo) and pd.notna(hi) else f"{auc:.3f}"


_auc_text = auc_text


def paper_layout(long: pd.DataFrame, row: str, cohorts: Optional[Sequence[str]] = None,
                 wide: bool = False) -> pd.DataFrame:
    """A metrics table (one row per ``row`` value and cohort, as :func:`metrics_table` writes it) with the
    paper's six metrics (AUC with its 95 % CI), at 3 decimals, as text. By default one row per ``row``
    value and cohort (cohorts in ``cohorts`` order), which fits a page; ``wide=True`` gives the paper's
    printed layout: ``row`` values as row labels, cohorts as column groups (18+ columns).

    Where ``long`` has the interval with whole patients resampled (``metrics_table(..., cluster=...)``,
    instance-level tables), the default layout adds it as a column after the AUC
    (:data:`PATIENT_CI_LABEL`); the paper's wide layout keeps the paper's columns."""
    cohorts = list(cohorts or dict.fromkeys(long["cohort"]))
    if not wide:
        rank = {c: i for i, c in enumerate(cohorts)}
        labels = [label for _, label in PAPER_METRICS]
        clustered = "ci_low_patients" in long and long["ci_low_patients"].notna().any()
        if clustered:
            labels.insert(labels.index("AUC (95% CI)") + 1, PATIENT_CI_LABEL)
        rows = {}
        for (name, c), g in long[long["cohort"].isin(rank)].groupby([row, "cohort"], sort=False):
            r = g.iloc[0]
            rows[(name, c)] = {label: (_auc_text(r["auc"], r.get("ci_low"), r.get("ci_high")) if m == "auc"
                                       else ("" if pd.isna(r[m]) else f"{r[m]:.3f}"))
                               for m, label in PAPER_METRICS}
            if clustered:
                lo, hi = r.get("ci_low_patients"), r.get("ci_high_patients")
                rows[(name, c)][PATIENT_CI_LABEL] = f"{lo:.3f}–{hi:.3f}" if pd.notna(lo) and pd.notna(hi) else ""
        names = list(dict.fromkeys(long[row]))
        keys = sorted(rows, key=lambda k: (names.index(k[0]), rank[k[1]]))
        t = pd.DataFrame([rows[k] for k in keys], columns=labels)
        t.index = pd.MultiIndex.from_tuples(keys, names=[row, "cohort"])
        return t
    out = {}
    for (name, c), g in long.groupby([row, "cohort"], sort=False):
        r = g.iloc[0]
        for m, label in PAPER_METRICS:
            out.setdefault(name, {})[(c, label)] = (_auc_text(r["auc"], r.get("ci_low"), r.get("ci_high"))
                                                     if m == "auc" else
                                                     ("" if pd.isna(r[m]) else f"{r[m]:.3f}"))
    cols = pd.MultiIndex.from_tuples([(c, label) for c in cohorts for _, label in PAPER_METRICS],
                                     names=["cohort", ""])
    t = pd.DataFrame.from_dict(out, orient="index").reindex(columns=cols).fillna("")
    t.index.name = row
    return t
