"""Would another fusion setting rank the validation patients better? Refit DL_2.5D's fusion with it.
``python tools/fusion_screen.py --params params/synthetic.yaml results/synthetic/draws/synthetic-seed17.yaml ...
--set signatures.fusion=summary --tag summary``

A ``signatures`` setting reaches only the DL_2.5D fusion and what follows it; the twin, the crops, the
radiomics features and the networks stay as they are. So instead of rerunning stages (``tools/draws.py
--set``, which also reruns a draw made at an older commit from its first stage), this tool refits the fusion
of finished runs on each run's own CNN instance scores and radiomics features, with the stage's seed, folds
and weights (the same refit as ``tools/fusion_spread.py``):

1. the refit with nothing changed, which must give the run's Table 4 AUCs (else the tool stops: a stale run,
   or code that changed since the stage ran);
2. the refit with ``--set`` applied (``signatures`` settings only).

Printed and written (``results/<first run>/draws/tab-fusion-<tag>.csv``, one row per run, setting and
family; ``tab-fusion-<tag>-summary.csv``): per measure, the variant minus the stage for every run and their
mean ± standard error over the runs. The measures are those of the family that the stage's rule
(``signatures.dl25d_model``) picks — its cross-validated training AUC and its AUC on each validation cohort,
i.e. DL_2.5D — and every family's AUC on each validation cohort (to see which families a setting helps).
No result of any run changes.
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
from hcc25d.io import RunPaths  # noqa: E402
from tools.draws import parse_sets  # noqa: E402
from tools.fusion_spread import COHORTS, MEAN_FAMILIES, fusion_inputs, refit, stage_check  # noqa: E402

#: the row name of the family the stage's rule picks
PICKED = "DL_2.5D (picked family)"


def screen_one(params: str, sets: dict) -> pd.DataFrame:
    """The stage's refit (checked against its Table 4) and the refit with ``sets``, one row per setting and
    family, with the picked family's row repeated as :data:`PICKED`."""
    base = config.load(params, {})
    paths = RunPaths(base.run)
    inst = pd.read_csv(paths.stage_dir("cnn") / "instance_probs_selected.csv", dtype={"patient_id": str})
    parts = []
    for setting, cfg in (("stage", base), ("variant", config.load(params, sets))):
        fit = refit(cfg, fusion_inputs(cfg, paths, inst), cfg.seed)
        if setting == "stage":
            stage_check(paths, fit)
        fit = fit[fit["family"] != MEAN_FAMILIES]
        sel = fit[fit["selected"]]
        picked = sel.assign(picked=sel["family"], family=PICKED)
        parts.append(pd.concat([picked, fit.assign(picked="")], ignore_index=True).assign(setting=setting))
        p = picked.iloc[0]
        print(f"{base.run} {setting}: {fit.loc[fit['selected'], 'family'].iloc[0]} cv {p['cv AUC']:.3f} "
              f"internal {p['AUC internal']:.3f} external {p['AUC external']:.3f}", flush=True)
    return pd.concat(parts, ignore_index=True).assign(run=base.run)


def paired_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per family (the picked one first) and measure: the variant minus the stage per run, and their mean and
    standard error over the runs (NaN with one run)."""
    measures = ["cv AUC"] + [f"AUC {c}" for c in COHORTS]
    idx = ["run", "family"]
    st = table[table["setting"] == "stage"].set_index(idx)[measures]
    va = table[table["setting"] == "variant"].set_index(idx)[measures]
    diff = (va - st.reindex(va.index)).reset_index()
    runs = list(pd.unique(table["run"]))
    fams = [PICKED] + [f for f in pd.unique(table["family"]) if f != PICKED]
    rows = []
    for fam in fams:
        d = diff[diff["family"] == fam].set_index("run").reindex(runs)
        for m in measures:
            v = d[m].to_numpy(float)
            n = int(np.isfinite(v).sum())
            rows.append({"family": fam, "measure": m, "runs": n, "mean": float(np.nanmean(v)) if n else np.nan,
                         "SE": float(np.nanstd(v, ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
                         "per run": ", ".join(f"{x:+.3f}" for x in v)})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", nargs="+", required=True, help="params of finished runs (signatures stage done)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="a signatures setting (repeatable)")
    ap.add_argument("--tag", required=True, help="name of the variant in the output files")
    a = ap.parse_args(argv)
    try:
        sets = parse_sets(a.sets)
    except ValueError as exc:
        ap.error(str(exc))
    if not sets:
        ap.error("give at least one --set")
    wrong = [k for k in sets if not k.startswith("signatures.")]
    if wrong:
        ap.error(f"--set {', '.join(wrong)}: only signatures settings can be screened by refitting the fusion "
                 "(the others change the CNN's scores: use tools/draws.py --set)")
    table = pd.concat([screen_one(p, sets) for p in a.params], ignore_index=True)
    res = paired_summary(table)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\n{', '.join(f'{k}={v}' for k, v in sets.items())} minus the stage:\n"
              + res.round(3).to_string(index=False))
    out = RunPaths(config.load(a.params[0], {}).run).run_dir / "draws"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"tab-fusion-{a.tag}.csv", index=False)
    res.to_csv(out / f"tab-fusion-{a.tag}-summary.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
