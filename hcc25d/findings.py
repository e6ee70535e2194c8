"""The book's findings page, generated from a run's computed results (nothing on it is typed by hand):
which of the paper's numbers this run reproduces, what the method achieves against the reference ceiling,
what the ablations say, and what cannot be reproduced and why."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .io import read_json

__all__ = [
    "AUC_TOLERANCE",
    "reproduced",
    "reproduced_from",
    "reproduction_summary",
    "ceiling_table",
    "ceiling_summary",
    "ablation_effects",
    "ablation_summary",
    "fusion_input_summary",
    "instance_summary",
    "instance_references",
    "limits",
]

#: a training AUC this far below the lower validation AUC is called out on the findings page
GAP_NOTE = 0.05

#: a validation cohort whose mean instance logit sits this far from the training patients' is called out
SHIFT_NOTE = 0.5

#: an AUC of Tables 3–5 counts as reproduced within this distance of the paper's
AUC_TOLERANCE = 0.05


def _read(run_dir: Path, stage: str, name: str) -> Optional[pd.DataFrame]:
    p = Path(run_dir) / stage / name
    return pd.read_csv(p) if p.exists() else None


def reproduced(run_dir: str | Path) -> pd.DataFrame:
    """Per table of the paper: how many of its numbers this run reproduces, from the comparison stage's
    tables (:func:`reproduced_from`)."""
    run_dir = Path(run_dir)
    return reproduced_from(_read(run_dir, "compare", "tab-compare-table1.csv"),
                           _read(run_dir, "compare", "tab-compare-table2.csv"),
                           _read(run_dir, "compare", "tab-compare-tables3-5.csv"))


def reproduced_from(c1: Optional[pd.DataFrame], c2: Optional[pd.DataFrame],
                    c35: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Per table: the paper's numbers compared, how many this run reproduces (Tables 1–2 within
    printing precision; Tables 3–5: AUCs within :data:`AUC_TOLERANCE`) and how many it could not compute."""
    rows = []
    if c1 is not None:
        rows.append({"table": "Table 1 (baseline characteristics)", "numbers": len(c1),
                     "reproduced": int(c1["match"].astype(bool).sum()), "not computed": 0})
    if c2 is not None:
        for part, mask in (("univariable", ~c2["table"].str.contains("multi")),
                           ("multivariable", c2["table"].str.contains("multi"))):
            g = c2[mask]
            rows.append({"table": f"Table 2 ({part})", "numbers": len(g),
                         "reproduced": int(g["match"].astype(bool).sum()),
                         "not computed": int(g["ours"].isna().sum())})
    if c35 is not None:
        auc = c35[c35["metric"] == "auc"]
        for t, g in auc.groupby("table", sort=True):
            ok = (g["ours"] - g["paper"]).abs() <= AUC_TOLERANCE
            rows.append({"table": f"{t} (AUCs)", "numbers": len(g), "reproduced": int(ok.sum()),
                         "not computed": int(g["ours"].isna().sum())})
    return pd.DataFrame(rows, columns=["table", "numbers", "reproduced", "not computed"])


def reproduction_summary(table: pd.DataFrame, twin: bool, training_scale: int = 1) -> str:
    """The reproduction counts in words (``training_scale``: the run's ``cohort.training_scale``)."""
    if table.empty:
        return "The comparison with the paper has not run."
    total, ok = int(table["numbers"].sum()), int(table["reproduced"].sum())
    parts = [f"**{ok} of the paper's {total} numbers** compared here are reproduced."]
    t1 = table[table["table"].str.startswith("Table 1")]
    if twin and len(t1):
        counts = f"Table 1 ({int(t1['reproduced'].iloc[0])} of {int(t1['numbers'].iloc[0])})"
        if training_scale == 1:
            parts.append(f"{counts} agrees by construction: the synthetic twin is drawn to match it, so it "
                         "tests this code, not the paper's cohort.")
        else:
            parts.append(f"{counts} and Table 2 differ from the paper by design: the twin is drawn to match "
                         f"Table 1 with the training cohort's counts × {training_scale} "
                         "(`cohort.training_scale`), so the training counts and every P value that depends "
                         "on them are not the paper's; the percentages are.")
    later = table[table["table"].str.contains("Table [345]")]
    if len(later):
        parts.append(f"Of the {int(later['numbers'].sum())} AUCs of Tables 3–5, "
                     f"{int(later['reproduced'].sum())} lie within ±{AUC_TOLERANCE} of the paper's and "
                     f"{int(later['not computed'].sum())} could not be computed in this run.")
    return " ".join(parts)


def ceiling_table(run_dir: str | Path) -> pd.DataFrame:
    """Each signature's AUC per cohort beside the twin's reference AUC (the ceiling of any model of
    these data) and the share of the reference's margin over chance that the signature recovers."""
    t5 = _read(Path(run_dir), "evaluation", "tab-table5.csv")
    if t5 is None:
        return pd.DataFrame()
    out = []
    for _, r in t5.iterrows():
        ref_col = ("reference AUC (clinical + image)" if r["signature"] in ("Clinical", "Combined")
                   else "reference AUC (image only)")
        ref = r.get(ref_col, np.nan)
        share = (r["auc"] - 0.5) / (ref - 0.5) if pd.notna(ref) and ref > 0.5 else np.nan
        out.append({"signature": r["signature"], "cohort": r["cohort"], "AUC": r["auc"],
                    "CI low": r.get("ci_low", np.nan), "CI high": r.get("ci_high", np.nan),
                    "reference AUC": ref, "margin over chance recovered": share})
    return pd.DataFrame(out)


def ceiling_summary(table: pd.DataFrame) -> str:
    """The ceiling comparison in words (external validation, the hardest cohort)."""
    if table.empty or table["reference AUC"].isna().all():
        return ("Own data: the true recurrence probabilities are unknown, so there is no reference ceiling; "
                "the AUCs below are the method's.")
    ext = table[table["cohort"] == "external"].set_index("signature")
    parts = []
    for s in ("DL_2.5D", "Combined"):
        if s in ext.index and pd.notna(ext.loc[s, "reference AUC"]):
            r = ext.loc[s]
            parts.append(f"{s} reaches AUC {r['AUC']:.3f} on external validation against a reference of "
                         f"{r['reference AUC']:.3f} ({100 * r['margin over chance recovered']:.0f} % of the "
                         "reference's margin over chance)")
    return ("; ".join(parts) + ".") if parts else ""


def fusion_input_summary(run_dir: str | Path) -> str:
    """What the fusion learns from: the selected CNN's patient-level AUC on the training patients (out of
    fold, the scores the multi-instance fusion and the signatures are fitted on) against the validation
    cohorts (the same fold models), and the spread of the fusion families' cross-validated AUCs."""
    run_dir = Path(run_dir)
    pl = _read(run_dir, "cnn", "tab-patient-level.csv")
    prov = run_dir / "cnn" / "stage_provenance.json"
    if pl is None or not prov.exists():
        return ""
    chosen = read_json(prov).get("selected_backbone")
    a = pl[pl["backbone"] == chosen].set_index("cohort")["auc"]
    if "training" not in a.index:  # an in-sample run has no out-of-fold training row
        return ""
    val = [c for c in ("internal", "external") if c in a.index and pd.notna(a[c])]
    text = (f"The multi-instance fusion and every signature are fitted on the training patients' out-of-fold "
            f"CNN scores: {chosen}'s patient score (mean instance probability) has AUC {a['training']:.3f} on "
            "them" + (", against " + " and ".join(f"{a[c]:.3f} {c}" for c in val)
                      + " from the same fold models" if val else "") + ".")
    if val:
        gap = min(a[c] for c in val) - a["training"]
        if gap > GAP_NOTE:
            text += (f" The training AUC is {gap:.3f} below the lower validation AUC, so the fusion learns a "
                     "weaker relation than the networks show on new patients, and DL_2.5D can fall below the CNN's "
                     "own score (`tools/oof_diagnostics.py` asks why; on the twin, compare other draws with "
                     "`tools/draws.py` before calling it a rule).")
        elif max(abs(a[c] - a["training"]) for c in val) <= GAP_NOTE:
            text += f" The training and validation AUCs agree within {GAP_NOTE:.2f}."
        else:
            text += (" The validation AUCs differ from the training AUC by "
                     + " and ".join(f"{a[c] - a['training']:+.3f} ({c})" for c in val)
                     + f": the training AUC is not more than {GAP_NOTE:.2f} below the lower of them.")
    text += _score_shift(run_dir, val, a)
    t4 = _read(run_dir, "signatures", "tab-table4.csv")
    if t4 is not None and "cv_auc" in t4:
        cv = t4.drop_duplicates("model").set_index("model")["cv_auc"].dropna()
        if len(cv):
            text += (f" The {len(cv)} fusion families' cross-validated training AUCs span {cv.min():.3f}–"
                     f"{cv.max():.3f}")
            text += (": all within 0.1 of chance, so the rule that picks the highest picks "
                     "among near-chance scores." if (cv - 0.5).abs().max() < 0.1 else ".")
            text += _family_disagreement(t4, cv)
    return text


def _family_disagreement(t4: pd.DataFrame, cv: pd.Series) -> str:
    """The fusion families' AUC range per validation cohort (Table 4) beside the range of their
    cross-validated AUCs: where the families tie in cross-validation but not on a validation cohort, the
    rule's pick decides that cohort's AUC by a margin the cross-validation cannot see."""
    spans = {}
    for c in ("internal", "external"):
        v = t4[t4["cohort"] == c].set_index("model")["auc"].reindex(cv.index).dropna()
        if len(v) == len(cv) > 1:
            spans[c] = (float(v.min()), float(v.max()))
    if not spans:
        return ""
    text = (" On the validation cohorts the same families' AUCs span "
            + " and ".join(f"{lo:.3f}–{hi:.3f} {c}" for c, (lo, hi) in spans.items()) + ".")
    width = float(cv.max() - cv.min())
    wide = [c for c, (lo, hi) in spans.items() if hi - lo > max(GAP_NOTE, 2 * width)]
    if len(cv) > 1 and wide:
        text += (f" The families lie within {width:.3f} of each other in cross-validation but "
                 + " and ".join(f"{spans[c][1] - spans[c][0]:.3f} on the {c} patients" for c in wide)
                 + ": which family the rule picks decides there by more than the cross-validation can "
                 "tell, and a near-tie can go either way with nothing meaningful changed "
                 "(`tools/fusion_spread.py` refits the fusion with another seed, or with the CNN's "
                 "logits moved by 0.1 %, and shows how far the picked family's AUC moves).")
    return text


def instance_summary(run_dir: str | Path) -> str:
    """Table 3's instance AUCs against their instance-level yardstick (the CNN chapter's histogram
    reference, trained on the same folds) and, where the CNN's scores are size-adjusted, the training row
    before the adjustment; on the twin also against its instance-level ceiling (the slot reference) and
    the share of that ceiling's margin over chance that the CNN recovers."""
    t, name = instance_references(run_dir)
    ref = "histogram reference"
    if t.empty:
        return ""
    from .cnn import LABEL_REFERENCE
    from .twin_imaging import SLOT_REFERENCE

    cohorts = [c for c in ("training", "internal", "external") if c in t.index and pd.notna(t.loc[c, name])]

    def row(col):
        return ", ".join(f"{t.loc[c, col]:.3f} {c}" for c in cohorts)

    text = (f"At the level of instances (Table 3; training out of fold) {name} reaches AUC {row(name)}"
            + _patient_ci_clause(Path(run_dir), name, cohorts)
            + "; a logistic regression on the same instances' intensity histograms, trained on the same "
              f"folds, reaches {row(ref)}")
    better = [c for c in cohorts if pd.notna(t.loc[c, ref]) and t.loc[c, name] > t.loc[c, ref]]
    text += (f", so {name} beats that yardstick in every cohort." if len(better) == len(cohorts) else
             f"; {name} beats it in " + (" and ".join(better) if better else "no cohort") + ".")
    raw = f"{name}, before size adjustment"
    if raw in t:
        d = t.loc["training", raw] - t.loc["training", name]
        text += (f" Before the size adjustment {name}'s training AUC is {t.loc['training', raw]:.3f}: the "
                 f"adjustment {'takes' if d >= 0 else 'adds'} {abs(d):.3f} "
                 f"{'from' if d >= 0 else 'to'} the training row")
        sz = _read(Path(run_dir), "cnn", "tab-score-size-outcome.csv")
        has_size = sz is not None and "AUC size" in sz
        size_auc = sz.set_index("cohort")["AUC size"] if has_size else pd.Series(dtype=float)
        if d > 0.01 and size_auc.get("training", np.nan) > 0.5:
            text += (", the part of the score that followed tumour size. Size alone (per patient) reaches AUC "
                     + ", ".join(f"{size_auc[c]:.3f} {c}" for c in cohorts if c in size_auc.index)
                     + ": what it earned the training row is what the adjustment takes away.")
        else:
            text += "."
    if SLOT_REFERENCE in t:
        from .evaluation import margin_share

        share = margin_share(t[name], t[SLOT_REFERENCE]).reindex(cohorts)
        text += (f" The twin's instance-level reference (the latent traits each instance shows, read exactly) "
                 f"reaches {row(SLOT_REFERENCE)}, so {name} recovers "
                 + ", ".join(f"{share[c]:.2f} {c}" for c in cohorts if pd.notna(share[c]))
                 + " of its margin over chance.")
    if LABEL_REFERENCE in t:
        text += " " + _label_reference_sentence(t, name, cohorts, LABEL_REFERENCE, SLOT_REFERENCE)
    views = _view_sentence(Path(run_dir), name, [LABEL_REFERENCE, SLOT_REFERENCE])
    return text + ("\n\n" + views if views else "")  # a paragraph of its own


def instance_references(run_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """The CNN stage's instance AUCs beside their yardsticks (``tab-instance-reference.csv``, indexed by
    cohort) and the name of the selected CNN's column; an empty table and ``""`` where the stage did not
    write it."""
    t = _read(Path(run_dir), "cnn", "tab-instance-reference.csv")
    ref = "histogram reference"
    if t is None or ref not in t or "training" not in set(t["cohort"]):
        return pd.DataFrame(), ""
    from .cnn import LABEL_REFERENCE
    from .twin_imaging import SLOT_REFERENCE

    t = t.set_index("cohort")
    name = next(c for c in t.columns
                if c not in (ref, SLOT_REFERENCE, LABEL_REFERENCE) and not c.endswith("before size adjustment"))
    return t, name


#: how much more of the slot reference a view group has to lose to be named as where the shortfall lies
VIEW_GAP = 0.05


def _view_sentence(run_dir: Path, name: str, references: Sequence[str]) -> str:
    """Where the CNN's instance AUC falls short, by view: the training cohort's mean instance AUC over the
    axial slots and over the sagittal and coronal ones, for ``name`` and each of ``references`` present in the
    CNN chapter's per-slot table (``tab-slot-auc-references.csv``). Names the view group whose distance to the
    slot reference (the last of ``references``) is larger by :data:`VIEW_GAP` or more, and says whether the
    reference reads that group about as well as the other. Empty without the table or a training row."""
    t = _read(run_dir, "cnn", "tab-slot-auc-references.csv")
    if t is None or "training" not in set(t["cohort"]):
        return ""
    t = t[t["cohort"] == "training"].set_index("model").drop(columns="cohort")
    axial = [c for c in t.columns if c.startswith("axial")]
    other = [c for c in t.columns if c.split("+")[0].split("-")[0] in ("sagittal", "coronal")]
    models = [m for m in [name, *references] if m in t.index]
    if not axial or not other or name not in models:
        return ""
    mean = {m: (t.loc[m, axial].astype(float).mean(), t.loc[m, other].astype(float).mean()) for m in models}
    parts = [f"{'the slot reference' if m == references[-1] else m} {a:.3f} and {o:.3f}" for m, (a, o) in mean.items()]
    text = ("By view (training cohort, mean instance AUC over the axial slots and over the sagittal and coronal "
            "ones): " + "; ".join(parts) + ".")
    ref = references[-1]
    if ref in mean:
        gap_axial, gap_other = (mean[ref][i] - mean[name][i] for i in (0, 1))
        if gap_other >= gap_axial + VIEW_GAP:
            even = abs(mean[ref][1] - mean[ref][0]) <= VIEW_GAP / 2
            text += (f" {name} loses most against the reference on the sagittal and coronal instances"
                     + (", which by the reference carry about as much as the axial ones: the network has not learnt "
                        "to read the traits those instances show (the data chapter measures which, slot by slot)"
                        if even else "") + ".")
        elif gap_axial >= gap_other + VIEW_GAP:
            text += f" {name} loses most against the reference on the axial instances."
    return text


def _patient_ci_clause(run_dir: Path, name: str, cohorts) -> str:
    """`` (95 % CI with whole patients resampled: …)`` for backbone ``name``'s instance AUCs, from Table 3
    (empty where Table 3 has no such interval)."""
    t3 = _read(run_dir, "cnn", "tab-table3.csv")
    if t3 is None or "ci_low_patients" not in t3:
        return ""
    t3 = t3[t3["backbone"] == name].set_index("cohort")
    parts = [f"{t3.loc[c, 'ci_low_patients']:.3f}–{t3.loc[c, 'ci_high_patients']:.3f} {c}" for c in cohorts
             if c in t3.index and pd.notna(t3.loc[c, "ci_low_patients"])]
    return f" (95 % CI with whole patients resampled: {', '.join(parts)})" if parts else ""


def _label_reference_sentence(t: pd.DataFrame, name: str, cohorts, label_ref: str, slot_ref: str) -> str:
    """The CNN against the same network taught the twin's latent image score (column ``label_ref`` of a
    cohorts × models table of instance AUCs): what learning from outcomes costs it, and, with the slot
    reference, which part of the distance to that ceiling is the larger."""
    lab = t[label_ref].reindex(cohorts)
    cost = (lab - t[name].reindex(cohorts)).dropna()
    text = (f"Taught the twin's latent image score in place of the outcome (a label no real study has), the "
            f"same network on the same folds reaches " + ", ".join(f"{lab[c]:.3f} {c}" for c in cost.index)
            + f"; {name}, taught the outcome, is "
            + ", ".join(f"{abs(v):.3f} {'lower' if v > 0 else 'higher'} in {c}" if round(v, 3) else f"level in {c}"
                        for c, v in cost.items())
            + ".")
    if slot_ref in t and len(cost):
        unread = (t[slot_ref].reindex(cost.index) - lab.reindex(cost.index)).mean()
        if unread > cost.mean():
            text += (f" Most of the distance to the slot reference (on average {unread:.3f} of "
                     f"{unread + cost.mean():.3f}) remains when the network is told what to look for: it is what "
                     f"this network does not read from single instances of this many patients, not what the "
                     f"outcome labels fail to teach.")
        else:
            text += (f" Most of the distance to the slot reference (on average {cost.mean():.3f} of "
                     f"{unread + cost.mean():.3f}) is what the outcome labels fail to teach.")
    return text


def _score_shift(run_dir: Path, cohorts, cnn_auc: pd.Series) -> str:
    """A validation cohort whose instance scores sit :data:`SHIFT_NOTE` logit or more from the training
    patients' (a centre effect the input harmonisation did not remove): how far, how many of its instances
    fall below the training median, and DL_2.5D's AUC there beside the CNN score's."""
    ip = _read(run_dir, "cnn", "instance_probs_selected.csv")
    if ip is None or not {"prob", "cohort"} <= set(ip.columns) or "training" not in set(ip["cohort"]):
        return ""
    from .stats import logit

    lg = pd.Series(logit(ip["prob"]), index=ip.index)
    train = (ip["cohort"] == "training").to_numpy()
    shift = lg.groupby(ip["cohort"]).mean() - lg[train].mean()
    below = (lg < lg[train].median()).groupby(ip["cohort"]).mean()
    big = [c for c in cohorts if c in shift.index and abs(shift[c]) >= SHIFT_NOTE]
    if not big:
        return ""
    t5 = _read(run_dir, "evaluation", "tab-table5.csv")
    dl = (t5[t5["signature"] == "DL_2.5D"].set_index("cohort")["auc"] if t5 is not None and "signature" in t5
          else pd.Series(dtype=float))
    parts, lost = [], False
    for c in big:
        part = (f"the {c} patients' instance scores sit {shift[c]:+.2f} logit from the training patients' on "
                f"average ({below[c] * 100:.0f} % of their instances below the training median, against 50 %)")
        if c in dl.index and pd.notna(dl[c]):
            part += f"; there DL_2.5D has AUC {dl[c]:.3f} and the CNN's mean score {cnn_auc[c]:.3f}"
            lost |= bool(dl[c] < cnn_auc[c] - GAP_NOTE)
        parts.append(part)
    text = " Centre shift: " + "; ".join(parts) + "."
    if lost:
        text += (" The mean score keeps its ranking under such a shift, but the fusion's histogram bins and word "
                 "thresholds were fitted on the training patients' scores, so a cohort moved towards one end of "
                 "them loses differences the fused model learned to read: here DL_2.5D falls more than "
                 f"{GAP_NOTE:.2f} below the CNN's own score.")
    else:
        text += (" The fusion's bins and thresholds were fitted on the training patients' scores; here DL_2.5D "
                 f"stays within {GAP_NOTE:.2f} of the CNN's own score despite the shift.")
    return (text + _fusion_spread(run_dir, big) + _harmonised(run_dir, big) + _other_fusion(run_dir, big)
            + _timing_remedy(run_dir, big) + _reference_rows(run_dir, big))


def _fusion_spread(run_dir: Path, cohorts) -> str:
    """How much the fusion gains or loses against the CNN's own mean score on the shifted cohorts, over
    every model the ablation stage retrained (DL features alone minus that model's CNN mean score): the
    spread that says whether this run's main model keeping (or losing) the CNN's ranking is a rule or one
    retraining's luck."""
    t = _read(run_dir, "ablations", "tab-ablations.csv")
    ca = _read(run_dir, "ablations", "tab-ablations-cnn-patient-mean.csv")
    if t is None or ca is None or not {"features", "variant"} <= set(t.columns) or "variant" not in ca:
        return ""
    dl = t[t["features"] == "DL alone"].drop_duplicates("variant").set_index("variant")
    ca = ca.drop_duplicates("variant").set_index("variant")
    parts = []
    for c in cohorts:
        if f"AUC {c}" not in dl or c not in ca:
            continue
        d = (dl[f"AUC {c}"] - ca[c].reindex(dl.index)).dropna()
        if len(d) < 3:
            continue
        parts.append(f"on the {c} patients by a median {d.median():+.3f} (from {d.min():+.3f} to {d.max():+.3f}; "
                     f"more than {GAP_NOTE:.2f} below it for {int((d < -GAP_NOTE).sum())} of {len(d)})")
    if not parts:
        return ""
    return (" Over the models the ablation chapter retrains (each with its own cross-fitting), the DL features "
            "alone differ from the same model's CNN mean score " + "; ".join(parts) + ": whether the fusion "
            "keeps the network's ranking on a shifted cohort changes from one retraining to the next, and this "
            "run's main model is one of those draws.")


def _ablation_rows(run_dir: Path, cohorts, factor: str):
    """The ablation stage's DL-alone rows: ``(all of them, the full row, the rows of ``factor``, the cohorts
    of ``cohorts`` the table has, the CNN's patient-mean AUCs indexed by variant or None)``; None where the
    table, the full row or a row of ``factor`` is missing."""
    t = _read(run_dir, "ablations", "tab-ablations.csv")
    if t is None or not {"factor", "features", "variant"} <= set(t.columns):
        return None
    dl = t[t["features"] == "DL alone"]
    full, rows = dl[dl["factor"] == "reference"], dl[dl["factor"] == factor]
    cs = [c for c in cohorts if f"AUC {c}" in t.columns]
    if full.empty or rows.empty or not cs:
        return None
    ca = _read(run_dir, "ablations", "tab-ablations-cnn-patient-mean.csv")
    ca = ca.set_index("variant") if ca is not None and "variant" in ca.columns else None
    return dl, full, rows, cs, ca


def _timing_remedy(run_dir: Path, cohorts) -> str:
    """The shifted cohorts' AUCs of the ablation stage's arterial-timing row (``cnn.augment.timing``)
    beside its full row, after the fusion (DL features alone) and for the CNN's own mean score."""
    rows = _ablation_rows(run_dir, cohorts, "augmentation")
    if rows is None:
        return ""
    dl, full, tim, cs, ca = rows
    seed = dl[dl["factor"] == "training noise"]
    parts = [f"{tim[f'AUC {c}'].iloc[0]:.3f} against {full[f'AUC {c}'].iloc[0]:.3f} on the {c} patients"
             for c in cs]
    text = (" Retrained with the arterial-timing augmentation (`cnn.augment.timing`; the ablation chapter's "
            f"row *{tim['variant'].iloc[0]}*, one cross-fitting like its full row), the DL features alone give "
            "an AUC of " + "; ".join(parts))
    v_t, v_f = tim["variant"].iloc[0], full["variant"].iloc[0]
    if ca is not None and {v_t, v_f} <= set(ca.index):
        text += (", and the CNN's mean score " + "; ".join(
            f"{ca.loc[v_t, c]:.3f} against {ca.loc[v_f, c]:.3f}" for c in cs if c in ca.columns))
    if not seed.empty:  # what retraining alone moves: the yardstick for one retrained row
        v_s = seed["variant"].iloc[0]
        text += ("; the full model retrained with another seed alone gives " + "; ".join(
            f"{seed[f'AUC {c}'].iloc[0]:.3f}" for c in cs)
            + (" (CNN score " + "; ".join(f"{ca.loc[v_s, c]:.3f}" for c in cs if c in ca.columns) + ")"
               if ca is not None and v_s in ca.index else "")
            + ", so one draw's retraining cannot tell the two apart unless the difference exceeds that")
    return text + "."


def _reference_rows(run_dir: Path, cohorts) -> str:
    """The shifted cohorts' AUCs of the ablation stage's intensity-reference rows (``no-reference``,
    ``two-point``, ``vessel``, ``parenchyma``: the model retrained with another ``cnn.intensity_reference``)
    beside its full row, after the fusion (DL features alone) and for the CNN's own mean score."""
    rows = _ablation_rows(run_dir, cohorts, "intensity reference")
    if rows is None:
        return ""
    _, full, refs, cs, ca = rows
    pj = Path(run_dir) / "cnn" / "stage_provenance.json"
    used = read_json(pj).get("intensity_reference") if pj.exists() else None

    def auc(row, c):
        v = row["variant"]
        cnn = (f", CNN score {ca.loc[v, c]:.3f}" if ca is not None and v in ca.index and c in ca.columns
               else "")
        return f"{row[f'AUC {c}']:.3f}{cnn}"

    parts = []
    for c in cs:
        rows = "; ".join(f"*{r['variant']}* {auc(r, c)}" for _, r in refs.iterrows())
        parts.append(f"on the {c} patients {rows}, against the full model's {auc(full.iloc[0], c)}")
    return (" Retrained with another intensity reference (the ablation chapter's rows, each one cross-fitting; "
            + (f"this run's is `{used}`" if used else "the full model uses the CNN stage's") + "), the DL "
            "features alone give " + "; ".join(parts) + ".")


def _harmonised(run_dir: Path, cohorts) -> str:
    """DL_2.5D's AUC on the shifted cohorts with the new centre's scores frozen and harmonised (the
    signatures stage's ``tab-centre-harmonisation.csv``), and which of the two this run's signatures use."""
    h = _read(run_dir, "signatures", "tab-centre-harmonisation.csv")
    need = {"cohort", "centres moved", "DL_2.5D AUC (frozen)", "DL_2.5D AUC (harmonised)"}
    if h is None or not need <= set(h.columns):
        return ""
    h = h[h["cohort"].isin(cohorts) & (h["centres moved"] != "—")]
    if h.empty:
        return ""
    pj = Path(run_dir) / "signatures" / "stage_provenance.json"
    prov = read_json(pj) if pj.exists() else {}
    used = "harmonised" if prov.get("harmonise_centres") else "frozen"
    parts = [f"{r['DL_2.5D AUC (frozen)']:.3f} frozen against {r['DL_2.5D AUC (harmonised)']:.3f} harmonised on "
             f"the {r['cohort']} patients" for _, r in h.iterrows()]
    return (" Mapping the new centre's scores onto the training scores' mean and SD before the fusion "
            "(`signatures.harmonise_centres`, fitted on that centre's own unlabelled patients) gives DL_2.5D an AUC "
            "of " + "; ".join(parts) + f". This run's signatures use the {used} scores.")


def _other_fusion(run_dir: Path, cohorts) -> str:
    """DL_2.5D's family refitted with the other multi-instance fusion (the signatures stage's
    ``tab-fusion-alternative.csv``) on the shifted cohorts, beside this run's, and on the training cohort."""
    t = _read(run_dir, "signatures", "tab-fusion-alternative.csv")
    if t is None or "cohort" not in t:
        return ""
    own = [c for c in t.columns if c.startswith("AUC (fusion: ") and c.endswith(", this run)")]
    other = [c for c in t.columns if c.startswith("AUC (fusion: ") and c not in own]
    if len(own) != 1 or len(other) != 1:
        return ""
    name = other[0][len("AUC (fusion: "):-1]
    t = t.set_index("cohort")
    parts = [f"{t.at[c, other[0]]:.3f} on the {c} patients against this run's {t.at[c, own[0]]:.3f}"
             for c in cohorts if c in t.index]
    if not parts:
        return ""
    tr = "training (cross-validated)"
    if tr in t.index:
        parts.append(f"{t.at[tr, other[0]]:.3f} against {t.at[tr, own[0]]:.3f} cross-validated on the training "
                     "patients")
    what = ("the summary of each patient's instance logits, with no bin fitted on the training scores; not the "
            "paper's" if name == "summary" else "the paper's histogram and bag of words")
    return (f" Refitted with the other multi-instance fusion (`signatures.fusion: {name}`: {what}), the same "
            "family gives DL_2.5D an AUC of " + "; ".join(parts) + ".")


def ablation_summary(run_dir: str | Path) -> str:
    """The ablation stage's findings (:func:`hcc25d.ablation.summary`) from its saved tables."""
    from .ablation import summary

    t = _read(Path(run_dir), "ablations", "tab-ablations.csv")
    if t is None:
        return "The ablation stage did not run (`ablations.enabled: false`)."
    loadings = _read(Path(run_dir), "ablations", "tab-trait-loadings.csv")
    if loadings is not None:
        loadings["twin"] = loadings["twin"].fillna("")
    return summary(t, _read(Path(run_dir), "ablations", "tab-negative-control.csv"),
                   _read(Path(run_dir), "ablations", "tab-ablations-cnn-patient-mean.csv"), loadings,
                   _read(Path(run_dir), "ablations", "tab-trait-probe.csv"))


def ablation_effects(run_dir: str | Path) -> pd.DataFrame:
    """Each ablation variant's DL-alone AUC minus the full model's, per validation cohort, with its DeLong
    P against the full model and the training noise (how far retraining the full model with another seed
    moved it, the largest over the validation cohorts, as :func:`hcc25d.ablation.summary` reads it). The
    negative-control twin's 2D variant follows the default twin's 2D row, and the seed replicate comes
    last. Empty when the ablation stage did not run."""
    run_dir = Path(run_dir)
    t = _read(run_dir, "ablations", "tab-ablations.csv")
    if t is None or "features" not in t:
        return pd.DataFrame(columns=["variant", "cohort", "difference", "P", "noise"])
    dl = t[t["features"] == "DL alone"]
    full = dl[dl["factor"] == "reference"].iloc[0]
    cohorts = [c for c in ("internal", "external") if f"AUC {c}" in dl]
    seed = dl[dl["factor"] == "training noise"]
    noise = (max(abs(full[f"AUC {c}"] - seed.iloc[0][f"AUC {c}"]) for c in cohorts) if len(seed)
             else np.nan)
    nc = _read(run_dir, "ablations", "tab-negative-control.csv")
    extra = []
    if nc is not None and len(nc) and "twin" in nc:
        for twin, g in nc.groupby("twin", sort=False):
            if len(g) >= 2 and not str(twin).startswith("default"):
                f, d = g.iloc[0], g.iloc[1]
                extra.append((f"{d['variant']}, {twin} twin", f, d))
    rows = []
    for _, r in dl[dl["factor"] != "reference"].iterrows():
        items = [(r["variant"], full, r)]
        if r["factor"] == "2.5D":
            items += extra
        for name, base, v in items:
            for c in cohorts:
                rows.append({"variant": name, "cohort": c, "difference": v[f"AUC {c}"] - base[f"AUC {c}"],
                             "P": v.get(f"DeLong P vs full ({c})", np.nan), "noise": noise,
                             "seed replicate": r["factor"] == "training noise"})
    return pd.DataFrame(rows)


def limits(run_dir: str | Path, twin: bool, training_scale: int = 1, arterial_excess: bool = False) -> list[str]:
    """What this run cannot reproduce, and why — each point computed from the run's records.
    ``training_scale``: the run's ``cohort.training_scale``; ``arterial_excess``: its
    ``cnn.arterial_excess``."""
    run_dir = Path(run_dir)
    out = []
    if twin:
        out.append("The images are a synthetic study twin, not the paper's patients: Tables 3–5 test whether "
                   "the method recovers a known, planted signal, not the paper's clinical result.")
        m = _read(run_dir, "data", "manifest.csv")
        n = int((m["cohort"] == "training").sum()) if m is not None and "cohort" in m else None
        if n and training_scale == 1:
            out.append(f"The networks learn from {n} training patients' outcomes: "
                       "`make book RUN=training-x3` reruns the twin with three times as many (validation "
                       "cohorts of the same size) to show how much of the shortfall against the reference is "
                       "the training cohort's size.")
        elif n:
            out.append(f"The training cohort here is the paper's × {training_scale} ({n} patients; "
                       "`cohort.training_scale`), so its AUCs show the method with more data to learn from than "
                       "the paper had; the default run has the paper's number.")
        prov = run_dir / "provenance.json"
        seed = read_json(prov).get("seed") if prov.exists() else None
        out.append("This run is one draw of the twin" + (f" (`seed: {seed}`)" if seed is not None else "")
                   + ": its patients, their traits and images, and the networks' initialisation all follow "
                   "the seed, so every AUC here would come out higher or lower on another draw. "
                   f"`python tools/draws.py --params params/{run_dir.name}.yaml --seeds 7 11 13` reruns the "
                   "method (stages `cohort` to `evaluation`) on other draws and gives their spread: each "
                   "draw's AUCs, DL_2.5D's share of the reference's margin over chance, Combined against "
                   "Clinical and the CNN's out-of-fold instance AUC.")
    weights = run_dir / "cnn" / "weights.json"
    if weights.exists():
        w = read_json(weights)
        if not any(v.get("used") == "imagenet" for v in w.values()):
            out.append(f"No ImageNet-pretrained weights were used (backbones: {', '.join(w)}; trained from "
                       "random initialisation): the paper fine-tuned pretrained networks.")
        missing = sorted({"densenet121", "resnet50", "resnet101", "vgg19"} - set(w))
        if missing:
            out.append(f"The paper's backbones {', '.join(missing)} were not trained in this run (the `gpu` "
                       "profile trains all four at 224 px).")
    if arterial_excess:
        out.append("The slice-level networks here see a fourth input channel that the paper's did not, the "
                   "arterial excess (`cnn.arterial_excess`, explained in the CNN chapter); the ablation chapter's "
                   "*no arterial excess* row retrains the network on the paper's three phases alone.")
    c35 = _read(run_dir, "compare", "tab-compare-tables3-5.csv")
    if c35 is not None:
        auc = c35[(c35["metric"] == "auc") & c35["reference AUC"].notna()]
        above = auc[auc["paper"] > auc["reference AUC"]]
        if len(above):
            out.append(f"{len(above)} of the paper's AUCs exceed this twin's reference AUC for the same cohort: "
                       "no honest model could reach them on these data.")
    from .evaluation import threshold_transfer_summary

    tt = _read(run_dir, "evaluation", "tab-threshold-transfer.csv")
    said = threshold_transfer_summary(tt) if tt is not None else ""
    if said:
        out.append("Sensitivity, specificity, PPV and NPV on the validation cohorts use thresholds chosen on "
                   "the training cohort. " + said + " Where a cohort's flagged "
                   "share lies far from its recurrence rate while the AUC holds, that cohort's scores sit "
                   "elsewhere; the signature still ranks its patients (the evaluation chapter's threshold "
                   "table).")
    out.append("Training-cohort AUCs here are cross-validated (out of sample); the paper's are in-sample, "
               "which flatters them — the in-sample rows are shown beside ours in the chapters.")
    return out
