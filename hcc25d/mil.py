"""Multi-instance learning fusion: from a patient's instance probabilities to patient features.

Input of every transformer: an array (n_patients, n_instances) of instance probabilities (NaN where a
bag lacks an instance), as made by :func:`bag_matrix`.

* :class:`LikelihoodHistogram` — the *predict likelihood histogram*: the distribution of a patient's
  instance probabilities over ``n_bins`` bins, plus the fraction of instances predicted positive (the
  label histogram) at a threshold fitted on the training bags.
* :class:`BagOfWordsTfidf` — the *bag of words*: each instance becomes words (its probability bin and its
  predicted label); a patient is a document; TF-IDF weights the words. The vocabulary, the bin edges
  and the IDF are fitted on the training bags only (the commercial platform's reference implementation
  fits them on all patients, which leaks the validation cohorts into the features).
* :class:`LogitSummary` — not the paper's: the mean, SD and quantiles of a patient's instance *logits*
  (``signatures.fusion: summary``). It has no bin or threshold: a shift of every score of a centre by one
  constant shifts its location features by that constant and leaves the SD alone, so a linear model reading
  them keeps that centre's patients in the same order.

Both follow scikit-learn's estimator API (no logic in ``__init__``, ``fit`` returns ``self``, fitted
attributes end in ``_``) and compose in a ``Pipeline``/``ColumnTransformer``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = [
    "bag_matrix",
    "harmonise_centres",
    "MIN_HARMONISE_PATIENTS",
    "LikelihoodHistogram",
    "BagOfWordsTfidf",
    "LogitSummary",
    "SUMMARY_STATS",
]


def bag_matrix(instance_probs: pd.DataFrame, prob: str = "prob", views=None) -> pd.DataFrame:
    """Patients × instances table of probabilities; columns named ``<view><offset>`` (e.g. ``axial+2``).

    ``views``: optional filter, a list of (view, offset) pairs to keep (for ablations).
    """
    d = instance_probs.copy()
    if views is not None:
        keep = set((v, int(o)) for v, o in views)
        d = d[[(v, int(o)) in keep for v, o in zip(d["view"], d["offset"])]]
    d["slot"] = d["view"] + d["offset"].map(lambda o: f"{int(o):+d}")
    order = (d.drop_duplicates("slot").assign(k=lambda x: x["view"].map({"axial": 0, "sagittal": 1, "coronal": 2}) * 100
                                              + x["offset"].abs() * 2 + (x["offset"] < 0))
             .sort_values("k")["slot"].tolist())
    m = d.pivot_table(index="patient_id", columns="slot", values=prob, aggfunc="mean")
    return m[order]


#: a centre with fewer patients than this is not harmonised (its mean and SD would be too noisy)
MIN_HARMONISE_PATIENTS = 20


def harmonise_centres(instance_probs: pd.DataFrame, centre: pd.Series,
                      min_patients: int = MIN_HARMONISE_PATIENTS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score harmonisation of centres that have no training patient (opt-in: ``signatures.harmonise_centres``).

    For every such centre and every probability column (``prob`` and the fold models' ``prob_fold<k>``),
    the logits of the centre's instances are mapped by one affine transform so that their mean and SD equal
    those of the training patients' out-of-fold logits (``prob`` of the training rows). No label is used,
    but the map is fitted on the new centre's own patients: it is *transductive* (it needs a batch of the
    new centre's patients, and a model validated so is no longer frozen before it met them). Within a
    centre the ranking of instances is unchanged; what changes is where they fall among the fusion's
    histogram bins and word thresholds, which were fitted on the training scores. Centres with training
    patients, and centres with fewer than ``min_patients`` patients, are left as they are.

    ``centre``: the centre of each patient (indexed by ``patient_id``). Returns ``(harmonised copy, log)``
    with one log row per centre and column: its patients, the logits' mean and SD before, the target's,
    and whether it was harmonised.
    """
    from .stats import logit

    out = instance_probs.copy()
    cen = centre.reindex(out["patient_id"].astype(str)).to_numpy()
    train = (out["cohort"] == "training").to_numpy()
    cols = [c for c in out.columns if c == "prob" or c.startswith("prob_fold")]
    rows = []
    if not train.any() or "prob" not in cols:
        return out, pd.DataFrame(rows)
    ref = logit(out.loc[train, "prob"])
    m0, s0 = float(ref.mean()), float(ref.std())
    seen = set(pd.Series(cen[train]).dropna())
    for c in sorted(set(pd.Series(cen).dropna()) - seen):
        k = cen == c
        n = int(out.loc[k, "patient_id"].nunique())
        for col in cols:
            v = out.loc[k, col].to_numpy(float)
            ok = ~np.isnan(v)
            lg = logit(v[ok])
            m, s = (float(lg.mean()), float(lg.std())) if ok.any() else (np.nan, np.nan)
            done = bool(n >= min_patients and ok.sum() > 1 and s > 0)
            if done:
                v[ok] = 1 / (1 + np.exp(-((lg - m) / s * s0 + m0)))
                out.loc[k, col] = v
            rows.append({"centre": c, "column": col, "patients": n, "mean before": m, "SD before": s,
                         "mean target": m0, "SD target": s0, "harmonised": done})
    return out, pd.DataFrame(rows)


def _as_array(X) -> np.ndarray:
    return np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X, dtype=float)


def _fit_threshold(threshold, A: np.ndarray, y) -> float:
    """The instance threshold: Youden's on the training bags (each instance labelled with its patient's
    label) for ``"youden"``, else the number given (0.5 when ``"youden"`` has no labels to use)."""
    if threshold == "youden" and y is not None and len(np.unique(y)) == 2:
        yy = np.repeat(np.asarray(y), A.shape[1])
        ok = ~np.isnan(A.ravel())
        return _youden(yy[ok], A.ravel()[ok])
    return 0.5 if threshold == "youden" else float(threshold)


from .stats import youden_threshold as _youden  # noqa: E402 (one Youden rule for the package)


class _BagTransformer(TransformerMixin, BaseEstimator):
    """Base of the MIL transformers: bags may lack instances, so NaN is a valid input."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


class LikelihoodHistogram(_BagTransformer):
    """Histogram of a bag's instance probabilities (``n_bins`` equal bins on [0, 1], as fractions) and
    the fraction of instances predicted positive.

    Parameters
    ----------
    n_bins : int
        Number of probability bins.
    threshold : float or "youden"
        Instance threshold for the label histogram; ``"youden"`` is fitted on the training bags
        (every instance labelled with its patient's label).
    """

    def __init__(self, n_bins: int = 10, threshold="youden"):
        self.n_bins = n_bins
        self.threshold = threshold

    def fit(self, X, y=None):
        A = validate_data(self, X, ensure_all_finite="allow-nan", dtype=float)
        self.threshold_ = _fit_threshold(self.threshold, A, y)
        self.edges_ = np.linspace(0.0, 1.0, self.n_bins + 1)
        return self

    def transform(self, X):
        check_is_fitted(self, "edges_")
        A = validate_data(self, X, ensure_all_finite="allow-nan", dtype=float, reset=False)
        out = np.zeros((A.shape[0], self.n_bins + 2))
        for i, row in enumerate(A):
            r = row[~np.isnan(row)]
            if len(r) == 0:
                continue
            h, _ = np.histogram(np.clip(r, 0, 1), bins=self.edges_)
            out[i, :self.n_bins] = h / len(r)
            pos = float(np.mean(r >= self.threshold_))
            out[i, self.n_bins:] = (1 - pos, pos)
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "edges_")
        return np.array([f"hist_p{i}" for i in range(self.n_bins)] + ["hist_label0", "hist_label1"], dtype=object)


class BagOfWordsTfidf(_BagTransformer):
    """TF-IDF over words made from the instances' discretised predictions.

    Each instance contributes the word ``p<k>`` (its probability's quantile bin, ``n_words`` bins with
    edges fitted on the training instances) and ``y<0|1>`` (its predicted label at a threshold fitted on
    the training bags). Vocabulary and IDF are fitted on the training bags only.
    """

    def __init__(self, n_words: int = 8, threshold="youden", smooth_idf: bool = True, sublinear_tf: bool = False):
        self.n_words = n_words
        self.threshold = threshold
        self.smooth_idf = smooth_idf
        self.sublinear_tf = sublinear_tf

    def _docs(self, A):
        docs = []
        for row in A:
            r = row[~np.isnan(row)]
            bins = np.clip(np.searchsorted(self.edges_, r, side="right") - 1, 0, len(self.edges_) - 2)
            words = [f"p{b}" for b in bins] + [f"y{int(v >= self.threshold_)}" for v in r]
            docs.append(" ".join(words))
        return docs

    def fit(self, X, y=None):
        from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

        A = validate_data(self, X, ensure_all_finite="allow-nan", dtype=float)
        flat = A[~np.isnan(A)]
        qs = np.quantile(flat, np.linspace(0, 1, self.n_words + 1)) if len(flat) else np.linspace(0, 1, self.n_words + 1)
        qs[0], qs[-1] = -np.inf, np.inf
        self.edges_ = np.unique(qs)
        self.threshold_ = _fit_threshold(self.threshold, A, y)
        self.vectorizer_ = CountVectorizer(token_pattern=r"[py]\d+", lowercase=False)
        counts = self.vectorizer_.fit_transform(self._docs(A))
        self.tfidf_ = TfidfTransformer(smooth_idf=self.smooth_idf, sublinear_tf=self.sublinear_tf).fit(counts)
        self.vocabulary_ = dict(self.vectorizer_.vocabulary_)
        self.idf_ = self.tfidf_.idf_
        return self

    def transform(self, X):
        check_is_fitted(self, "tfidf_")
        A = validate_data(self, X, ensure_all_finite="allow-nan", dtype=float, reset=False)
        return self.tfidf_.transform(self.vectorizer_.transform(self._docs(A))).toarray()

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "tfidf_")
        return np.array([f"bow_{w}" for w in self.vectorizer_.get_feature_names_out()], dtype=object)


#: :class:`LogitSummary`'s features, in order: name → function of a bag's instance logits
SUMMARY_STATS = {
    "mean": np.mean,
    "sd": lambda v: float(np.std(v)),
    "min": np.min,
    "q25": lambda v: float(np.quantile(v, 0.25)),
    "median": np.median,
    "q75": lambda v: float(np.quantile(v, 0.75)),
    "max": np.max,
}


class LogitSummary(_BagTransformer):
    """The mean, SD, minimum, quartiles and maximum of a bag's instance logits (``logit_mean`` ...
    ``logit_max``; a bag without instances gives NaN).

    Nothing is fitted on the training bags beyond the number of columns, so there is nothing for a shifted
    centre's scores to fall outside of: if every instance logit of a patient moves by ``c``, every feature
    but ``logit_sd`` moves by ``c`` and ``logit_sd`` stays. A model linear in these features (logistic
    regression after the standard scaler) then moves every such patient's score by the same amount, and a
    centre whose scores are all shifted alike keeps its patients' order. Tree models split on fixed values and
    keep no such guarantee.
    """

    def __init__(self, stats: tuple = tuple(SUMMARY_STATS)):
        self.stats = stats

    def fit(self, X, y=None):
        validate_data(self, X, ensure_all_finite="allow-nan", dtype=float)
        unknown = [s for s in self.stats if s not in SUMMARY_STATS]
        if unknown:
            raise ValueError(f"LogitSummary: unknown statistic(s) {unknown}; known: {list(SUMMARY_STATS)}")
        self.stats_ = tuple(self.stats)
        return self

    def transform(self, X):
        from .stats import logit

        check_is_fitted(self, "stats_")
        A = validate_data(self, X, ensure_all_finite="allow-nan", dtype=float, reset=False)
        out = np.full((A.shape[0], len(self.stats_)), np.nan)
        for i, row in enumerate(A):
            r = row[~np.isnan(row)]
            if len(r):
                lg = logit(r)
                out[i] = [SUMMARY_STATS[s](lg) for s in self.stats_]
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "stats_")
        return np.array([f"logit_{s}" for s in self.stats_], dtype=object)
