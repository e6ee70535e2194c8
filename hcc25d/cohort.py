"""The cohort specification (the paper's Table 1) and the cohort statistics of Tables 1 and 2.

Table 1 follows the paper's rules: Shapiro–Wilk for normality, then Student's t-test or the
Mann–Whitney U test for a continuous variable; the chi-square test with Yates' continuity correction
(``scipy.stats.chi2_contingency``'s default) for a categorical one.

Table 2 shows two analyses side by side:

* the paper's columns, which are reproduced exactly by an ordinary-least-squares *linear-probability*
  model of recurrence on the variable: "OR" = :math:`\\exp(\\hat\\beta)`, the interval is
  :math:`\\exp(\\hat\\beta \\pm t_{0.95,\\,n-p}\\,\\mathrm{SE})` (a 90 % interval) and P is the OLS t-test;
* the proper logistic-regression odds ratio with its 95 % Wald interval.

Coding: the second-listed level of Table 1 is 1, the first 0; ALBI is 1/2/3.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import yaml
from scipy import stats

__all__ = [
    "COHORTS",
    "COHORT_LABELS",
    "in_cohort_order",
    "DEFAULT_SPEC",
    "KNOWN_VARIABLES",
    "CohortSpecError",
    "CohortSpec",
    "load_spec",
    "scale_training",
    "validate_spec",
    "format_p",
    "continuous_test",
    "categorical_test",
    "table1",
    "table1_display",
    "table2",
    "table2_display",
]

COHORTS = ("training", "internal", "external")
COHORT_LABELS = {"training": "Training cohort", "internal": "Internal validation cohort",
                 "external": "External validation cohort"}
DEFAULT_SPEC = Path(__file__).parent / "data" / "table1_spec.yaml"


def in_cohort_order(names) -> list:
    """The distinct cohort names among ``names`` in the book's order (training, internal, external), any
    other name after them in order of appearance: every table and figure lists the cohorts alike."""
    present = list(pd.unique(pd.Series(list(names), dtype=object)))
    return [c for c in COHORTS if c in present] + [c for c in present if c not in COHORTS]


#: the clinical variables the pipeline knows (keys of the specification and patient-table columns).
KNOWN_VARIABLES = (
    "TBIL", "differentiation", "cirrhosis", "tumor_size", "tumor_number", "necrosis", "tumor_margin",
    "vessel_adjacency", "age", "gender", "hbv", "hbv_dna", "plt", "afp", "alb", "ast", "alt", "ki67",
    "mvi", "child_pugh", "albi",
)


class CohortSpecError(ValueError):
    """The cohort specification is invalid; the message lists every problem found."""


@dataclass(frozen=True)
class CohortSpec:
    """Validated cohort specification."""

    cohorts: dict          # name -> {"centre": int, "n": {0: int, 1: int}}
    continuous: dict       # var -> {"label", "stats": {cohort: {0: [mean, sd], 1: [...]}}, "paper_p"}
    categorical: dict      # var -> {"label", "levels", "codes", "counts": {cohort: {0: [...], 1: [...]}}}
    source: str = "default"

    @property
    def variables(self) -> list[str]:
        return list(self.continuous) + list(self.categorical)

    def label(self, var: str) -> str:
        d = self.continuous.get(var) or self.categorical.get(var)
        return d.get("label", var)

    def codes(self, var: str) -> list[int]:
        d = self.categorical[var]
        return list(d.get("codes", range(len(d["levels"]))))

    def coding(self) -> dict:
        """Column -> allowed codes (categorical) or ``None`` (continuous: any number), for checking data."""
        return {**{v: None for v in self.continuous}, **{v: self.codes(v) for v in self.categorical}}

    def n(self, cohort: str, outcome: Optional[int] = None) -> int:
        ns = self.cohorts[cohort]["n"]
        return ns[0] + ns[1] if outcome is None else ns[outcome]

    @property
    def n_total(self) -> int:
        return sum(self.n(c) for c in self.cohorts)


def load_spec(path: str | Path | None = None, training_scale: int = 1) -> CohortSpec:
    """Read and validate a cohort specification (YAML). ``None`` or ``"default"``: the paper's Table 1.

    ``training_scale`` (``cohort.training_scale``): multiply every count of the training cohort (its size
    per outcome and each level's count per outcome) by this integer; means and SDs are unchanged, so the
    twin draws the same kind of patients, only more of them, and the validation cohorts are untouched.
    """
    if path in (None, "default"):
        path = DEFAULT_SPEC
    path = Path(path)
    if not path.exists():
        raise CohortSpecError(f"cohort specification not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CohortSpecError(f"{path}: not valid YAML ({exc})") from None
    spec = validate_spec(raw, source=str(path))
    return spec if training_scale == 1 else scale_training(spec, training_scale)


def scale_training(spec: CohortSpec, factor: int) -> CohortSpec:
    """The specification with the training cohort's counts multiplied by ``factor`` (an integer ≥ 1)."""
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise CohortSpecError(f"training_scale: expected an integer >= 1, got {factor!r}")
    k = int(factor)
    cohorts = {c: dict(d) for c, d in spec.cohorts.items()}
    cohorts["training"]["n"] = {o: n * k for o, n in spec.cohorts["training"]["n"].items()}
    categorical = {}
    for var, d in spec.categorical.items():
        counts = dict(d["counts"])
        counts["training"] = {o: [x * k for x in v] for o, v in d["counts"]["training"].items()}
        categorical[var] = {**d, "counts": counts}
    return CohortSpec(cohorts=cohorts, continuous=spec.continuous, categorical=categorical,
                      source=f"{spec.source} (training cohort × {k})")


def _as_outcome_map(value, where, errors) -> Optional[dict]:
    if not isinstance(value, dict) or set(value) != {0, 1}:
        errors.append(f"{where}: expected a mapping with keys 0 (no recurrence) and 1 (recurrence)")
        return None
    return {0: value[0], 1: value[1]}


def validate_spec(raw: dict, source: str = "spec") -> CohortSpec:
    """Check a raw specification mapping; all problems are reported together."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise CohortSpecError(f"{source}: expected a mapping with cohorts, continuous, categorical")
    unknown_top = set(raw) - {"cohorts", "continuous", "categorical"}
    for k in sorted(unknown_top):
        errors.append(f"{k}: unknown section (allowed: cohorts, continuous, categorical)")
    cohorts = raw.get("cohorts") or {}
    if set(cohorts) != set(COHORTS):
        errors.append(f"cohorts: expected exactly {', '.join(COHORTS)}, got {', '.join(map(str, cohorts)) or 'none'}")
    sizes = {}
    for c, d in cohorts.items():
        n = _as_outcome_map((d or {}).get("n"), f"cohorts.{c}.n", errors)
        if n is None:
            continue
        for o in (0, 1):
            if not isinstance(n[o], int) or n[o] < 0:
                errors.append(f"cohorts.{c}.n.{o}: expected a count >= 0, got {n[o]!r}")
        if not isinstance((d or {}).get("centre"), int):
            errors.append(f"cohorts.{c}.centre: expected an integer centre number")
        sizes[c] = n
    cont = raw.get("continuous") or {}
    cat = raw.get("categorical") or {}
    for var in list(cont) + list(cat):
        if var not in KNOWN_VARIABLES:
            errors.append(f"{var}: unknown variable (known: {', '.join(KNOWN_VARIABLES)})")
    for var, d in cont.items():
        st = (d or {}).get("stats") or {}
        for c in sizes:
            m = _as_outcome_map(st.get(c), f"continuous.{var}.stats.{c}", errors)
            if m is None:
                continue
            for o in (0, 1):
                v = m[o]
                if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
                    errors.append(f"continuous.{var}.stats.{c}.{o}: expected [mean, sd], got {v!r}")
                elif v[1] < 0:
                    errors.append(f"continuous.{var}.stats.{c}.{o}: negative SD {v[1]}")
    for var, d in cat.items():
        d = d or {}
        levels = d.get("levels")
        if not isinstance(levels, list) or len(levels) < 2:
            errors.append(f"categorical.{var}.levels: expected a list of at least two levels")
            continue
        codes = d.get("codes", list(range(len(levels))))
        if len(codes) != len(levels):
            errors.append(f"categorical.{var}.codes: {len(codes)} codes for {len(levels)} levels")
        counts = d.get("counts") or {}
        for c, n in sizes.items():
            m = _as_outcome_map(counts.get(c), f"categorical.{var}.counts.{c}", errors)
            if m is None:
                continue
            for o in (0, 1):
                cnt = m[o]
                where = f"categorical.{var}.counts.{c}.{o}"
                if not isinstance(cnt, list) or len(cnt) != len(levels):
                    errors.append(f"{where}: expected {len(levels)} counts (one per level), got {cnt!r}")
                    continue
                bad = [x for x in cnt if not isinstance(x, int) or x < 0]
                if bad:
                    errors.append(f"{where}: counts must be integers >= 0, got {bad}")
                    continue
                if sum(cnt) != n[o]:
                    errors.append(f"{where}: counts add up to {sum(cnt)}, but cohort {c} has "
                                  f"{n[o]} patients with outcome {o}")
    if errors:
        raise CohortSpecError(f"{source}: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    return CohortSpec(cohorts={c: {"centre": cohorts[c]["centre"], "n": sizes[c]} for c in COHORTS},
                      continuous=cont, categorical=cat, source=source)


# --------------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------------
def format_p(p: float) -> str:
    """P value as printed in the paper's tables: 3 decimals, ``<0.001`` below."""
    if p is None or not np.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def continuous_test(x0: np.ndarray, x1: np.ndarray, alpha: float = 0.05) -> tuple[float, str]:
    """Shapiro–Wilk in each group; both normal → Student's t-test, else Mann–Whitney U (two-sided):
    :func:`hcc25d.stats.two_sample_test`."""
    from .stats import two_sample_test

    return two_sample_test(x0, x1, alpha)


def categorical_test(table: np.ndarray) -> float:
    """Chi-square with Yates' continuity correction on a levels × outcome table (empty levels dropped)."""
    table = np.asarray(table)
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2:
        return float("nan")
    return float(stats.chi2_contingency(table, correction=True)[1])


def table1(patients: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Table 1 in long form: one row per variable level and cohort.

    Columns: variable, label, level, cohort, n0, pct0, n1, pct1 (counts and % by outcome), mean/sd for
    continuous rows, p, test.
    """
    rows = []
    for c in COHORTS:
        sub = patients[patients["cohort"] == c]
        y = sub["label"].to_numpy()
        n0, n1 = int((y == 0).sum()), int((y == 1).sum())
        for var, d in spec.continuous.items():
            if var not in sub:
                continue
            x0 = sub.loc[y == 0, var].to_numpy(float)
            x1 = sub.loc[y == 1, var].to_numpy(float)
            p, test = continuous_test(x0, x1)
            rows.append(dict(variable=var, label=d.get("label", var), level="", cohort=c,
                             mean0=x0.mean(), sd0=x0.std(ddof=1), mean1=x1.mean(), sd1=x1.std(ddof=1),
                             p=p, test=test))
        for var, d in spec.categorical.items():
            if var not in sub:
                continue
            codes = spec.codes(var)
            tab = np.array([[int(((sub[var] == code) & (y == o)).sum()) for o in (0, 1)] for code in codes])
            p = categorical_test(tab)
            rows.append(dict(variable=var, label=d.get("label", var), level="", cohort=c, p=p,
                             test="chi-square (Yates)"))
            for lvl, (k0, k1) in zip(d["levels"], tab):
                rows.append(dict(variable=var, label=d.get("label", var), level=str(lvl), cohort=c,
                                 n0=int(k0), pct0=100 * k0 / n0 if n0 else np.nan,
                                 n1=int(k1), pct1=100 * k1 / n1 if n1 else np.nan))
    return pd.DataFrame(rows)


def table1_display(long: pd.DataFrame) -> pd.DataFrame:
    """Table 1 laid out as in the paper: rows = variables/levels, columns = cohort × (No recurrence,
    Recurrence, P value)."""
    out = {}
    order = []
    for _, r in long.iterrows():
        key = (r["label"], r["level"])
        if key not in out:
            out[key] = {}
            order.append(key)
        c = COHORT_LABELS[r["cohort"]]
        if pd.notna(r.get("mean0")):
            out[key][(c, "No recurrence")] = f"{r['mean0']:.2f} ± {r['sd0']:.2f}"
            out[key][(c, "Recurrence")] = f"{r['mean1']:.2f} ± {r['sd1']:.2f}"
            out[key][(c, "P value")] = format_p(r["p"])
        elif r["level"] == "":
            out[key][(c, "P value")] = format_p(r["p"])
        else:
            def cell(n, pct):
                return f"{int(n)} ({pct:.2f}%)" if n > 0 else "Null"
            out[key][(c, "No recurrence")] = cell(r["n0"], r["pct0"])
            out[key][(c, "Recurrence")] = cell(r["n1"], r["pct1"])
    df = pd.DataFrame([out[k] for k in order],
                      index=pd.Index([("    " + lv if lv else lab) for lab, lv in order], name="Feature"))
    cols = pd.MultiIndex.from_tuples([(COHORT_LABELS[c], s) for c in COHORTS
                                      for s in ("No recurrence", "Recurrence", "P value")])
    return df.reindex(columns=cols).fillna("")


# --------------------------------------------------------------------------------------------------
# Table 2
# --------------------------------------------------------------------------------------------------
def _ols_paper(y: np.ndarray, X: pd.DataFrame, level: float = 0.90):
    import statsmodels.api as sm

    res = sm.OLS(y.astype(float), sm.add_constant(X.astype(float), has_constant="add")).fit()
    ci = res.conf_int(alpha=1 - level)
    return res, ci


def _logit(y: np.ndarray, X: pd.DataFrame, level: float = 0.95):
    import statsmodels.api as sm

    res = sm.Logit(y.astype(float), sm.add_constant(X.astype(float), has_constant="add")).fit(disp=0)
    ci = res.conf_int(alpha=1 - level)
    return res, ci


def table2(patients: pd.DataFrame, spec: CohortSpec, cohort: str = "training",
           p_enter: float = 0.05, variables: Optional[list[str]] = None) -> pd.DataFrame:
    """Univariable and multivariable analyses of the clinical variables on one cohort.

    Variables whose paper-style univariable P is below ``p_enter`` enter the multivariable model.
    Returns one row per variable with, for the paper-style OLS analysis, ``or_paper``, ``lo_paper``,
    ``hi_paper``, ``p_paper`` (and ``m_*`` for the multivariable model), and for logistic regression
    ``or_logit``, ``lo_logit``, ``hi_logit``, ``p_logit`` (and ``m_*_logit``).
    """
    sub = patients[patients["cohort"] == cohort]
    y = sub["label"].to_numpy()
    variables = [v for v in (variables or spec.variables) if v in sub]
    rows = []
    for var in variables:
        X = sub[[var]]
        r, ci = _ols_paper(y, X)
        lr, lci = _logit(y, X)
        rows.append(dict(variable=var, label=spec.label(var),
                         or_paper=np.exp(r.params[var]), lo_paper=np.exp(ci.loc[var, 0]),
                         hi_paper=np.exp(ci.loc[var, 1]), p_paper=r.pvalues[var],
                         or_logit=np.exp(lr.params[var]), lo_logit=np.exp(lci.loc[var, 0]),
                         hi_logit=np.exp(lci.loc[var, 1]), p_logit=lr.pvalues[var]))
    out = pd.DataFrame(rows).set_index("variable")
    selected = [v for v in out.index if out.loc[v, "p_paper"] < p_enter]
    out["selected"] = out.index.isin(selected)
    if selected:
        X = sub[selected]
        r, ci = _ols_paper(y, X)
        lr, lci = _logit(y, X)
        for v in selected:
            out.loc[v, "m_or_paper"] = np.exp(r.params[v])
            out.loc[v, "m_lo_paper"] = np.exp(ci.loc[v, 0])
            out.loc[v, "m_hi_paper"] = np.exp(ci.loc[v, 1])
            out.loc[v, "m_p_paper"] = r.pvalues[v]
            out.loc[v, "m_or_logit"] = np.exp(lr.params[v])
            out.loc[v, "m_lo_logit"] = np.exp(lci.loc[v, 0])
            out.loc[v, "m_hi_logit"] = np.exp(lci.loc[v, 1])
            out.loc[v, "m_p_logit"] = lr.pvalues[v]
    return out.sort_values("or_paper").reset_index()


def table2_display(t2: pd.DataFrame) -> pd.DataFrame:
    """Table 2 laid out as in the paper, with the logistic odds ratios beside the paper-style columns."""
    def ci(lo, hi):
        return "" if pd.isna(lo) else f"{lo:.3f}–{hi:.3f}"

    def f(x):
        return "" if pd.isna(x) else f"{x:.3f}"

    rows = {}
    for _, r in t2.iterrows():
        rows[r["label"]] = {
            ("Univariable (paper's method: OLS, 90% CI)", "OR"): f(r["or_paper"]),
            ("Univariable (paper's method: OLS, 90% CI)", "CI"): ci(r["lo_paper"], r["hi_paper"]),
            ("Univariable (paper's method: OLS, 90% CI)", "P"): format_p(r["p_paper"]),
            ("Multivariable (paper's method)", "OR"): f(r.get("m_or_paper")),
            ("Multivariable (paper's method)", "CI"): ci(r.get("m_lo_paper"), r.get("m_hi_paper")),
            ("Multivariable (paper's method)", "P"): format_p(r.get("m_p_paper")),
            ("Univariable logistic (95% CI)", "OR"): f(r["or_logit"]),
            ("Univariable logistic (95% CI)", "CI"): ci(r["lo_logit"], r["hi_logit"]),
            ("Univariable logistic (95% CI)", "P"): format_p(r["p_logit"]),
            ("Multivariable logistic (95% CI)", "OR"): f(r.get("m_or_logit")),
            ("Multivariable logistic (95% CI)", "CI"): ci(r.get("m_lo_logit"), r.get("m_hi_logit")),
            ("Multivariable logistic (95% CI)", "P"): format_p(r.get("m_p_logit")),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    df.index.name = "Feature"
    return df
