"""The clinical study twin: a patient table that reproduces the paper's Table 1 exactly.

How the twin is drawn
---------------------
Table 1 fixes, for every cohort × outcome cell, how many patients have each level of each variable.
Inside a cell, the twin decides *which* patients get which level through a latent factor model, so
that the variables are not independent of each other:

* every patient has four standard-normal latent factors: tumour burden ``T``, tumour biology ``B``,
  chronic liver disease ``L`` and demography ``D``;
* each variable has a score :math:`s = \\lambda^\\top F + \\sqrt{1-\\lVert\\lambda\\rVert^2}\\,\\varepsilon`
  with loadings :math:`\\lambda` from :data:`LOADINGS` (e.g. tumour size, number, vessel contact and MVI
  load on ``T``; Ki67, MVI and AFP on ``B``; cirrhosis, HBV, platelets, albumin, Child–Pugh, ALBI and
  bilirubin on ``L``; age on ``D``);
* the patients with the lowest scores get the first-listed level, the next ones the next level, in
  exactly the counts of Table 1 (TBIL: values drawn from a gamma law, standardised to the cell's exact
  mean and SD, then given out in the order of the scores).

Marginal counts therefore equal Table 1 exactly whatever the loadings, while the loadings create the
joint dependence (for example large tumours tend to come with MVI and vessel contact; cirrhosis with
low platelets and albumin). The loadings of tumour size, MVI, differentiation and Ki67 were chosen so
that the paper-style multivariable analysis of Table 2 lands near the paper's values.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from .cohort import COHORTS, CohortSpec

__all__ = [
    "FACTORS",
    "LOADINGS",
    "generate_clinical",
    "imaging_subset",
]

FACTORS = ("T", "B", "L", "D")

#: loadings of each variable's score on the latent factors (tumour burden T, biology B, liver L, demography D).
LOADINGS: dict[str, dict[str, float]] = {
    "tumor_size": {"T": 0.8, "B": 0.2},
    "tumor_number": {"T": 0.35, "B": 0.15},
    "necrosis": {"T": 0.55},
    "tumor_margin": {"T": 0.25, "B": 0.25},
    "vessel_adjacency": {"T": 0.55},
    "mvi": {"T": 0.55, "B": 0.25},
    "differentiation": {"B": 0.05},
    "ki67": {"B": 0.5, "T": 0.1},
    "afp": {"B": 0.35, "T": 0.25},
    "cirrhosis": {"L": 0.65},
    "hbv": {"L": 0.5, "D": -0.25},
    "hbv_dna": {"L": 0.45},
    "plt": {"L": -0.55},
    "alb": {"L": -0.5},
    "ast": {"L": 0.4, "T": 0.2},
    "alt": {"L": 0.45},
    "child_pugh": {"L": 0.55},
    "albi": {"L": 0.6},
    "TBIL": {"L": 0.45},
    "age": {"D": 0.8},
    "gender": {"D": 0.1},
}


def _var_seed(var: str) -> int:
    return zlib.crc32(var.encode()) & 0x7FFFFFFF


def _score(factors: np.ndarray, var: str, rng: np.random.Generator) -> np.ndarray:
    lam = np.array([LOADINGS.get(var, {}).get(f, 0.0) for f in FACTORS])
    resid = np.sqrt(max(0.0, 1.0 - float(lam @ lam)))
    return factors @ lam + resid * rng.standard_normal(len(factors))


def _exact_moments(n: int, mean: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` positive, right-skewed values with exactly the given sample mean and SD (ddof=1)."""
    if n == 1:
        return np.array([mean])
    # a gamma law's standardised minimum is about -sqrt(shape): a shape below (mean/sd)^2 keeps every
    # value positive after rescaling to the exact moments
    shape = float(np.clip(0.6 * (mean / sd) ** 2, 0.2, 50.0)) if sd > 0 else 1.0
    for _ in range(200):
        raw = rng.gamma(shape, 1.0, n)
        z = (raw - raw.mean()) / raw.std(ddof=1)
        x = mean + sd * z
        if x.min() > 0.05 * mean:
            return x
        shape = max(0.05, shape * 0.85)  # more skewed next time, so that no value goes below the floor
    raise RuntimeError(f"cannot draw {n} positive values with mean {mean} and SD {sd}")


def generate_clinical(spec: CohortSpec, seed: int) -> pd.DataFrame:
    """Draw the twin's patient table.

    Columns: ``patient_id`` (pseudonymous, in shuffled order so that it says nothing about the
    outcome), ``centre``, ``cohort``, ``label`` (1 = early recurrence), one column per variable (codes:
    second-listed level = 1, ALBI 1/2/3; TBIL in µmol/L) and the latent factors ``f_T``, ``f_B``,
    ``f_L``, ``f_D`` (used by the imaging twin).
    """
    frames = []
    for ci, c in enumerate(COHORTS):
        for o in (0, 1):
            n = spec.n(c, o)
            frng = np.random.default_rng([seed, ci, o, 1])
            F = frng.standard_normal((n, len(FACTORS)))
            cell = {"cohort": [c] * n, "centre": [spec.cohorts[c]["centre"]] * n, "label": [o] * n}
            for var, d in spec.categorical.items():
                rng = np.random.default_rng([seed, ci, o, _var_seed(var)])
                s = _score(F, var, rng)
                order = np.argsort(s, kind="stable")
                values = np.empty(n, dtype=int)
                start = 0
                for code, k in zip(spec.codes(var), d["counts"][c][o]):
                    values[order[start:start + k]] = code
                    start += k
                cell[var] = values
            for var, d in spec.continuous.items():
                rng = np.random.default_rng([seed, ci, o, _var_seed(var)])
                mean, sd = d["stats"][c][o]
                x = np.sort(_exact_moments(n, mean, sd, rng))
                s = _score(F, var, rng)
                values = np.empty(n)
                values[np.argsort(s, kind="stable")] = x
                cell[var] = values
            for j, f in enumerate(FACTORS):
                cell[f"f_{f}"] = F[:, j]
            frames.append(pd.DataFrame(cell))
    df = pd.concat(frames, ignore_index=True)
    perm = np.random.default_rng([seed, 99]).permutation(len(df))
    df = df.iloc[perm].reset_index(drop=True)
    df.insert(0, "patient_id", [f"twin-{i + 1:04d}" for i in range(len(df))])
    cols = ["patient_id", "centre", "cohort", "label"] + spec.variables + [f"f_{f}" for f in FACTORS]
    return df[cols]


def imaging_subset(patients: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """An outcome- and cohort-stratified subset of about ``n`` patients (all when ``n`` is None).

    Each cohort × outcome cell keeps at least two patients so that every later stage has both classes
    in every cohort.
    """
    if n is None or n >= len(patients):
        return patients.copy()
    frac = n / len(patients)
    keep = []
    for (c, o), g in patients.groupby(["cohort", "label"], sort=True):
        k = max(2, int(round(frac * len(g))))
        rng = np.random.default_rng([seed, COHORTS.index(c), int(o), 5])
        keep.extend(g.index[np.sort(rng.choice(len(g), size=min(k, len(g)), replace=False))])
    return patients.loc[sorted(keep)].copy()
