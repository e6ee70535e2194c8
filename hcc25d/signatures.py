"""Signatures: feature selection, five classifier families tuned by grid search, and the clinical,
DL_2.5D, DL_3D and combined signatures.

Everything learnable is a scikit-learn step inside one ``Pipeline`` that ``GridSearchCV`` refits within
each cross-validation fold of the *training* cohort: the MIL fusion (histogram, bag-of-words vocabulary
and IDF), the univariate filter, the correlation pruning, the LASSO, the scaler and the classifier — and,
for the clinical and combined signatures, the screening of the clinical variables (:class:`ClinicalScreen`).
The internal and external cohorts are only ever passed to ``predict_proba``.

The cross-validation folds are the slice-level CNN's cross-fitting folds (:func:`folds_cv`): a training
patient's instance probabilities come from the CNN model that did not see it, and the same patient is
held out of the fusion model that scores it, so a "cross-validated training AUC" is an out-of-sample
number for the whole chain. All five families weigh the classes the same way (``balanced`` sample
weights, :func:`balanced_weights`), passed to the classifier's ``fit``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .cohort import COHORTS, in_cohort_order
from .stats import two_sample_test

__all__ = [
    "DEFAULT_GRIDS",
    "SIZE_COL",
    "SizeAdjust",
    "UnivariateFilter",
    "CorrelationPruner",
    "LassoSelector",
    "FitLog",
    "FitRecorder",
    "ClinicalScreen",
    "FAMILIES",
    "MODEL_NAMES",
    "make_classifier",
    "family_grid",
    "fusion_pipeline",
    "pipeline_for",
    "radiomics_choice",
    "RADIOMICS_PARAM",
    "FUSIONS",
    "MIL_PREFIXES",
    "folds_cv",
    "balanced_weights",
    "tune",
    "select_signature",
    "clinical_screen",
    "clinical_pipeline",
    "combined_pipeline",
    "fit_combined",
    "predict_combined",
    "heldout_views",
    "FusionInputs",
    "fusion_inputs",
    "harmonisation_effect",
    "fusion_alternative",
    "fusion_bins",
    "fusion_input_probs",
    "bin_occupancy",
    "predict_views",
    "FamilyResult",
    "fit_family",
    "build_models",
    "clinical_families",
    "table4",
    "selected_features",
    "with_oof",
    "signal_sources",
    "compact_sources",
    "selected_by_cohort",
    "saturation_note",
    "ONE_VALUE",
    "SATURATED",
]


DEFAULT_GRIDS = {
    "lr": {"C": [0.01, 0.1, 1.0]},
    "rf": {"n_estimators": [200], "max_depth": [3, 5], "min_samples_leaf": [2, 5]},
    "et": {"n_estimators": [200], "max_depth": [3, 5], "min_samples_leaf": [2, 5]},
    "xgb": {"n_estimators": [100], "max_depth": [2, 3], "learning_rate": [0.05, 0.1]},
    "lgbm": {"n_estimators": [100], "num_leaves": [4, 8], "learning_rate": [0.05, 0.1]},
}


def _as_frame(X) -> pd.DataFrame:
    return X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, float))


class UnivariateFilter(SelectorMixin, BaseEstimator):
    """Keep features whose two-sample test P < ``p_threshold``: Student's t-test when both classes pass
    Shapiro–Wilk (``alpha_normal``), else Mann–Whitney U. Keeps at least ``min_features`` (smallest P)."""

    def __init__(self, p_threshold: float = 0.05, alpha_normal: float = 0.05, min_features: int = 1):
        self.p_threshold = p_threshold
        self.alpha_normal = alpha_normal
        self.min_features = min_features

    def fit(self, X, y):
        A, y = validate_data(self, X, y, dtype=float)
        p = np.ones(A.shape[1])
        for j in range(A.shape[1]):
            a, b = A[y == 0, j], A[y == 1, j]
            if np.nanstd(A[:, j]) == 0 or len(a) < 2 or len(b) < 2:
                continue
            p[j] = two_sample_test(a, b, self.alpha_normal)[0]
        self.pvalues_ = np.nan_to_num(p, nan=1.0)
        mask = self.pvalues_ < self.p_threshold
        if mask.sum() < self.min_features:
            mask = np.zeros_like(mask)
            mask[np.argsort(self.pvalues_, kind="stable")[: self.min_features]] = True
        self.support_ = mask
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


class CorrelationPruner(SelectorMixin, BaseEstimator):
    """Drop a feature whose |Pearson r| with an already kept feature exceeds ``threshold`` (features are
    visited in the order of the input columns, i.e. the univariate filter's order)."""

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X, y=None):
        A = validate_data(self, X, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.abs(np.corrcoef(A, rowvar=False)) if A.shape[1] > 1 else np.ones((1, 1))
        r = np.nan_to_num(np.atleast_2d(r))
        keep = []
        for j in range(A.shape[1]):
            if all(r[j, k] <= self.threshold for k in keep):
                keep.append(j)
        self.support_ = np.zeros(A.shape[1], bool)
        self.support_[keep] = True
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


class LassoSelector(SelectorMixin, BaseEstimator):
    """Keep the features with a non-zero coefficient in a cross-validated LASSO on standardised features
    (``LassoCV``, as the paper's platform does). Keeps at least ``min_features`` (largest |coefficient|
    along the path if the chosen alpha zeroes everything)."""

    def __init__(self, cv: int = 5, random_state: Optional[int] = None, min_features: int = 1, max_iter: int = 5000):
        self.cv = cv
        self.random_state = random_state
        self.min_features = min_features
        self.max_iter = max_iter

    def fit(self, X, y):
        from sklearn.linear_model import LassoCV, lasso_path
        from sklearn.preprocessing import StandardScaler

        A, y = validate_data(self, X, y, dtype=float, y_numeric=True)
        A = StandardScaler().fit_transform(A)
        binary = set(np.unique(y)) <= {0.0, 1.0}
        cv = min(self.cv, int(min(np.bincount(y.astype(int))))) if binary and len(np.unique(y)) > 1 else self.cv
        lasso = LassoCV(cv=max(2, min(cv, len(y))), random_state=self.random_state, max_iter=self.max_iter,
                        n_jobs=1).fit(A, y)
        self.alpha_ = float(lasso.alpha_)
        self.n_iter_ = int(lasso.n_iter_)
        self.coef_ = lasso.coef_.copy()
        mask = self.coef_ != 0
        if mask.sum() < self.min_features:
            _, coefs, _ = lasso_path(A, y, alphas=50)
            last = coefs[:, -1]
            mask = np.zeros(A.shape[1], bool)
            mask[np.argsort(-np.abs(last), kind="stable")[: self.min_features]] = True
        self.support_ = mask
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


#: the column of a feature table that holds each patient's ROI extent (mm) for :class:`SizeAdjust`
SIZE_COL = "roi_extent_mm"


class SizeAdjust(TransformerMixin, BaseEstimator):
    """Take the tumour's size out of features (``signatures.size_adjust``), as ``cnn.size_adjust`` does for
    the CNN's score. The *last* input column is the ROI's extent (mm, :data:`SIZE_COL`); every other column
    is regressed, on the rows the step is fitted on (training patients only, refitted in every
    cross-validation fold), on log(extent) and — when labels are given — the outcome, so the part of the
    size relation that goes with the outcome is not removed. The size slope alone is subtracted,
    ``x − b · (log extent − median log extent)``; the extent column is dropped. Many radiomics features are
    surrogates of the tumour's volume; where tumour size predicts the outcome in the training cohort but not
    elsewhere, a screening on the training patients picks them as a shortcut."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y=None):
        A = validate_data(self, X, dtype=float, ensure_all_finite="allow-nan")
        if A.shape[1] < 2:
            raise ValueError("SizeAdjust needs at least one feature column before the ROI extent column")
        d = np.log(A[:, -1])
        ok = np.isfinite(d)
        if ok.sum() < 3:
            raise ValueError("SizeAdjust: fewer than 3 rows with a positive ROI extent")
        D = [np.ones(ok.sum()), d[ok]]
        if y is not None and len(np.unique(np.asarray(y)[ok])) > 1:
            D.append(np.asarray(y, float)[ok])
        F = A[ok, :-1]
        self.slope_ = np.zeros(F.shape[1])
        for j in range(F.shape[1]):  # column by column: a feature's missing rows do not drop the others'
            m = np.isfinite(F[:, j])
            if m.sum() > len(D):
                self.slope_[j] = np.linalg.lstsq(np.column_stack(D)[m], F[m, j], rcond=None)[0][1]
        self.centre_ = float(np.median(d[ok]))
        return self

    def transform(self, X):
        check_is_fitted(self, "slope_")
        A = validate_data(self, X, dtype=float, ensure_all_finite="allow-nan", reset=False)
        shift = np.nan_to_num(np.log(A[:, -1]) - self.centre_)
        return A[:, :-1] - shift[:, None] * self.slope_[None, :]

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "slope_")
        names = input_features if input_features is not None else getattr(
            self, "feature_names_in_", [f"x{i}" for i in range(self.n_features_in_)])
        return np.asarray(list(names)[:-1], dtype=object)


class FitLog(list):
    """A list that survives scikit-learn's ``clone`` (which deep-copies parameters): every clone of a
    :class:`FitRecorder` appends to the same log."""

    def __deepcopy__(self, memo):
        return self


class FitRecorder(BaseEstimator):
    """A pass-through pipeline step that records the row index of everything it is fitted on (tests use
    it to prove that no fitted step ever receives internal or external rows)."""

    def __init__(self, log: Optional[list] = None):
        self.log = log

    def fit(self, X, y=None):
        if self.log is not None:
            self.log.append(list(X.index) if hasattr(X, "index") else None)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return X

    def fit_transform(self, X, y=None):
        return self.fit(X, y).transform(X)


class ClinicalScreen(SelectorMixin, BaseEstimator):
    """The paper's clinical screening as a fitted step: univariable P < ``p_uni`` (its OLS analysis of
    Table 2, :func:`hcc25d.cohort.table2`'s ``p_paper``), then the variables whose P stays below
    ``p_multi`` in the multivariable model of those; if none stays, the univariable set; if none passes,
    the variable with the smallest univariable P (a pipeline needs one). Inside a pipeline it is refitted
    in every cross-validation fold, so the screening never sees the patients it is evaluated on.

    On a small fold two selected variables can coincide (a rank-deficient design): the P values then come
    from the pseudo-inverse, as statsmodels computes them, and ``rank_deficient_`` says so instead of a
    warning printed by every parallel worker."""

    def __init__(self, p_uni: float = 0.05, p_multi: float = 0.05):
        self.p_uni = p_uni
        self.p_multi = p_multi

    def fit(self, X, y):
        import warnings

        from statsmodels.tools.sm_exceptions import SingularMatrixWarning

        from .cohort import _ols_paper

        A, y = validate_data(self, X, y, dtype=float)
        frame = pd.DataFrame(A)
        p = np.ones(A.shape[1])
        for j in range(A.shape[1]):
            if np.std(A[:, j]) > 0:
                res, _ = _ols_paper(y, frame[[j]])
                p[j] = float(res.pvalues[j])
        self.pvalues_ = np.nan_to_num(p, nan=1.0)
        uni = np.flatnonzero(self.pvalues_ < self.p_uni)
        keep = uni
        self.rank_deficient_ = False
        if len(uni):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SingularMatrixWarning)
                res, _ = _ols_paper(y, frame[list(uni)])
            self.rank_deficient_ = any(issubclass(w.category, SingularMatrixWarning) for w in caught)
            for w in caught:  # anything else is the caller's to see
                if not issubclass(w.category, SingularMatrixWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            multi = [j for j in uni if res.pvalues[j] < self.p_multi]
            keep = np.array(multi) if multi else uni
        else:
            keep = np.array([int(np.argmin(self.pvalues_))])
        self.support_ = np.zeros(A.shape[1], bool)
        self.support_[keep] = True
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


def _lr(seed):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000, random_state=seed)


def _rf(seed):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(random_state=seed, n_jobs=1)


def _et(seed):
    from sklearn.ensemble import ExtraTreesClassifier

    return ExtraTreesClassifier(random_state=seed, n_jobs=1)


def _xgb(seed):
    from xgboost import XGBClassifier

    return XGBClassifier(random_state=seed, n_jobs=1, eval_metric="logloss", verbosity=0)


def _lgbm(seed):
    from lightgbm import LGBMClassifier

    return LGBMClassifier(random_state=seed, n_jobs=1, verbose=-1)


#: the classifier families: key -> (display name, constructor taking a seed, default grid)
FAMILIES = {
    "lr": ("LR", _lr, DEFAULT_GRIDS["lr"]),
    "rf": ("RandomForest", _rf, DEFAULT_GRIDS["rf"]),
    "et": ("ExtraTrees", _et, DEFAULT_GRIDS["et"]),
    "xgb": ("XGBoost", _xgb, DEFAULT_GRIDS["xgb"]),
    "lgbm": ("LightGBM", _lgbm, DEFAULT_GRIDS["lgbm"]),
}


MODEL_NAMES = {k: v[0] for k, v in FAMILIES.items()}


def make_classifier(key: str, seed: int):
    """A classifier of the family ``key`` (:data:`FAMILIES`), single-threaded, seeded."""
    if key not in FAMILIES:
        raise ValueError(f"unknown model {key!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[key][1](seed)


def family_grid(key: str, S) -> dict:
    """The family's default grid updated by ``signatures.grids`` of the params."""
    return {**FAMILIES[key][2], **(S.grids.get(key, {}) if S is not None else {})}


#: the multi-instance fusions (``signatures.fusion``): the paper's histogram and bag of words, or the summary
#: of the instance logits (:class:`hcc25d.mil.LogitSummary`)
FUSIONS = ("paper", "summary")
#: the prefixes of the multi-instance features among a fusion pipeline's feature names
MIL_PREFIXES = ("hist__", "bow__", "logit__")
#: the grid key of :func:`radiomics_choice`
RADIOMICS_PARAM = "fusion__rad"


def fusion_pipeline(key: str, inst_cols: Sequence[str], rad_cols: Sequence[str], seed: int, n_bins: int = 10,
                    n_words: int = 8, p_threshold: float = 0.05, corr_threshold: float = 0.9,
                    lasso: bool = True, recorder: Optional[list] = None, size_col: Optional[str] = None,
                    fusion: str = "paper"):
    """MIL fusion over the instance columns + radiomics columns → univariate filter → correlation pruning
    → LASSO → scaler → classifier, as one ``Pipeline``. ``fusion``: ``paper`` (the likelihood histogram and
    the bag of words) or ``summary`` (:class:`hcc25d.mil.LogitSummary`). With ``size_col`` (a column of the
    input holding each patient's ROI extent) the radiomics columns are size-adjusted (:class:`SizeAdjust`,
    fitted within the pipeline) before the screening."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .mil import BagOfWordsTfidf, LikelihoodHistogram, LogitSummary

    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; one of {FUSIONS}")
    parts = []
    if inst_cols and fusion == "summary":
        parts.append(("logit", LogitSummary(), list(inst_cols)))
    elif inst_cols:
        parts += [("hist", LikelihoodHistogram(n_bins=n_bins), list(inst_cols)),
                  ("bow", BagOfWordsTfidf(n_words=n_words), list(inst_cols))]
    if rad_cols and size_col:
        parts.append(("rad", Pipeline([("impute", SimpleImputer(strategy="median")), ("size", SizeAdjust())]),
                      list(rad_cols) + [size_col]))
    elif rad_cols:
        parts.append(("rad", SimpleImputer(strategy="median"), list(rad_cols)))
    steps = []
    if recorder is not None:
        steps.append(("record", FitRecorder(recorder)))
    steps += [("fusion", ColumnTransformer(parts, remainder="drop")),
              ("univariate", UnivariateFilter(p_threshold=p_threshold)),
              ("correlation", CorrelationPruner(threshold=corr_threshold))]
    if lasso:
        steps.append(("lasso", LassoSelector(random_state=seed)))
    steps += [("scale", StandardScaler()), ("model", make_classifier(key, seed))]
    return Pipeline(steps)


def pipeline_for(key: str, inst_cols: Sequence[str], rad_cols: Sequence[str], S, seed: int, **kwargs):
    """:func:`fusion_pipeline` with the fusion, bins, vocabulary and screening thresholds of the params'
    ``signatures`` section ``S``; ``kwargs``: ``lasso``, ``recorder``, ``size_col``."""
    return fusion_pipeline(key, inst_cols, rad_cols, seed, S.n_bins, S.n_words, S.p_threshold, S.corr_threshold,
                           fusion=S.fusion, **kwargs)


def folds_cv(fold: pd.Series):
    """A scikit-learn splitter from a fold number per training row (the CNN's cross-fitting folds)."""
    from sklearn.model_selection import PredefinedSplit

    f = pd.Series(fold)
    if f.isna().any():
        raise ValueError(f"{int(f.isna().sum())} training row(s) have no cross-fitting fold")
    return PredefinedSplit(f.astype(int).to_numpy())


def balanced_weights(y) -> np.ndarray:
    """Sample weights n / (2 n_class): each class carries half the weight (one policy for all families)."""
    from sklearn.utils.class_weight import compute_sample_weight

    return compute_sample_weight("balanced", np.asarray(y))


def tune(pipe, grid: dict, X: pd.DataFrame, y, seed: int, folds: int = 5, n_jobs: int = 1, cv=None,
         class_weight: str = "balanced", sample_weight: Optional[np.ndarray] = None):
    """Grid search (AUC) on the training rows only; returns the fitted ``GridSearchCV`` and the out-of-fold
    probabilities of its best configuration.

    ``grid``: the classifier's parameters; a key that names a pipeline step (``fusion__rad``) is searched as given.
    ``cv``: a splitter (e.g. :func:`folds_cv` of the CNN's folds); by default stratified ``folds``-fold.
    ``class_weight="balanced"`` passes :func:`balanced_weights` to the final step's ``fit``
    (``model__sample_weight``), the same way for every family; ``sample_weight`` (e.g.
    :func:`hcc25d.cnn.deconfounding_weights`, which also balance the classes) replaces them.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

    cv = cv if cv is not None else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    grid = {(k if "__" in k else f"model__{k}"): list(v) for k, v in grid.items()}
    if sample_weight is not None:
        params = {"model__sample_weight": np.asarray(sample_weight, float)}
    else:
        params = {"model__sample_weight": balanced_weights(y)} if class_weight == "balanced" else {}
    gs = GridSearchCV(pipe, grid, scoring="roc_auc", cv=cv, n_jobs=n_jobs, refit=True, error_score="raise")
    gs.fit(X, y, **params)
    oof = cross_val_predict(clone(gs.best_estimator_), X, y, cv=cv, method="predict_proba", n_jobs=n_jobs,
                            params=params)[:, 1]
    return gs, oof


def select_signature(cv_scores: dict, rule: str = "cv") -> tuple[str, str]:
    """Pick the DL_2.5D model: ``cv`` = best mean cross-validated AUC on the training cohort (a rule fixed
    in advance), or a model key (``rf`` reproduces the paper's RandomForest)."""
    if rule == "cv":
        best = max(cv_scores, key=lambda k: cv_scores[k])
        return best, (f"Rule fixed in advance: the model family with the best mean cross-validated "
                      f"training AUC — {MODEL_NAMES[best]} ({cv_scores[best]:.3f}).")
    if rule not in cv_scores:
        raise ValueError(f"signatures.dl25d_model: {rule!r} is not one of {list(cv_scores)} or 'cv'")
    return rule, f"Model fixed by parameter: {MODEL_NAMES[rule]} (signatures.dl25d_model)."


def clinical_screen(t2: pd.DataFrame, p_uni: float = 0.05, p_multi: float = 0.05) -> list[str]:
    """The paper's clinical screening on the training cohort: univariable P < ``p_uni`` (the paper's
    OLS analysis, Table 2), then multivariable P < ``p_multi`` among those."""
    sel = t2[t2["p_paper"] < p_uni]
    kept = sel[sel["m_p_paper"] < p_multi]["variable"].tolist() if "m_p_paper" in sel else []
    return kept or sel["variable"].tolist()


def clinical_pipeline(key: str, seed: int, p_uni: float = 0.05, p_multi: float = 0.05):
    """Clinical signature: screening (refitted per fold) → scaler → classifier."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("screen", ClinicalScreen(p_uni, p_multi)), ("scale", StandardScaler()),
                     ("model", make_classifier(key, seed))])


def combined_pipeline(score_col: str, clinical: Sequence[str], p_uni: float = 0.05, p_multi: float = 0.05):
    """Combined model for cross-validation: the DL_2.5D score and the clinical variables the screening
    keeps *within the fold* → unpenalised logistic regression (the model :func:`fit_combined` fits on the
    whole training cohort for the nomogram)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    parts = [("score", "passthrough", [score_col])]
    if clinical:
        parts.append(("clinical", ClinicalScreen(p_uni, p_multi), list(clinical)))
    return Pipeline([("select", ColumnTransformer(parts)),
                     ("model", LogisticRegression(C=np.inf, max_iter=5000))])  # unpenalised


def fit_combined(train: pd.DataFrame, score_col: str, clinical: Sequence[str]):
    """Logistic regression of the outcome on the DL_2.5D score and the kept clinical variables, fitted
    on the training cohort only (statsmodels, so that coefficients and intervals are available for the
    nomogram)."""
    import statsmodels.api as sm

    X = sm.add_constant(train[[score_col] + list(clinical)].astype(float), has_constant="add")
    return sm.Logit(train["label"].astype(float), X).fit(disp=0)


def predict_combined(fit, frame: pd.DataFrame, score_col: str, clinical: Sequence[str]) -> np.ndarray:
    import statsmodels.api as sm

    X = sm.add_constant(frame[[score_col] + list(clinical)].astype(float), has_constant="add")
    return np.asarray(fit.predict(X))


def heldout_views(instance_probs: pd.DataFrame, X: pd.DataFrame, inst_cols: Sequence[str]) -> list[pd.DataFrame]:
    """The feature table as each cross-fitted CNN fold model sees the internal and external patients.

    ``X`` holds the training patients' out-of-fold instance probabilities (and, for the others, the
    mean of the fold models). View *k* replaces the non-training rows' instance columns by fold model
    *k*'s own probabilities (``prob_fold<k>``), which are on the scale of the out-of-fold ones. Without
    such columns (``prediction: insample``) the only view is ``X`` itself.
    """
    from .mil import bag_matrix

    folds = sorted(c for c in instance_probs.columns if c.startswith("prob_fold"))
    if not folds or not len(inst_cols):
        return [X]
    others = instance_probs.loc[instance_probs["cohort"] != "training", "patient_id"].unique()
    others = X.index.intersection(others)
    views = []
    for c in folds:
        v = X.copy()
        B = bag_matrix(instance_probs[instance_probs["patient_id"].isin(others)], prob=c)
        v.loc[others, list(inst_cols)] = B.reindex(index=others, columns=list(inst_cols)).to_numpy()
        views.append(v)
    return views


@dataclass
class FusionInputs:
    """What the DL_2.5D fusion is fitted on (:func:`fusion_inputs`); ``fit_kwargs`` are the keyword arguments
    of :func:`build_models` and :func:`signal_sources` that come from it."""

    X: pd.DataFrame  #: patients × (instance slots, radiomics features[, the ROI extent])
    meta: pd.DataFrame  #: ``cohort`` and ``label``, in ``X``'s order
    inst_cols: list  #: the instance-slot columns of ``X`` (the bag)
    rad_cols: list  #: the radiomics columns of ``X``
    size_col: Optional[str]  #: the ROI-extent column of ``X`` for the size adjustment, or None
    extent: pd.Series  #: every patient's ROI extent in mm
    views: list  #: the validation patients as each CNN fold model sees them (:func:`heldout_views`)
    cv: object  #: the CNN's cross-fitting folds as a splitter, or None (stratified folds)
    cv_note: str  #: the cross-validation in words
    sample_weight: Optional[np.ndarray]  #: the training patients' deconfounding weights, or None
    inst: pd.DataFrame  #: the instance scores the fusion reads (harmonised where the run asks for it)
    inst_frozen: pd.DataFrame  #: the CNN's scores as the frozen model gives them
    inst_harm: pd.DataFrame  #: the same with every centre without training patients harmonised
    harm_log: pd.DataFrame  #: :func:`hcc25d.mil.harmonise_centres`' log

    @property
    def train(self) -> np.ndarray:
        return (self.meta["cohort"] == "training").to_numpy()

    @property
    def y(self) -> np.ndarray:
        return self.meta["label"].to_numpy()

    def fit_kwargs(self) -> dict:
        return {"cv": self.cv, "views": self.views, "sample_weight": self.sample_weight,
                "size_col": self.size_col}


def fusion_inputs(cfg, patients: pd.DataFrame, inst: pd.DataFrame, radf: pd.DataFrame) -> FusionInputs:
    """The inputs of the DL_2.5D fusion from a run's stage outputs, in the signatures stage's steps.

    ``patients``: the cohort table (``patient_id``, ``centre``, ``cohort``, ``label`` and the clinical
    variables); ``inst``: the CNN's instance predictions (``instance_probs_selected.csv``); ``radf``: the
    radiomics features indexed by ``patient_id``.

    1. The scores of every centre without training patients are also harmonised
       (:func:`hcc25d.mil.harmonise_centres`, for the chapter's comparison); the fusion reads them only
       with ``signatures.harmonise_centres``.
    2. The bag matrix (one column per instance slot) joined with the radiomics columns that hold a value,
       and, with ``signatures.size_adjust``, the ROI's extent (the radiomics features' size adjustment).
    3. The validation patients as each CNN fold model sees them (:func:`heldout_views`).
    4. The cross-validation: the CNN's own cross-fitting folds (``signatures.cv: cnn``, when every training
       patient has one), else stratified folds.
    5. With ``cnn.deconfound``, the training patients' deconfounding weights.
    """
    from . import crop25d, mil

    S = cfg.signatures
    pat = patients.set_index("patient_id")
    inst_harm, harm_log = mil.harmonise_centres(inst, pat["centre"])
    used = inst_harm if S.harmonise_centres else inst
    bags = mil.bag_matrix(used)
    inst_cols = list(bags.columns)
    rad_cols = [c for c in radf.columns if radf[c].notna().any()]
    X = bags.join(radf[rad_cols], how="inner")
    extent = crop25d.roi_extent_mm(used, cfg.crop.spacing_mm).rename(SIZE_COL)
    size_col = SIZE_COL if S.size_adjust and rad_cols else None
    if size_col:
        X = X.join(extent)
    meta = pat.loc[X.index, ["cohort", "label"]]
    train = (meta["cohort"] == "training").to_numpy()
    fold = used.drop_duplicates("patient_id").set_index("patient_id")["fold"].reindex(X.index[train])
    if S.cv == "cnn" and fold.notna().all():
        cv = folds_cv(fold)
        cv_note = f"the CNN's {cv.get_n_splits()} cross-fitting folds"
    else:
        cv = None
        cv_note = f"{S.cv_folds} stratified folds" + (
            " (the CNN ran in-sample, so it has no folds)" if S.cv == "cnn" else "")
    weights = None
    if cfg.cnn.deconfound:
        from .cnn import deconfounding_weights

        weights = deconfounding_weights(meta["label"].to_numpy()[train],
                                        pat.loc[X.index[train], list(cfg.cnn.deconfound)])
    return FusionInputs(X=X, meta=meta, inst_cols=inst_cols, rad_cols=rad_cols, size_col=size_col,
                        extent=extent, views=heldout_views(used, X, inst_cols), cv=cv, cv_note=cv_note,
                        sample_weight=weights, inst=used, inst_frozen=inst, inst_harm=inst_harm,
                        harm_log=harm_log)


def predict_views(estimator, X: pd.DataFrame, views: Sequence[pd.DataFrame], train_mask) -> np.ndarray:
    """Probabilities of every row: from ``X`` for the training rows (in-sample fit of a refitted model),
    the mean over the fold-model ``views`` for the others."""
    train_mask = np.asarray(train_mask, bool)
    p = estimator.predict_proba(X)[:, 1]
    if len(views) > 1 or views[0] is not X:
        v = np.mean([estimator.predict_proba(V)[:, 1] for V in views], axis=0)
        p[~train_mask] = v[~train_mask]
    return p


def fusion_bins(estimator) -> dict:
    """The bins and thresholds that a fitted DL_2.5D pipeline's multi-instance features use, all fitted on
    the training instances: ``hist_edges`` and ``hist_threshold`` (the likelihood histogram's bins and its
    label histogram's instance threshold), ``bow_edges`` and ``bow_threshold`` (the bag of words' bin edges
    and its label threshold). Empty where the pipeline has no multi-instance features."""
    steps = getattr(estimator, "named_steps", {})
    fusion = steps.get("fusion") if hasattr(steps, "get") else None
    tr = dict(getattr(fusion, "named_transformers_", {}) or {})
    out = {}
    for key in ("hist", "bow"):
        t = tr.get(key)
        if t is not None and hasattr(t, "edges_"):
            out[f"{key}_edges"] = np.asarray(t.edges_, float)
            out[f"{key}_threshold"] = float(t.threshold_)
    return out


def fusion_input_probs(instance_probs: pd.DataFrame) -> pd.DataFrame:
    """The instance probabilities as the multi-instance fusion reads them: a training instance's out-of-fold
    ``prob``; every other instance once per fold model (``prob_fold<k>``, as :func:`heldout_views` gives the
    validation patients to the fitted pipeline), or its ``prob`` where there are no fold columns. Columns
    ``patient_id``, ``cohort``, ``prob``."""
    ip = instance_probs
    folds = sorted(c for c in ip.columns if c.startswith("prob_fold"))
    train = ip["cohort"] == "training"
    parts = [ip.loc[train, ["patient_id", "cohort", "prob"]]]
    for c in folds or ["prob"]:
        parts.append(ip.loc[~train, ["patient_id", "cohort", c]].rename(columns={c: "prob"}))
    return pd.concat(parts, ignore_index=True).dropna(subset=["prob"])


def bin_occupancy(frozen: pd.DataFrame, harmonised: Optional[pd.DataFrame], bins: dict) -> pd.DataFrame:
    """Where each cohort's instances fall among the fusion's bins (:func:`fusion_bins`), as the fusion reads
    them (:func:`fusion_input_probs`): per cohort, and for a cohort that harmonisation moved also with the
    harmonised scores, the instances' median probability, the share at or above the label histogram's
    threshold, and the shares in the likelihood histogram's lowest bin and in the bag of words' lowest bin.
    Without multi-instance bins, an empty table."""
    if "hist_edges" not in bins:
        return pd.DataFrame()
    he, bw = bins["hist_edges"], bins.get("bow_edges")
    sets = {"frozen": fusion_input_probs(frozen)}
    if harmonised is not None:
        sets["harmonised"] = fusion_input_probs(harmonised)
    rows = []
    seen = list(pd.unique(sets["frozen"]["cohort"]))
    for c in [c for c in COHORTS if c in seen] + [c for c in seen if c not in COHORTS]:
        for scale, d in sets.items():
            p = d.loc[d["cohort"] == c, "prob"].to_numpy(float)
            if scale == "harmonised" and np.allclose(
                    p, sets["frozen"].loc[sets["frozen"]["cohort"] == c, "prob"].to_numpy(float)):
                continue  # harmonisation left this cohort where it was
            row = {"cohort": c, "scores": scale, "instances": len(p), "median probability": float(np.median(p)),
                   "at or above the label threshold": float(np.mean(p >= bins["hist_threshold"])),
                   "in the histogram's lowest bin": float(np.mean(p < he[1]))}
            if bw is not None and len(bw) > 2:
                row["in the lowest word bin"] = float(np.mean(p < bw[1]))
            rows.append(row)
    return pd.DataFrame(rows)


def harmonisation_effect(estimator, X: pd.DataFrame, meta: pd.DataFrame, inst_cols: Sequence[str],
                         frozen: pd.DataFrame, harmonised: pd.DataFrame, log: pd.DataFrame,
                         centre: pd.Series) -> pd.DataFrame:
    """The fitted DL_2.5D pipeline's AUC on each validation cohort with the CNN scores as the frozen model
    gives them and with centres harmonised (:func:`hcc25d.mil.harmonise_centres`), beside the CNN's own
    patient score (mean instance logit, which an affine map per centre leaves unchanged).

    The training rows, and so the fitted pipeline, are the same both ways (a centre with training patients
    is never harmonised); only the validation patients' multi-instance features differ. ``log``: the
    harmonisation's log; ``centre``: each patient's centre (indexed by ``patient_id``). The column
    ``centres moved`` says which of the cohort's centres were moved, from which mean and SD of the logits."""
    from .mil import bag_matrix
    from .stats import auc_ci, logit

    train = (meta["cohort"] == "training").to_numpy()
    others = X.index[~train]
    probs = {}
    for name, ip in (("frozen", frozen), ("harmonised", harmonised)):
        Xv = X.copy()
        B = bag_matrix(ip[ip["patient_id"].isin(others)])
        Xv.loc[others, list(inst_cols)] = B.reindex(index=others, columns=list(inst_cols)).to_numpy()
        probs[name] = predict_views(estimator, Xv, heldout_views(ip, Xv, inst_cols), train)
    score = frozen.assign(lg=logit(frozen["prob"])).groupby("patient_id")["lg"].mean().reindex(X.index)
    moved = (log[log["harmonised"].astype(bool) & (log["column"] == "prob")].set_index("centre") if len(log)
             else pd.DataFrame())
    rows = []
    for c in [c for c in in_cohort_order(meta["cohort"]) if c != "training"]:
        k = (meta["cohort"] == c).to_numpy()
        y = meta["label"].to_numpy()[k]
        row = {"cohort": c, "n": int(k.sum())}
        for name, p in probs.items():
            row[f"DL_2.5D AUC ({name})"] = auc_ci(y, p[k]).auc
        row["CNN score AUC"] = auc_ci(y, score.to_numpy()[k]).auc
        here = [m for m in pd.unique(centre.reindex(X.index[k]).dropna()) if m in moved.index]
        row["centres moved"] = "; ".join(
            f"centre {m}: logit mean {moved.at[m, 'mean before']:+.2f}, SD {moved.at[m, 'SD before']:.2f} → "
            f"{moved.at[m, 'mean target']:+.2f}, {moved.at[m, 'SD target']:.2f}" for m in here) or "—"
        rows.append(row)
    return pd.DataFrame(rows)


def fusion_alternative(key: str, inputs: "FusionInputs", S, seed: int, scores: np.ndarray,
                       n_jobs: int = 1) -> pd.DataFrame:
    """DL_2.5D's family ``key`` refitted with the other multi-instance fusion of :data:`FUSIONS` (the
    paper's or the logit summary), everything else as the run fits it (the same folds, weights, radiomics
    and seed): one row per cohort with the cross-validated training AUC or the cohort's AUC both ways.
    ``scores``: the run's DL_2.5D probabilities (training rows out of fold)."""
    from .stats import auc

    other = next(f for f in FUSIONS if f != S.fusion)
    d = inputs
    pipe = pipeline_for(key, d.inst_cols, d.rad_cols, S.model_copy(update={"fusion": other}), seed,
                        size_col=d.size_col)
    kw = d.fit_kwargs()
    kw.pop("size_col")
    alt = fit_family(key, pipe, d.X, d.meta, S, seed, n_jobs=n_jobs, choose_radiomics=S.radiomics == "cv",
                     **kw).scores
    y, cohort = d.y, d.meta["cohort"].to_numpy()
    rows = []
    for c in in_cohort_order(d.meta["cohort"]):
        m = cohort == c
        if len(set(y[m])) < 2:
            continue
        rows.append({"cohort": "training (cross-validated)" if c == "training" else c, "n": int(m.sum()),
                     f"AUC (fusion: {S.fusion}, this run)": auc(y[m], np.asarray(scores, float)[m]),
                     f"AUC (fusion: {other})": auc(y[m], alt[m])})
    return pd.DataFrame(rows)


@dataclass
class FamilyResult:
    """One tuned classifier family: its grid search, its out-of-fold training probabilities and every
    row's probabilities, with the threshold chosen on the out-of-fold ones (Youden)."""

    key: str
    search: object               # the fitted GridSearchCV (refitted on all training rows)
    oof: np.ndarray              # training rows: out of fold
    proba: np.ndarray            # every row: the refitted pipeline's (validation rows: mean over views)
    insample: np.ndarray         # every row: the refitted pipeline's own prediction (the paper's way)
    train: np.ndarray            # boolean mask of the training rows
    y_train: np.ndarray          # the training rows' labels

    @property
    def name(self) -> str:
        return FAMILIES[self.key][0]

    @property
    def scores(self) -> np.ndarray:
        """Every row's honest probability: out of fold for training rows."""
        return with_oof(self.train, self.oof, self.proba)

    @property
    def cv_auc(self) -> float:
        return float(self.search.best_score_)

    @property
    def threshold(self) -> float:
        from .stats import youden_threshold

        return youden_threshold(self.y_train, self.oof)

    @property
    def best_params(self) -> dict:
        out = {}
        for k, v in self.search.best_params_.items():
            if k == RADIOMICS_PARAM:  # the transformer object or "drop" (radiomics_choice)
                out["radiomics"] = "dropped" if isinstance(v, str) and v == "drop" else "kept"
            else:
                out[k.replace("model__", "")] = v
        return out


def radiomics_choice(pipe) -> dict:
    """The grid entry that lets the cross-validation decide whether a fusion pipeline's radiomics half enters
    (``signatures.radiomics: cv``): ``{"fusion__rad": [the pipeline's radiomics transformer, "drop"]}``, or
    ``{}`` where the pipeline lacks either half (there is nothing to choose)."""
    fusion = pipe.named_steps.get("fusion") if hasattr(pipe, "named_steps") else None
    parts = {name: t for name, t, _ in getattr(fusion, "transformers", [])}
    if "rad" not in parts or len(parts) < 2:
        return {}
    return {RADIOMICS_PARAM: [parts["rad"], "drop"]}


def fit_family(key: str, pipe, X: pd.DataFrame, meta: pd.DataFrame, S, seed: int, n_jobs: int = 1, cv=None,
               views: Optional[Sequence[pd.DataFrame]] = None,
               sample_weight: Optional[np.ndarray] = None, choose_radiomics: bool = False) -> FamilyResult:
    """Tune one family's pipeline on the training rows (:func:`tune`) and score every row. Only
    ``X[meta.cohort == "training"]`` is ever passed to ``fit``; the other rows are only predicted (the mean
    over the fold-model ``views``, :func:`heldout_views`, when given). ``choose_radiomics``: the grid also
    searches the pipeline with and without its radiomics half (:func:`radiomics_choice`)."""
    train = (meta["cohort"] == "training").to_numpy()
    y = meta["label"].to_numpy()
    grid = {**family_grid(key, S), **(radiomics_choice(pipe) if choose_radiomics else {})}
    gs, oof = tune(pipe, grid, X[train], y[train], seed, S.cv_folds, n_jobs=n_jobs, cv=cv,
                   class_weight=S.class_weight, sample_weight=sample_weight)
    return FamilyResult(key, gs, oof, predict_views(gs, X, views or [X], train), gs.predict_proba(X)[:, 1],
                        train, y[train])


def build_models(X: pd.DataFrame, meta: pd.DataFrame, inst_cols, rad_cols, S, seed: int, n_jobs: int = 1,
                 recorder: Optional[list] = None, cv=None, models: Optional[Sequence[str]] = None,
                 views: Optional[Sequence[pd.DataFrame]] = None,
                 sample_weight: Optional[np.ndarray] = None, size_col: Optional[str] = None) -> dict:
    """The DL_2.5D families: every family of ``S.models`` tuned on the fusion pipeline
    (:func:`fusion_pipeline`; ``size_col``: see there) — ``{key: FamilyResult}``."""
    return {key: fit_family(key, pipeline_for(key, inst_cols, rad_cols, S, seed, recorder=recorder,
                                              size_col=size_col),
                            X, meta, S, seed, n_jobs=n_jobs, cv=cv, views=views, sample_weight=sample_weight,
                            choose_radiomics=S.radiomics == "cv")
            for key in (models or S.models)}


def clinical_families(C: pd.DataFrame, meta: pd.DataFrame, S, seed: int, n_jobs: int = 1, cv=None) -> dict:
    """The clinical signature's families: every family of ``S.models`` on the clinical variables, with
    the paper's screening (:class:`ClinicalScreen`) refitted inside each fold — ``{key: FamilyResult}``."""
    if C.shape[1] == 0:
        return {}
    return {key: fit_family(key, clinical_pipeline(key, seed, S.clinical_p_uni, S.clinical_p_multi),
                            C, meta, S, seed, n_jobs=n_jobs, cv=cv) for key in S.models}


def table4(results: dict, meta: pd.DataFrame, reference: Optional[dict] = None) -> pd.DataFrame:
    """Table 4: each family's metrics per cohort (cross-validated training row and the in-sample one),
    its threshold chosen on the out-of-fold training probabilities, its CV AUC and best parameters."""
    from .evaluation import metrics_table

    rows = []
    for r in results.values():
        frame = meta.assign(prob=r.scores, prob_insample=r.insample)
        t = metrics_table(frame, insample="prob_insample", threshold=r.threshold, reference=reference,
                          training_label="training (cross-validated)")
        rows.append(t.assign(model=r.name, cv_auc=r.cv_auc, best_params=str(r.best_params)))
    return pd.concat(rows, ignore_index=True)


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


def with_oof(train_mask, oof, proba) -> np.ndarray:
    """Every row's probability: out-of-fold for the training rows, the refitted model's for the others."""
    out = np.asarray(proba, float).copy()
    out[np.asarray(train_mask, bool)] = oof
    return out


def signal_sources(X: pd.DataFrame, meta: pd.DataFrame, inst_cols, rad_cols, key: str, S, seed: int,
                   instance_probs: pd.DataFrame, dl25d: np.ndarray, n_jobs: int = 1, cv=None,
                   views: Optional[Sequence[pd.DataFrame]] = None,
                   sample_weight: Optional[np.ndarray] = None, size_col: Optional[str] = None) -> pd.DataFrame:
    """Where the DL_2.5D signature's signal comes from: patient-level AUC (95 % DeLong CI) per cohort of
    the CNN's own patient score (mean instance probability; training out of fold), of the same family and
    fusion pipeline on the multi-instance features alone and on the radiomics features alone, and of
    DL_2.5D (both; ``dl25d``: its scores, training rows out of fold). All fitted on training rows only."""
    from .stats import auc_ci

    pat = instance_probs.groupby("patient_id")["prob"].mean().reindex(X.index)
    parts = {"CNN patient score (before fusion)": pat.to_numpy()}
    if inst_cols:
        cols = list(inst_cols)
        r = fit_family(key, pipeline_for(key, cols, [], S, seed), X[cols], meta, S, seed, n_jobs=n_jobs, cv=cv,
                       views=[v[cols] for v in views] if views else None, sample_weight=sample_weight)
        parts["multi-instance features alone"] = r.scores
    if rad_cols:
        cols = list(rad_cols) + ([size_col] if size_col else [])
        r = fit_family(key, pipeline_for(key, [], list(rad_cols), S, seed, size_col=size_col), X[cols], meta, S, seed,
                       n_jobs=n_jobs, cv=cv, sample_weight=sample_weight)
        parts["radiomics features alone"] = r.scores
    parts["DL_2.5D (both)"] = np.asarray(dl25d, float)
    rows = []
    for name, score in parts.items():
        row = {"score": name}
        for c in ("training", "internal", "external"):
            m = (meta["cohort"] == c).to_numpy() & np.isfinite(score)
            if m.sum() and meta["label"].to_numpy()[m].min() != meta["label"].to_numpy()[m].max():
                a = auc_ci(meta["label"].to_numpy()[m], score[m])
                row[f"AUC {c}"] = a.auc
                row[f"95% CI {c}"] = f"{a.low:.2f}–{a.high:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


#: the column prefix of :func:`selected_by_cohort`'s share of a cohort's patients at the feature's most common value
ONE_VALUE = "share at one value"
#: :func:`saturation_note`: a feature is saturated on a cohort where at least this share of its patients take
#: one value
SATURATED = 0.9


def saturation_note(selected: pd.DataFrame, threshold: float = SATURATED) -> str:
    """The selected features that take one value for at least ``threshold`` of a validation cohort's patients
    but not of the training patients (from :func:`selected_by_cohort`'s ``share at one value`` columns): such
    a feature cannot rank that cohort's patients, whatever model reads it. A multi-instance feature saturates
    where the cohort's instance scores sit at one end of the bins and thresholds fitted on the training
    scores (a centre shift). Returns "" where none does."""
    tr = f"{ONE_VALUE} training"
    if tr not in selected:
        return ""
    parts, mil = [], False
    for c in ("internal", "external"):
        col = f"{ONE_VALUE} {c}"
        if col not in selected:
            continue
        hit = selected[(selected[col] >= threshold) & (selected[tr] < threshold)]
        mil |= bool(hit["feature"].str.startswith(MIL_PREFIXES).any())
        if len(hit):
            parts.append(f"on the {c} patients, {len(hit)} of the {len(selected)} selected features take one value "
                         f"for at least {threshold * 100:.0f} % of them (training: at most "
                         f"{hit[tr].max() * 100:.0f} %): " + ", ".join(
                             f"{f.replace('rad__', '').replace('original_', '')} ({v * 100:.0f} %)"
                             for f, v in zip(hit["feature"], hit[col])))
    if not parts:
        return ""
    return ("Saturated on a validation cohort: " + "; ".join(parts) + ". Such a feature cannot rank that "
            "cohort's patients, whatever model reads it, and the model's ranking of those patients rests on its "
            "other features."
            + (" For a multi-instance feature it means that the cohort's instance scores sit at one end of the "
               "bins and thresholds fitted on the training scores (a centre shift, as the figure of the fusion's "
               "bins below shows)." if mil else ""))


def selected_by_cohort(pipe, X: pd.DataFrame, meta: pd.DataFrame,
                       extent: Optional[pd.Series] = None) -> pd.DataFrame:
    """The features a fitted fusion pipeline keeps (:func:`selected_features`), each with its own AUC per
    cohort (oriented as in the training cohort, so below 0.5 elsewhere means the association reverses)
    and, with ``extent`` (each patient's ROI extent in mm, e.g. :func:`hcc25d.crop25d.roi_extent_mm`),
    its Spearman correlation with the ROI's size on the training patients: a feature that is mostly size
    carries the tumour-size association of the training cohort, wherever that holds. The ``share at one
    value <cohort>`` columns give the share of each cohort's patients at the feature's most common value
    (:func:`saturation_note`)."""
    from scipy.stats import spearmanr

    from .stats import auc

    sel = selected_features(pipe)
    fusion = pipe.named_steps["fusion"]
    F = pd.DataFrame(fusion.transform(X), index=X.index, columns=fusion.get_feature_names_out())
    y = meta["label"].to_numpy()
    train = (meta["cohort"] == "training").to_numpy()
    rows = []
    for name in sel["feature"]:
        v = F[name].to_numpy(float)
        a_tr = auc(y[train], v[train])
        sign = 1.0 if a_tr >= 0.5 else -1.0
        row = {"feature": name}
        for c in ("training", "internal", "external"):
            m = (meta["cohort"] == c).to_numpy() & np.isfinite(v)
            if m.sum() and len(np.unique(y[m])) == 2:
                row[f"AUC {c}"] = auc(y[m], sign * v[m])
        for c in ("training", "internal", "external"):
            m = (meta["cohort"] == c).to_numpy() & np.isfinite(v)
            if m.sum():
                row[f"{ONE_VALUE} {c}"] = float(pd.Series(v[m]).value_counts(normalize=True).iloc[0])
        if extent is not None:
            e = extent.reindex(X.index).to_numpy(float)
            ok = train & np.isfinite(e) & np.isfinite(v)
            row["Spearman with ROI size (training)"] = float(spearmanr(v[ok], e[ok])[0]) if ok.sum() > 2 else np.nan
        rows.append(row)
    return sel.merge(pd.DataFrame(rows), on="feature", how="left") if rows else sel


def compact_sources(sources: pd.DataFrame) -> pd.DataFrame:
    """:func:`signal_sources` for the page: one column per cohort, each cell "AUC (95 % CI)"."""
    out = sources[["score"]].copy()
    for c in ("training", "internal", "external"):
        if f"AUC {c}" in sources:
            out[c] = [f"{a:.3f} ({ci})" if np.isfinite(a) else "–"
                                        for a, ci in zip(sources[f"AUC {c}"], sources[f"95% CI {c}"])]
    return out.set_index("score").rename_axis("AUC (95% CI)")
