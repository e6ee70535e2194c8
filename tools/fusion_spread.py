"""How precisely does one run fix the fused signature's AUC? Refit the fusion with nothing meaningful changed.
``python tools/fusion_spread.py --params params/synthetic.yaml results/synthetic/draws/synthetic-seed17.yaml ...``

The signatures stage fits the multi-instance fusion (histogram and bag of words of the CNN's instance
probabilities, with the radiomics features, screened and modelled by five families) once, with the run's seed.
Two things that carry no information still change its result:

* ``seed``: the seed the stage passes to the fusion: the run's seed plus 1, 2, ... (the random forests and
  extra trees draw their trees with it; the logistic regression, the LASSO and the boosted trees as
  configured do not use it).
* ``jitter``: the CNN's instance logits (every probability column, held-out fold columns too) multiplied by
  ``1 + eps z`` with ``z`` standard normal (``--eps``, default 0.001: a logit of −2 moves by about 0.002; the
  CNN's own AUCs do not move in the third decimal). This is the size of difference that another CPU's
  arithmetic, or another library build, leaves in a network trained on the same data.

For every run given, the fusion is first refitted exactly as the stage fits it (same inputs, seed and
folds), and the tool stops if that refit does not give the stage's Table 4 AUCs (a stale run, or code that
changed since). Then ``--repeats`` refits per kind. Printed and written (``results/<first run>/draws/
tab-fusion-spread.csv``, one row per refit and family; ``tab-fusion-spread-summary.csv``): per run, kind and
cohort, the SD and range of the AUC of the family the stage's rule selects at each refit, and how often
that rule picks another family; the same for the mean of the five families' probabilities (a diagnostic
beside the rule: nothing to pick, so nothing to flip). No result of any run changes.
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

from hcc25d import config  # noqa: E402
from hcc25d import signatures as sig  # noqa: E402
from hcc25d.io import RunPaths  # noqa: E402
from hcc25d.stats import auc, logit  # noqa: E402

COHORTS = ("internal", "external")
#: the row of the five families' probabilities averaged (a diagnostic beside the stage's rule)
MEAN_FAMILIES = "mean of the families"


def jitter_logits(instance_probs: pd.DataFrame, eps: float, rng: np.random.Generator) -> pd.DataFrame:
    """A copy with every probability column's logits multiplied by ``1 + eps z`` (``z`` standard normal,
    one draw per value; NaN stays NaN)."""
    out = instance_probs.copy()
    for c in [c for c in out.columns if c == "prob" or c.startswith("prob_fold")]:
        v = out[c].to_numpy(float)
        ok = ~np.isnan(v)
        lg = logit(v[ok]) * (1.0 + eps * rng.standard_normal(int(ok.sum())))
        v[ok] = 1.0 / (1.0 + np.exp(-lg))
        out[c] = v
    return out


def fusion_inputs(cfg, paths: RunPaths, inst: pd.DataFrame) -> sig.FusionInputs:
    """The signatures stage's inputs of the DL_2.5D fusion from ``inst`` (the CNN's instance predictions) and
    the run's cohort and radiomics tables, made by the stage's own :func:`hcc25d.signatures.fusion_inputs`."""
    patients = pd.read_csv(paths.stage_dir("cohort") / "patients.csv", dtype={"patient_id": str})
    radf = pd.read_csv(paths.stage_dir("radiomics") / "features.csv",
                       dtype={"patient_id": str}).set_index("patient_id")
    return sig.fusion_inputs(cfg, patients, inst, radf)


def refit(cfg, inputs: sig.FusionInputs, seed: int) -> pd.DataFrame:
    """Every family's fusion fitted as the stage fits it, with classifier seed ``seed``: one row per family
    with its cross-validated AUC, its AUC per validation cohort and whether the stage's rule selects it."""
    d = inputs
    models = sig.build_models(d.X, d.meta, d.inst_cols, d.rad_cols, cfg.signatures, seed,
                              n_jobs=cfg.compute.n_jobs, **d.fit_kwargs())
    best, _ = sig.select_signature({k: r.cv_auc for k, r in models.items()}, cfg.signatures.dl25d_model)
    y, cohort = d.meta["label"].to_numpy(), d.meta["cohort"].to_numpy()
    rows = []
    for k, r in models.items():
        row = {"family": sig.MODEL_NAMES[k], "selected": k == best, "cv AUC": r.cv_auc}
        for c in COHORTS:
            m = cohort == c
            row[f"AUC {c}"] = auc(y[m], r.scores[m]) if len(set(y[m])) == 2 else np.nan
        rows.append(row)
    # the diagnostic beside the rule: the five families' probabilities averaged (no pick to flip)
    train = cohort == "training"
    row = {"family": MEAN_FAMILIES, "selected": False,
           "cv AUC": auc(y[train], np.mean([r.oof for r in models.values()], axis=0))}
    mean = np.mean([r.scores for r in models.values()], axis=0)
    for c in COHORTS:
        m = cohort == c
        row[f"AUC {c}"] = auc(y[m], mean[m]) if len(set(y[m])) == 2 else np.nan
    rows.append(row)
    return pd.DataFrame(rows)


def stage_check(paths: RunPaths, fit: pd.DataFrame, tol: float = 1e-9) -> None:
    """Stop unless ``fit`` (the refit with nothing changed) gives the stage's Table 4 AUCs."""
    t4 = pd.read_csv(paths.stage_dir("signatures") / "tab-table4.csv")
    for c in COHORTS:
        want = t4[t4["cohort"] == c].set_index("model")["auc"]
        got = fit.set_index("family")[f"AUC {c}"].reindex(want.index)
        if not np.allclose(got.to_numpy(float), want.to_numpy(float), atol=tol, equal_nan=True):
            raise SystemExit(f"{paths.run}: refitting the fusion does not give the stage's Table 4 ({c}: "
                             f"{got.round(4).to_dict()} against {want.round(4).to_dict()}); rerun the "
                             "signatures stage of this run with the present code first")


def spread_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per run, kind (``seed``, ``jitter``) and signature (the family the rule picks at each refit, and the
    mean of the families), over the refits: the AUC per cohort (SD, min, max, and the stage's own value
    from the unchanged refit) and the share of refits whose rule picked a family other than the stage's."""
    rows = []
    for run, g in table.groupby("run", sort=False):
        picked = g[g["selected"]]
        mean = g[g["family"] == MEAN_FAMILIES]
        stage_family = picked.loc[picked["kind"] == "stage", "family"].iloc[0]
        for name, t in (("picked family", picked), (MEAN_FAMILIES, mean)):
            base = t[t["kind"] == "stage"]
            if base.empty:
                continue
            for kind, h in t[t["kind"] != "stage"].groupby("kind", sort=False):
                row = {"run": run, "kind": kind, "signature": name, "refits": int(h["repeat"].nunique()),
                       "other family chosen": (float((h["family"] != stage_family).mean())
                                               if name == "picked family" else np.nan)}
                for c in COHORTS:
                    v = h[f"AUC {c}"]
                    row.update({f"{c} stage": float(base[f"AUC {c}"].iloc[0]),
                                f"{c} SD": float(v.std(ddof=1)), f"{c} min": float(v.min()),
                                f"{c} max": float(v.max())})
                rows.append(row)
    return pd.DataFrame(rows)


def run_one(params: str, repeats: int, eps: float) -> pd.DataFrame:
    cfg = config.load(params, {})
    paths = RunPaths(cfg.run)
    inst = pd.read_csv(paths.stage_dir("cnn") / "instance_probs_selected.csv", dtype={"patient_id": str})
    inputs = fusion_inputs(cfg, paths, inst)
    stage = refit(cfg, inputs, cfg.seed)
    stage_check(paths, stage)
    parts = [stage.assign(kind="stage", repeat=0)]
    for r in range(1, repeats + 1):
        parts.append(refit(cfg, inputs, cfg.seed + r).assign(kind="seed", repeat=r))
        jit = fusion_inputs(cfg, paths, jitter_logits(inst, eps, np.random.default_rng([cfg.seed, r])))
        parts.append(refit(cfg, jit, cfg.seed).assign(kind="jitter", repeat=r))
        sel = [p[p["selected"]].iloc[0] for p in parts[-2:]]
        avg = [p[p["family"] == MEAN_FAMILIES].iloc[0] for p in parts[-2:]]
        print(f"{cfg.run} refit {r}/{repeats}: " + "; ".join(
            f"{k} {s['family']} internal {s['AUC internal']:.3f} external {s['AUC external']:.3f} "
            f"(mean of the families {m['AUC internal']:.3f}, {m['AUC external']:.3f})"
            for k, s, m in zip(("seed", "jitter"), sel, avg)), flush=True)
    return pd.concat(parts, ignore_index=True).assign(run=cfg.run, eps=eps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", nargs="+", required=True, help="params of finished runs (signatures stage done)")
    ap.add_argument("--repeats", type=int, default=5, help="refits per kind (seed, jitter)")
    ap.add_argument("--eps", type=float, default=1e-3, help="relative SD of the logit jitter")
    a = ap.parse_args(argv)
    if a.repeats < 2:
        ap.error("--repeats must be at least 2 (an SD needs two refits)")
    table = pd.concat([run_one(p, a.repeats, a.eps) for p in a.params], ignore_index=True)
    res = spread_summary(table)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("\nthe selected family's AUC over the refits:\n" + res.round(3).to_string(index=False))
    out = RunPaths(config.load(a.params[0], {}).run).run_dir / "draws"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tab-fusion-spread.csv", index=False)
    res.to_csv(out / "tab-fusion-spread-summary.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
