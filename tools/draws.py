"""How much of a twin run's result is the draw? Rerun the method on other draws of the synthetic twin.
``python tools/draws.py --params params/synthetic.yaml --seeds 3 5 7 11 13 17``

One ``make book`` is one draw of the twin: its patients, their traits and images, and the networks' random
initialisation all follow the run's ``seed``. A number that misses (or meets) a bar on one draw may do the
opposite on the next. This tool runs the same params with other seeds: each seed is a run of its own,
``<run>-seed<N>`` (its params file in ``results/<run>/draws/``), through the stages ``cohort`` to
``evaluation`` (about 14 minutes a draw on 2 cores; the ablations are left out, and a finished draw is not
recomputed; ``--no-run`` only tabulates the draws that have finished). It then tabulates, for the base run
and every draw:

* the twin's image-only reference AUC per cohort (Table 5's reference column),
* DL_2.5D's patient AUC and its share of the reference's margin over chance, ``(AUC − 0.5) / (reference −
  0.5)``, on the validation cohorts,
* the Clinical and Combined AUCs and whether Combined is at least Clinical on both validation cohorts,
* the slice-level CNN's instance AUC out of fold on the training cohort (Table 3) with its interval that
  resamples whole patients, and, where the CNN chapter computed them, its two instance-level yardsticks on the
  training cohort: the twin's slot reference (the latent traits each instance shows, read exactly: the ceiling
  the draw's training cohort allows) and the same network taught the latent image score instead of the
  outcome; with the CNN's share of the slot reference's margin over chance — so that a draw whose training
  cohort holds less signal is told apart from a network that reads less of it,
* on the validation cohorts, the CNN's own patient score (mean instance logit) and DL_2.5D with the new
  centre's scores harmonised (the signatures chapter's table): where DL_2.5D falls below the CNN's score,
  the multi-instance fusion lost ranking; where the harmonised DL_2.5D recovers it, the loss was the new
  centre's score shift.

It writes ``results/<run>/draws/tab-draws.csv`` (one row per draw), ``tab-draws-summary.csv`` (mean, SD,
minimum, maximum over the draws, and how many draws meet each bar) and ``fig-draws.png``, and prints the
summary. Twin runs only: a study of real patients is one draw. Each draw keeps its results (about 1.3 GB, most
of it the twin's images; ``--prune`` deletes a finished draw's ``data`` and ``crop25d`` folders, after
which only ``--no-run`` tabulates it without drawing it again).
With ``--set KEY=VALUE`` (``crop``, ``cnn`` or ``signatures`` settings, repeatable) and ``--tag NAME`` every
draw, the base run included, is also rerun with that setting as ``<draw>-<NAME>`` (the stages the setting does
not reach linked from the draw, not recomputed: a ``cnn`` setting reruns the CNN stage onward, a ``crop``
setting the images stage's per-slot tables, the cropping, both networks and what follows; see
:func:`variant_stages`), and ``tab-draws-<NAME>.csv`` gives the variant minus the draw for every number,
``tab-draws-<NAME>-summary.csv`` their mean and standard error over the draws.
Nothing of the base run's results changes.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hcc25d import config  # noqa: E402
from hcc25d.cnn import LABEL_REFERENCE  # noqa: E402
from hcc25d.evaluation import margin_share  # noqa: E402
from hcc25d.twin_imaging import SLOT_REFERENCE  # noqa: E402

STAGES = ("cohort", "data", "crop25d", "radiomics", "cnn", "cnn3d", "signatures", "evaluation")
VALIDATION = ("internal", "external")
#: the bars each draw is checked against: DL_2.5D's share of the reference's margin on every validation
#: cohort, the instance-level out-of-fold training AUC, Combined at least Clinical on every validation cohort.
SHARE_BAR, INSTANCE_BAR = 0.6, 0.65


def draw_params(base: dict, seed: int) -> dict:
    """The base params (a mapping as read from its YAML) with another ``seed`` and its own ``run`` name;
    everything else unchanged. Refuses a run that does not draw the twin."""
    source = (base.get("data") or {}).get("source", "twin")
    if source != "twin":
        raise ValueError(f"draws need the synthetic twin (data.source: twin), not {source!r}: a study of real "
                         f"patients is one draw")
    out = copy.deepcopy(base)
    out["run"] = f"{base['run']}-seed{int(seed)}"
    out["seed"] = int(seed)
    out["description"] = f"{base['run']} drawn with seed {int(seed)} (tools/draws.py)"
    return out


def draw_summary(run_dir: Path) -> dict:
    """The numbers of one finished draw (its Table 5 and Table 3), as one flat row."""
    run_dir = Path(run_dir)
    t5 = pd.read_csv(run_dir / "evaluation" / "tab-table5.csv")
    t3 = pd.read_csv(run_dir / "cnn" / "tab-table3.csv")
    auc = t5.pivot(index="signature", columns="cohort", values="auc")
    ref = t5.groupby("cohort")["reference AUC (image only)"].first()
    row: dict = {"run": run_dir.name}
    for c in ("training",) + VALIDATION:
        row[f"reference {c}"] = float(ref[c])
        for sig in ("DL_2.5D", "Clinical", "Combined"):
            row[f"{sig} {c}"] = float(auc.loc[sig, c])
    share = margin_share(auc.loc["DL_2.5D"], ref)
    for c in VALIDATION:
        row[f"DL_2.5D share {c}"] = float(share[c])
        row[f"Combined - Clinical {c}"] = row[f"Combined {c}"] - row[f"Clinical {c}"]
    oof = t3[t3["cohort"] == "training"]
    if len(oof) != 1:
        raise ValueError(f"{run_dir}: Table 3 has no single out-of-fold training row")
    oof = oof.iloc[0]
    row["instance AUC training"] = float(oof["auc"])
    for k in ("ci_low_patients", "ci_high_patients"):
        row[f"instance {k.replace('_patients', '')} training"] = float(oof[k]) if k in oof else np.nan
    yard = run_dir / "cnn" / "tab-instance-reference.csv"
    if yard.exists():  # the instance AUC's yardsticks on the same training cohort
        y = pd.read_csv(yard).set_index("cohort")
        if "training" in y.index:
            for col, key in ((SLOT_REFERENCE, "instance reference"), (LABEL_REFERENCE, "instance latent-taught")):
                if col in y:
                    row[f"{key} training"] = float(y.loc["training", col])
            if "instance reference training" in row:
                inst, ceiling = pd.Series([row["instance AUC training"]]), pd.Series([row["instance reference training"]])
                row["instance share training"] = float(margin_share(inst, ceiling).iloc[0])
    harm = run_dir / "signatures" / "tab-centre-harmonisation.csv"
    if harm.exists():  # where the fusion loses ranking: the CNN's own score, and DL_2.5D harmonised
        h = pd.read_csv(harm).set_index("cohort")
        hshare = margin_share(h["DL_2.5D AUC (harmonised)"], ref)
        for c in VALIDATION:
            if c in h.index:
                row[f"CNN score {c}"] = float(h.loc[c, "CNN score AUC"])
                row[f"DL_2.5D harmonised {c}"] = float(h.loc[c, "DL_2.5D AUC (harmonised)"])
                row[f"DL_2.5D harmonised share {c}"] = float(hshare[c])
    row["meets share bar"] = all(row[f"DL_2.5D share {c}"] >= SHARE_BAR for c in VALIDATION)
    row["meets instance bar"] = row["instance AUC training"] >= INSTANCE_BAR
    row["meets Combined >= Clinical"] = all(row[f"Combined - Clinical {c}"] >= 0 for c in VALIDATION)
    return row


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD, minimum and maximum of every number over the draws, and how many draws meet each bar."""
    num = table.drop(columns=["run"]).select_dtypes("number")
    out = pd.DataFrame({"mean": num.mean(), "sd": num.std(ddof=1), "min": num.min(), "max": num.max(),
                        "draws": num.notna().sum()})
    bars = [c for c in table.columns if c.startswith("meets ")]
    met = pd.DataFrame({"mean": np.nan, "sd": np.nan, "min": np.nan, "max": np.nan,
                        "draws": len(table), "met": [int(table[b].sum()) for b in bars]}, index=bars)
    out = pd.concat([out, met])
    out["met"] = out["met"].astype("Int64")
    return out


def draws_figure(table: pd.DataFrame, highlight: Optional[str] = None):
    """Three panels, one dot per draw: the instance AUC against its bar (beside it, where the draws have them,
    the same network taught the latent score and the slot reference), DL_2.5D's share of the reference's
    margin against its bar, and Combined minus Clinical against zero. ``highlight``: a run whose dots get a
    black ring (the base run: the draw the book shows)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    share = [f"DL_2.5D share {c}" for c in VALIDATION]
    share += [c for c in ("DL_2.5D harmonised share external",) if c in table]
    inst = {"instance AUC training": "CNN"}
    inst.update({c: n for c, n in (("instance latent-taught training", "taught the\nlatent score"),
                                   ("instance reference training", "slot\nreference")) if c in table})
    panels = [
        ("instance AUC, training out of fold", "AUC", inst, INSTANCE_BAR),
        ("DL_2.5D: share of the reference's margin", "share", share, SHARE_BAR),
        ("Combined minus Clinical", "AUC difference", [f"Combined - Clinical {c}" for c in VALIDATION], 0.0),
    ]
    rng = np.random.default_rng(0)
    for ax, (title, ylabel, cols, bar) in zip(axes, panels):
        for i, col in enumerate(cols):
            v = table[col].to_numpy(float)
            x = i + rng.uniform(-0.08, 0.08, len(v))
            ax.scatter(x, v, s=28, alpha=0.8)
            ring = (table["run"] == highlight).to_numpy() if highlight is not None else np.zeros(len(v), bool)
            if ring.any():
                ax.scatter(x[ring], v[ring], s=70, facecolors="none", edgecolors="black", linewidths=1.3)
            ax.hlines(np.nanmean(v), i - 0.25, i + 0.25, color="black", lw=2)
        ax.axhline(bar, color="tab:red", ls="--", lw=1)
        names = (list(cols.values()) if isinstance(cols, dict) else
                 [c.replace("DL_2.5D harmonised share ", "harmonised\n").rsplit(" ", 1)[-1] for c in cols])
        ax.set_xticks(range(len(cols)), names)
        ax.set_xlim(-0.6, len(cols) - 0.4)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    ringed = highlight is not None and (table["run"] == highlight).any()
    fig.suptitle(f"{len(table)} draws of the twin: one dot per draw"
                 + (f" (ringed: {highlight})" if ringed else "")
                 + ", black line the mean, red dashed line the bar", fontsize=11)
    fig.tight_layout()
    return fig


def finished(run_dir: Path) -> bool:
    """Whether a run has got as far as its evaluation (Table 5)."""
    return (Path(run_dir) / "evaluation" / "tab-table5.csv").exists()


def run_draw(params: dict, out_dir: Path, stages: Iterable[str] = STAGES, prune: bool = False) -> Path:
    """Write a draw's params file under ``out_dir`` and run its stages; returns its results folder."""
    from hcc25d import runner

    config.from_dict(params, None, source="draw")  # fail before any work on a params error
    out_dir.mkdir(parents=True, exist_ok=True)
    pfile = out_dir / f"{params['run']}.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    runner.run(pfile, only=list(stages))
    run_dir = ROOT / "results" / params["run"]
    if prune:
        for stage in ("data", "crop25d"):
            shutil.rmtree(run_dir / stage, ignore_errors=True)
    return run_dir


#: the sections a variant may change (the twin, the cohort and the images stay the draw's own)
VARIANT_SECTIONS = ("crop", "cnn", "signatures")


def parse_sets(items: Iterable[str]) -> dict:
    """``["cnn.augment.timing=0.3", ...]`` → ``{"cnn.augment.timing": 0.3}`` (values read as YAML). Only keys of
    :data:`VARIANT_SECTIONS`: a variant reuses the draw's patients and images, so it cannot change them."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ValueError(f"--set wants key=value, not {item!r}")
        if key.split(".")[0] not in VARIANT_SECTIONS:
            raise ValueError(f"--set {key}: a variant may change only {', '.join(VARIANT_SECTIONS)} settings "
                             f"(it reuses the draw's patients and images)")
        out[key] = yaml.safe_load(value)
    return out


def variant_params(params: dict, sets: dict, tag: str) -> dict:
    """A draw's params with ``sets`` (dotted key → value) applied, as run ``<run>-<tag>``."""
    out = copy.deepcopy(params)
    for key, value in sets.items():
        config._set_dotted(out, key, value)  # the same rule as the runner's overrides
    out["run"] = f"{params['run']}-{tag}"
    out["description"] = f"{params['run']} with {', '.join(f'{k}={v}' for k, v in sets.items())} (tools/draws.py)"
    return out


def variant_stages(sets: dict) -> list:
    """The stages of :data:`STAGES` a variant with ``sets`` reruns, in order: every stage whose key holds a
    section that ``sets`` changes (the runner's own :func:`hcc25d.runner.stage_sections`), every stage that
    depends on one of those, and always the signatures and the evaluation. A ``cnn`` setting reruns the CNN
    stage onward. A ``crop`` setting reruns the images stage for its per-slot trait tables (which follow the
    cropping), the cropping, the CNN stage (which reads both) and the 3D baseline; the images themselves are
    the draw's own, drawn again bit for bit from the same seed and twin settings, so a stage that reads only
    them (the radiomics) is not rerun."""
    from hcc25d import runner

    changed = {k.split(".")[0] for k in sets}
    by_name = {st.name: st for st in runner.STAGES}
    out = []
    for name in STAGES:
        st = by_name[name]
        if changed & set(runner.stage_sections(st)) or any(d in out and d != "data" for d in st.deps) \
                or name in ("signatures", "evaluation"):
            out.append(name)
    return out


def run_variant(params: dict, sets: dict, tag: str, draw_dir: Path, out_dir: Path) -> Path:
    """Rerun a finished draw with ``sets``: the stages :func:`variant_stages` names run again, the others are
    linked from ``draw_dir`` (so the variant sees the same patients and images, and where no cropping or CNN
    setting changes, the same crops, radiomics features and networks). Returns the variant's results folder."""
    from hcc25d import runner

    vp = variant_params(params, sets, tag)
    config.from_dict(vp, None, source="variant")
    vdir = ROOT / "results" / vp["run"]
    vdir.mkdir(parents=True, exist_ok=True)
    rerun = variant_stages(sets)
    for stage in STAGES:
        if stage not in rerun and not (vdir / stage).exists():
            (vdir / stage).symlink_to(Path(draw_dir).resolve() / stage, target_is_directory=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    pfile = out_dir / f"{vp['run']}.yaml"
    pfile.write_text(yaml.safe_dump(vp, sort_keys=False))
    if not finished(vdir):
        runner.run(pfile, only=rerun)
    return vdir


def paired(base: pd.DataFrame, variant: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(differences, summary)``: variant minus base, draw by draw (rows in the same order, indexed by the
    base run), for every number of :func:`draw_summary`; and their mean, standard error over the draws and
    number of draws."""
    num = [c for c in base.select_dtypes("number").columns if c in variant]
    d = pd.DataFrame(variant[num].to_numpy(float) - base[num].to_numpy(float), columns=num,
                     index=base["run"].to_numpy())
    n = d.notna().sum()
    return d, pd.DataFrame({"mean": d.mean(), "se": d.std(ddof=1) / np.sqrt(n), "draws": n})


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/synthetic.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="the twin's seeds to draw")
    ap.add_argument("--prune", action="store_true", help="delete each finished draw's images and crops")
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: tabulate the draws of these seeds that have finished")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="also rerun every draw with this setting (crop/cnn/signatures keys; "
                         "repeatable) and tabulate the paired differences")
    ap.add_argument("--tag", default="variant", help="name of the variant runs: <run>-<tag>")
    a = ap.parse_args(argv)
    sets = parse_sets(a.set)
    base = yaml.safe_load(Path(a.params).read_text())
    cfg = config.load(a.params, {})
    base_dir = ROOT / "results" / cfg.run
    out = base_dir / "draws"
    runs = [base_dir] if finished(base_dir) else []
    if not runs:
        print(f"[draws] the base run {cfg.run} has no evaluation yet: it is left out of the table")
    seeds = [s for s in dict.fromkeys(a.seeds) if s != cfg.seed]
    for i, seed in enumerate(seeds, 1):
        params = draw_params(base, seed)
        if a.no_run:
            done = ROOT / "results" / params["run"]
            if finished(done):
                runs.append(done)
            else:
                print(f"[draws] seed {seed}: {params['run']} has not finished: left out")
            continue
        print(f"[draws] draw {i}/{len(seeds)}: seed {seed}", flush=True)
        runs.append(run_draw(params, out, prune=a.prune))
    if not runs:
        print("[draws] no finished draw to tabulate")
        return 1
    table = pd.DataFrame([draw_summary(r) for r in runs])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tab-draws.csv", index=False)
    summary = summarise(table)
    summary.to_csv(out / "tab-draws-summary.csv")
    from hcc25d import plotting

    plotting.set_style()
    plotting.savefig(draws_figure(table, highlight=cfg.run), out, "draws")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        cols = ["run", "DL_2.5D share internal", "DL_2.5D share external", "Combined - Clinical internal",
                "Combined - Clinical external", "instance AUC training", "instance reference training",
                "instance share training", "CNN score external",
                "DL_2.5D external", "DL_2.5D harmonised external"]
        print(table[[c for c in cols if c in table]].round(3).to_string(index=False))
        print(summary.round(3).to_string())
    if sets:
        base_params = {r: yaml.safe_load((out / f"{r.name}.yaml").read_text()) if r != base_dir else base
                       for r in runs}
        vruns = []
        for i, r in enumerate(runs, 1):
            print(f"[draws] variant {i}/{len(runs)}: {r.name}-{a.tag}", flush=True)
            vruns.append(run_variant(base_params[r], sets, a.tag, r, out))
        vtable = pd.DataFrame([draw_summary(r) for r in vruns])
        diff, stats_ = paired(table, vtable)
        diff.to_csv(out / f"tab-draws-{a.tag}.csv", index_label="run")
        stats_.to_csv(out / f"tab-draws-{a.tag}-summary.csv")
        keys = ["instance AUC training", "instance latent-taught training", "DL_2.5D internal", "DL_2.5D external",
                "CNN score internal",
                "CNN score external", "Combined - Clinical internal", "Combined - Clinical external"]
        print(f"[draws] {a.tag} ({', '.join(a.set)}) minus the default, paired by draw:")
        print(stats_.loc[[k for k in keys if k in stats_.index]].round(4).to_string())
    print(f"[draws] tables and figure in {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
