"""Ablations of the DL_2.5D pipeline (beyond the paper): each variant changes one factor of the input and
*retrains the slice-level CNN* on it, then goes through the same multi-instance fusion and the same model
family as the full signature.

Variants (:data:`VARIANTS`): the full model (three views, three phases), 2D (the central axial slice
only), axial 2.5D (the seven axial slices, no sagittal or coronal view), one phase (arterial; portal), no
arterial-excess channel, and no intensity reference. Each is reported with its DL features alone and with the same radiomics set as the
full model (for a one-phase variant: that phase's features plus the shape features, which describe the
mask and not a phase), with the paired DeLong test against the full model on the same patients.

The **negative control** (:func:`negative_control_bags`) regenerates the twin with
``signal_position: central`` — the same latent traits, drawn the same way, but placed on the tumour's
maximal cross-section — and crops it in memory. With the signal on the central slice a 2.5D model has
nothing to gain over a 2D one; a pipeline that still shows a 2.5D advantage there would be measuring
something other than the planted signal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import signatures as sig
from .cohort import COHORTS, in_cohort_order
from .stats import auc_ci, delong_test
from .twin_imaging import TRAIT_NAMES

__all__ = [
    "COHORTS",
    "Variant",
    "VARIANTS",
    "patient_mean_auc",
    "select_variants",
    "subset_bags",
    "ablation_repeats",
    "full_reference",
    "uses_excess",
    "retrain_cnn",
    "mil_features",
    "radiomics_columns",
    "evaluate_variant",
    "negative_control_bags",
    "EXPECTED",
    "summary",
    "readout_yardstick",
    "Context",
    "load_context",
    "run_variants",
    "negative_control",
    "yardstick_table",
    "shortcut_table",
    "LOADING_TERMS",
    "LOADING_MODELS",
    "loading_model_names",
    "trait_loadings",
    "raw_patient_scores",
    "PROBE_TRAITS",
    "PROBE_OUTCOME",
    "PROBE_TWINS",
    "NC_TRAITS",
    "probe_table",
    "trait_probe",
]


@dataclass(frozen=True)
class Variant:
    """One ablation: which instance slots and phases the CNN is retrained on, and the intensity reference."""

    #: the key of ``ablations.variants`` in a params file
    key: str
    name: str
    #: the factor it isolates (for the table and figure)
    factor: str
    #: ``all``, ``central`` (axial offset 0 only) or ``axial`` (the axial stack)
    slots: str = "all"
    #: the phases the CNN sees (``None`` = all channels); one phase is copied into the three channels
    phases: Optional[tuple] = None
    #: ``None`` = the CNN stage's setting; else ``parenchyma``, ``two-point``, ``vessel`` or ``none``
    reference: Optional[str] = None
    #: train with another seed (the same input): how far retraining alone moves the AUC
    reseed: int = 0
    #: ``None`` = the CNN stage's ``cnn.loss``; else ``instance`` or ``bag``
    loss: Optional[str] = None
    #: ``False``: the full model's scores without the size adjustments, of the CNN score and of the
    #: radiomics features (no retraining)
    size_adjust: Optional[bool] = None
    #: ``None`` = the CNN stage's ``cnn.arterial_excess``; ``False``: the three phases alone (the paper's
    #: input). A one-phase variant never has it (the excess needs all three phases).
    excess: Optional[bool] = None
    #: ``None`` = the CNN stage's ``cnn.augment.timing``; else this value (0 = off)
    timing: Optional[float] = None


#: the ``timing`` variant's ``augment.timing``: every arterial contrast to the liver × a factor in 1 ± this
ABLATION_TIMING = 0.3

VARIANTS = (
    Variant("full", "full: 2.5D, three views, three phases", "reference"),
    Variant("2d", "2D: central axial slice", "2.5D", slots="central"),
    Variant("axial", "axial 2.5D: no sagittal/coronal view", "views", slots="axial"),
    Variant("arterial", "one phase: arterial", "phases", phases=("arterial",)),
    Variant("portal", "one phase: portal", "phases", phases=("portal",)),
    Variant("no-excess", "no arterial excess (the paper's three phases)", "arterial excess", excess=False),
    Variant("no-reference", "no intensity reference", "intensity reference", reference="none"),
    Variant("two-point", "two-point intensity reference (parenchyma and tumour)", "intensity reference",
            reference="two-point"),
    Variant("vessel", "vessel-normalised arterial enhancement, then the parenchyma shift", "intensity reference",
            reference="vessel"),
    Variant("parenchyma", "parenchyma intensity reference (the shift alone)", "intensity reference",
            reference="parenchyma"),
    Variant("timing", f"arterial-timing augmentation (contrast × 1 ± {ABLATION_TIMING:g})", "augmentation",
            timing=ABLATION_TIMING),
    Variant("instance-loss", "instance labels (the paper's training)", "training loss", loss="instance"),
    Variant("no-size-adjust", "no size adjustment", "size adjustment", size_adjust=False),
    Variant("seed", "full, retrained with another seed", "training noise", reseed=1),
)


def select_variants(keys, channels) -> list:
    """The full model and the variants named by ``keys`` (``ablations.variants``), in the table's order;
    an unknown key or a phase that is not among the crop channels is an error naming the choices."""
    known = {v.key: v for v in VARIANTS}
    bad = [k for k in keys if k not in known or k == "full"]
    if bad:
        raise ValueError(f"ablations.variants: unknown {bad}; choose from {[k for k in known if k != 'full']}")
    out = [VARIANTS[0]] + [v for v in VARIANTS[1:] if v.key in set(keys)]
    for v in out:
        if v.phases and not set(v.phases) <= set(channels):
            raise ValueError(f"ablations.variants: {v.key!r} needs the phase(s) {list(v.phases)}, which are not "
                             f"among the crop channels {list(channels)}")
    return out


def subset_bags(bags, variant: Variant, channels: Sequence[str]):
    """The instances and channels a variant's CNN is trained on (a one-phase variant repeats its phase in
    the three channels, as a single-phase study fed to an RGB network would)."""
    from .crop25d import Bags

    idx = bags.index
    if variant.slots == "central":
        keep = ((idx["view"] == "axial") & (idx["offset"] == 0)).to_numpy()
    elif variant.slots == "axial":
        keep = (idx["view"] == "axial").to_numpy()
    elif variant.slots == "all":
        keep = np.ones(len(idx), bool)
    else:
        raise ValueError(f"unknown slots {variant.slots!r}")
    x = bags.x[keep]
    index = idx[keep].reset_index(drop=True)
    names = bags.channels
    if variant.phases:
        missing = [p for p in variant.phases if p not in channels]
        if missing:
            raise ValueError(f"ablation phase(s) {missing} are not among the crop channels {list(channels)}")
        cols = [list(channels).index(p) for p in variant.phases]
        x = x[:, cols]
        names = tuple(variant.phases)
        if len(cols) == 1:
            x = np.repeat(x, len(channels), axis=1)
            names = names * len(channels)
    return Bags(np.ascontiguousarray(x), index, names)


def ablation_repeats(cfg) -> int:
    """Cross-fitting repeats of every retrained variant: ``ablations.cnn_repeats``, or ``cnn.repeats``."""
    r = cfg.ablations.cnn_repeats
    return int(cfg.cnn.repeats if r is None else r)


def full_reference(ctx) -> pd.DataFrame:
    """The full model's instance probabilities as the ablations compare against them: the CNN stage's own
    where the variants are cross-fitted as often as it was, else the full model retrained with the
    variants' ``ablations.cnn_repeats`` (so that the full row differs from each variant in one factor) —
    for a single cross-fitting, the CNN stage's first split (``instance_probs_selected_first_repeat.csv``:
    the same seeds, folds and models), else retrained."""
    if ablation_repeats(ctx.cfg) == int(ctx.cfg.cnn.repeats):
        return ctx.full_preds
    if ablation_repeats(ctx.cfg) == 1 and ctx.first_repeat is not None:
        return ctx.first_repeat  # the CNN stage's first split alone: the same models a retraining would give
    return retrain_cnn(ctx.raw, VARIANTS[0], ctx.cfg, ctx.fold_of, ctx.backbone, ctx.cache,
                       ctx.cfg.compute.progress, confounders=ctx.confounders, size=ctx.size)


def uses_excess(variant: Variant, C) -> bool:
    """Whether a variant's CNN gets the arterial-excess channel: the CNN stage's setting, unless the variant
    turns it off or sees one phase (the excess is made of all three)."""
    return bool(C.arterial_excess) and variant.excess is not False and not variant.phases


def retrain_cnn(raw_bags, variant: Variant, cfg, fold_of: dict, backbone: str, cache_dir=None,
                progress: bool = True, name: Optional[str] = None,
                confounders: Optional[pd.DataFrame] = None, size: Optional[pd.Series] = None,
                labels: Optional[pd.Series] = None, prediction: Optional[str] = None,
                settings: Optional[dict] = None) -> pd.DataFrame:
    """Cross-fit the selected backbone on a variant's instances, with the CNN stage's folds and settings
    (``progress``: a bar over the variant's models).

    ``raw_bags``: the cropping stage's bags *before* the intensity reference (the variant decides).
    ``labels`` (patient id → 0/1): train on this label instead of the outcome, on the patients it names
    (:func:`trait_probe`); ``prediction``: instead of ``cnn.prediction``; ``settings``: further ``cnn``
    settings, applied after the variant's (e.g. ``{"repeats": 1}``).
    Returns the instance probabilities (as the CNN stage's ``instance_probs``).
    """
    from . import cnn
    from .crop25d import Bags

    update = {"repeats": ablation_repeats(cfg)}
    if variant.loss is not None:
        update["loss"] = variant.loss
    if variant.timing is not None:
        update["augment"] = cfg.cnn.augment.model_copy(update={"timing": float(variant.timing)})
    C = cfg.cnn.model_copy(update={**update, **(settings or {})})
    # the excess is fitted on every training instance, then the variant's slots are taken
    C_in = C.model_copy(update={"arterial_excess": uses_excess(variant, C)})
    bags, _, _ = cnn.prepare_input(raw_bags, C_in, cfg.crop.channels, variant.reference)
    sub = subset_bags(bags, variant, cfg.crop.channels)
    if labels is not None:
        pid = sub.index["patient_id"].astype(str)
        keep = pid.isin(labels.index.astype(str)).to_numpy()
        lab = labels.set_axis(labels.index.astype(str)).reindex(pid[keep]).to_numpy()
        sub = Bags(sub.x[keep], sub.index[keep].assign(label=lab).reset_index(drop=True), sub.channels)
    make = lambda: cnn.build_model(backbone, C.weights, C.on_missing_weights, C.dropout, width=C.width,  # noqa: E731
                                   in_channels=sub.x.shape[1])[0]
    name = name or f"{backbone} [{variant.name}]"
    preds, _, _, _ = cnn.crossfit_predict(sub, make, C, cfg.cnn_seed() + 7919 * variant.reseed, folds=C.folds,
                                          prediction=prediction or C.prediction,
                                          device=cnn.torch_device(C.device),
                                          cache_dir=cache_dir, name=name,
                                          progress="models" if progress else False, fold_of=fold_of,
                                          confounders=confounders,
                                          verbose=False, size=size)
    if not cfg.ablations.keep_checkpoints:
        cnn.remove_checkpoints(cache_dir, name)
    return preds


def mil_features(preds: pd.DataFrame) -> pd.DataFrame:
    """Patients × instance slots of probabilities (the input of the MIL fusion)."""
    from .mil import bag_matrix

    return bag_matrix(preds)


def radiomics_columns(rad_cols: Sequence[str], phases: Optional[Sequence[str]]) -> list[str]:
    """The radiomics set of a variant: all features, or one phase's features plus the shape features."""
    if not phases:
        return list(rad_cols)
    return [c for c in rad_cols if c.startswith("shape_") or any(c.startswith(p + "_") for p in phases)]


def evaluate_variant(name: str, X: pd.DataFrame, meta: pd.DataFrame, inst_cols, rad_cols, key: str, cfg, cv,
                     full: Optional[np.ndarray] = None, views=None,
                     sample_weight: Optional[np.ndarray] = None, size_col: Optional[str] = None
                     ) -> tuple[dict, np.ndarray]:
    """Tune the family ``key`` on a variant's features (training rows, the given CV) and score everyone.

    Returns the table row (AUC per cohort, DeLong P against ``full`` per validation cohort) and every
    patient's probability (out-of-fold for training patients)."""
    S = cfg.signatures
    y = meta["label"].to_numpy()
    pipe = sig.pipeline_for(key, inst_cols, rad_cols, S, cfg.seed, size_col=size_col if rad_cols else None)
    p = sig.fit_family(key, pipe, X, meta, S, cfg.seed, n_jobs=cfg.compute.n_jobs, cv=cv, views=views,
                       sample_weight=sample_weight).scores
    row = {"variant": name, "instances per patient": len(inst_cols), "radiomics features": len(rad_cols)}
    for c in COHORTS:
        m = (meta["cohort"] == c).to_numpy()
        if m.sum() == 0 or len(set(y[m])) < 2:
            continue
        a = auc_ci(y[m], p[m])
        row[f"AUC {c}"] = a.auc
        row[f"CI low {c}"], row[f"CI high {c}"] = a.low, a.high
        if full is not None and c != "training":
            row[f"DeLong P vs full ({c})"] = delong_test(y[m], p[m], full[m]).p_value
    return row, p


# --------------------------------------------------------------------------------------------------
# the negative-control twin
# --------------------------------------------------------------------------------------------------
def _nc_worker(args):
    row, seed, twin_prm, crop_prm = args
    from .crop25d import crop_arrays, reference_levels, resample_and_window
    from .twin_imaging import make_patient, to_images

    vol = make_patient(row, seed, twin_prm)
    imgs, mask = to_images(vol)
    v, m, names, _ = resample_and_window(imgs, mask, crop_prm)
    x, idx, _ = crop_arrays(v, m, crop_prm, crop_prm.spacing_mm)[0]
    refs = {**reference_levels(v, m, crop_prm), **{f"ves_{ph}": h for ph, h in vol["vessel_hu"].items()}}
    pid = str(row["patient_id"])
    rows = [{"patient_id": pid, "bag": pid, "instance": i, **r, "cohort": row["cohort"], "label": int(row["label"]),
             **refs} for i, r in enumerate(idx)]
    return x.astype(np.float16), rows


def negative_control_bags(patients: pd.DataFrame, cfg, progress: bool = True):
    """The negative-control twin's 2.5D instances, generated and cropped in memory: the run's twin with
    ``signal_position: central`` for the same patients and seed (nothing is written to disk)."""
    from .crop25d import Bags
    from .parallel import engine, map_patients

    twin = cfg.twin.model_copy(update={"signal_position": "central"})
    items = [(row, cfg.seed, twin, cfg.crop) for _, row in patients.iterrows()]
    res = map_patients(_nc_worker, items, n_jobs=cfg.compute.n_jobs, backend=engine(cfg.compute),
                       desc="negative-control twin", progress=progress)
    x = np.concatenate([r[0] for r in res])
    index = pd.DataFrame([row for r in res for row in r[1]])
    return Bags(x, index)


#: what the twin predicts for each variant against the full model (DL features alone)
EXPECTED = {
    "2D: central axial slice": "lower: the peritumoral enhancement is 4–6 mm off the central slice",
    "axial 2.5D: no sagittal/coronal view": "similar or slightly lower: the views show the off-centre traits "
                                            "only as thin bands",
    "one phase: arterial": "similar or lower: the arterial phase carries the enhancement, the satellites and "
                           "the heterogeneity, but without the other phases there is no arterial excess",
    "one phase: portal": "lower: the portal phase carries only the heterogeneity",
    "no arterial excess (the paper's three phases)": "lower: without the excess the network reads mostly the "
        "heterogeneity, the weakest trait, and little of the arterial-only enhancement and satellites",
    "no intensity reference": "similar internally, lower externally: centre 2's HU offset and bolus timing",
    "two-point intensity reference (parenchyma and tumour)": "similar internally; externally similar or higher: "
        "it undoes centre 2's lower arterial contrast of the tumour against the liver, which matters for a "
        "trait the network reads next to the tumour",
    f"arterial-timing augmentation (contrast × 1 ± {ABLATION_TIMING:g})": "similar internally; externally "
        "similar or higher: centre 2's later arterial phase lowers every arterial contrast to the liver, which "
        "moves its scores less once the network has seen such contrasts in training",
    "no size adjustment": "similar internally, lower externally: the score's size component goes with the "
                          "outcome in the training cohort and against it in the external one",
    "instance labels (the paper's training)": "lower: where one or two of nine slices show the enhancement, "
                                              "the other instances' labels are noise",
    "full, retrained with another seed": "the same in expectation: its difference is the noise of training alone",
}


def _p(p: float) -> str:
    return "P < 0.001" if p < 0.001 else f"P = {p:.3f}"


def _verdict(diff: float, p: float, noise: Optional[float] = None) -> str:
    if not np.isfinite(diff):
        return "not estimable"
    word = "lower" if diff > 0 else "higher"
    if noise is not None and abs(diff) <= noise:
        return f"{word} by {abs(diff):.3f} ({_p(p)}), within the training noise"
    if p < 0.05:
        return f"{word} by {abs(diff):.3f} ({_p(p)})"
    return f"{word} by {abs(diff):.3f}, within chance ({_p(p)})"


def _cnn_lines(cnn_auc: pd.DataFrame, full_dl: pd.Series, cohorts, nc: Optional[pd.DataFrame]) -> list[str]:
    """The same comparisons on the CNN's own patient score (mean instance probability), before fusion."""
    c = cnn_auc.set_index("variant")
    full = c.iloc[0]
    cs = [k for k in cohorts if k in c]
    lines = ["", "**The CNN's own patient score** (mean instance probability, before the multi-instance fusion): "
             "full model " + ", ".join(f"{k} {full[k]:.3f}" for k in cs) + " — after the fusion (DL features "
             "alone) " + ", ".join(f"{k} {full_dl[f'AUC {k}']:.3f}" for k in cs) + ". Each variant minus the full "
             "model on this score:", ""]
    for name, r in c.iloc[1:].iterrows():
        lines.append(f"* {name}: " + ", ".join(f"{k} {r[k] - full[k]:+.3f}" for k in cs))
    if nc is not None and len(nc) and any(f"CNN AUC {k}" in nc for k in cs):
        for twin_name, g in nc.groupby("twin", sort=False):
            if len(g) < 2:
                continue
            f, d = g.iloc[0], g.iloc[1]
            lines.append(f"* 2.5D minus 2D on the **{twin_name}** twin, CNN score: "
                         + ", ".join(f"{k} {f[f'CNN AUC {k}'] - d[f'CNN AUC {k}']:+.3f}" for k in cs
                                     if f"CNN AUC {k}" in g and np.isfinite(d[f"CNN AUC {k}"])) + ".")
    return lines


def _loading_lines(loadings: pd.DataFrame) -> list[str]:
    """:func:`trait_loadings` in words: each model's coefficient per trait and cohort, bold where |z| ≥ 2."""
    traits = [LOADING_TERMS[k] for k in ("u_pae", "u_satellites", "u_heterogeneity")]
    L = loadings[loadings["term"].isin(traits)]
    cohorts = [c for c in COHORTS if c in set(L["cohort"])]
    lines = ["", "**What the network reads** — the CNN's raw patient score per SD of each planted trait, at equal "
             "size and appearance (" + ", ".join(cohorts) + "; bold: at least two standard errors from 0):", ""]
    for (twin, model), g in L.groupby(["twin", "model"], sort=False):
        parts = []
        for t in traits:
            h = g[g["term"] == t].set_index("cohort").reindex(cohorts)
            vals = [f"**{b:+.2f}**" if np.isfinite(b) and abs(b) >= 2 * e else f"{b:+.2f}"
                    for b, e in zip(h["coef"], h["se"])]
            parts.append(f"{t} " + " / ".join(vals))
        lines.append(f"* {model}, {twin}: " + "; ".join(parts) + ".")
    return lines


def _probe_lines(probe: pd.DataFrame, clear: float = 0.5) -> list[str]:
    """:func:`trait_probe` in words: how well the network trained on each trait reads that trait (on each
    twin probed), what the network trained on the outcome reads, which traits stay below ``clear``
    (Spearman ρ) in a validation cohort even with the clean label, and which the negative-control twin's
    placement makes readable."""
    cohorts = [c for c in COHORTS if c in set(probe["cohort"])]
    val = [c for c in cohorts if c != "training"]
    P = probe.assign(twin=probe["twin"] if "twin" in probe else PROBE_TWINS[0])
    lines = ["", "**What the network can see** — trained on the planted trait itself (above or below the training "
             "median) instead of the outcome, the patient score's Spearman ρ with that trait ("
             + ", ".join(cohorts) + "):", ""]
    unseen, partly, taught, placed, referenced = [], [], [], [], []
    method = P[(P["twin"] == PROBE_TWINS[0]) & (P["trained on"] == PROBE_OUTCOME)].set_index("cohort").reindex(cohorts)
    for target, g in P[P["twin"] == PROBE_TWINS[0]].groupby("trained on", sort=False):
        g = g.set_index("cohort").reindex(cohorts)
        if target == PROBE_OUTCOME:
            lines.append(f"* the method's network, trained on {target.split(' (')[0]}: " + "; ".join(
                f"{c[2:]} " + " / ".join(f"{v:+.2f}" for v in g[c]) for c in g.columns if c.startswith("ρ "))
                + " (plain correlations: they also pick a trait up through the outcome).")
            continue
        col = f"ρ {target}"
        if col not in g:
            continue
        text = f"* trained on {target}: " + " / ".join(f"{v:+.2f}" for v in g[col])
        nc = P[(P["twin"] == PROBE_TWINS[1]) & (P["trained on"] == target)].set_index("cohort").reindex(cohorts)
        if len(nc) and nc[col].notna().any():
            text += "; on the negative-control twin, where it sits on the central slice: " + " / ".join(
                f"{v:+.2f}" for v in nc[col])
            if len(val) and (nc.loc[val, col] - g.loc[val, col]).mean() > 0.2:
                placed.append(target)
            tp = P[(P["twin"] == PROBE_TWINS[2]) & (P["trained on"] == target)].set_index("cohort").reindex(cohorts)
            if len(tp) and tp[col].notna().any():
                text += "; there with the two-point intensity reference: " + " / ".join(f"{v:+.2f}" for v in tp[col])
                moved = (tp.loc[val, col] - nc.loc[val, col]).dropna()
                if len(moved) and moved.abs().max() > 0.2:
                    c = moved.abs().idxmax()
                    referenced.append(f"{target} in the {c} cohort ({nc.loc[c, col]:+.2f} → {tp.loc[c, col]:+.2f})")
        lines.append(text + ".")
        if not len(val):
            continue
        if (g.loc[val, col] < clear).all():
            unseen.append(target)
        elif (g.loc[val, col] < clear).any():
            partly.append(target)
        if col in method and (g.loc[val, col] - method.loc[val, col]).mean() > 0.2:
            taught.append(target)
    if unseen:
        lines.append("")
        lines.append("Below ρ " + f"{clear:.1f}" + " in every validation cohort even with the clean label: "
                     + " and ".join(unseen) + ". What this network, trained for the run's budget, does not read "
                     "from these crops when told the trait itself, it cannot learn from the outcome either: for "
                     "this the first limit is what the network learns to see, not the outcome label or the fusion.")
    if partly:
        lines.append("")
        lines.append("Read with the clean label in one validation cohort but below ρ " + f"{clear:.1f}" + " in "
                     "another: " + " and ".join(partly) + " — what the network learned on the training centre "
                     "carries over only in part.")
    if taught:
        lines.append("")
        lines.append("The clean label teaches " + " and ".join(taught) + " far better (by more than 0.2 on "
                     "average over the validation cohorts) than the outcome teaches the method's network: there "
                     "the outcome label — how little of the outcome one trait explains, on about a hundred "
                     "training patients per fold model — is a limit of its own.")
    if placed:
        many = len(placed) > 1
        lines.append("")
        lines.append("The same network reads " + " and ".join(placed) + " clearly better (by more than 0.2 on "
                     f"average over the validation cohorts) when the twin puts {'them' if many else 'it'} on the "
                     "central slice, where several of a patient's instances show "
                     f"{'them' if many else 'it'}, than 4–6 mm off it, where one or two do: the off-centre "
                     f"trait{'s are' if many else ' is'} harder for this network to learn from the training "
                     "patients.")
    if referenced:
        lines.append("")
        lines.append("Referencing the tumour as well as the parenchyma (the two-point intensity reference, "
                     "which undoes a change of the tumour's enhancement against the liver between centres) "
                     "moves what the network trained on the negative-control twin reads by more than 0.2: "
                     + "; ".join(referenced) + ".")
    return lines


def summary(table: pd.DataFrame, nc: Optional[pd.DataFrame] = None, cnn_auc: Optional[pd.DataFrame] = None,
            loadings: Optional[pd.DataFrame] = None, probe: Optional[pd.DataFrame] = None) -> str:
    """The ablation findings in words, generated from the tables (DL features alone against the full
    model, per validation cohort), beside what the twin's construction predicts. A difference counts only
    if it is larger than the seed replicate's (the noise of training alone) — the DeLong P values treat
    each trained model as fixed and do not know that noise. ``loadings`` (:func:`trait_loadings`) adds
    which planted trait each model's score follows, ``probe`` (:func:`trait_probe`) which it can see."""
    dl = table[table["features"] == "DL alone"].set_index("variant")
    full = dl[dl["factor"] == "reference"].iloc[0]
    cohorts = [c for c in ("internal", "external") if f"AUC {c}" in dl]
    lines = [f"Deep-learning features alone, full model: AUC {full.get('AUC internal', np.nan):.3f} internal, "
             f"{full.get('AUC external', np.nan):.3f} external."]
    seed = dl[dl["factor"] == "training noise"]
    noise = None
    if len(seed):
        noise = max(abs(full[f"AUC {c}"] - seed.iloc[0][f"AUC {c}"]) for c in cohorts)
        lines.append(f"Retraining the *same* model with another seed moves its AUC by up to {noise:.3f}: the "
                     "DeLong P values treat each trained model as fixed and do not count this training noise, "
                     "so a difference no larger than it says nothing about the factor.")
    lines += ["", "Against the full model:", ""]
    beyond = []
    for name, r in dl[~dl["factor"].isin(["reference", "training noise"])].iterrows():
        parts = []
        for c in cohorts:
            d = full[f"AUC {c}"] - r[f"AUC {c}"]
            parts.append(f"{c} {_verdict(d, r[f'DeLong P vs full ({c})'], noise)}")
            if noise is not None and abs(d) > noise and r[f"DeLong P vs full ({c})"] < 0.05:
                beyond.append(f"{name} ({c})")
        exp = EXPECTED.get(name)
        lines.append(f"* **{name}** — " + "; ".join(parts) + (f". *Twin's construction: {exp}.*" if exp else "."))
    if nc is not None and len(nc):
        lines.append("")
        for twin_name, g in nc.groupby("twin", sort=False):
            g = g.set_index("variant")
            if len(g) < 2:
                continue
            f, d = g.iloc[0], g.iloc[1]
            gains = [f"{c} {f[f'AUC {c}'] - d[f'AUC {c}']:+.3f} ({_p(d[f'DeLong P vs full ({c})'])})"
                     for c in cohorts if f"AUC {c}" in d and np.isfinite(d[f"AUC {c}"])]
            lines.append(f"* 2.5D minus 2D on the **{twin_name}** twin: " + ", ".join(gains) + ".")
    if cnn_auc is not None and len(cnn_auc) > 1:
        lines += _cnn_lines(cnn_auc, full, cohorts, nc)
    if loadings is not None and len(loadings):
        lines += _loading_lines(loadings)
    if probe is not None and len(probe):
        lines += _probe_lines(probe)
    lines.append("")
    if noise is not None:
        lines.append("Differences larger than the training noise with P < 0.05: "
                     + (", ".join(beyond) if beyond else "none") + ".")
    lines.append("The negative control should show no gain of 2.5D over 2D and the default twin a gain; the "
                 "arterial-only variant should hold and the portal-only one drop. Where the table does not show "
                 "that, the pipeline has not learned the planted signal well enough for the ablation to "
                 "resolve it (see the yardstick, what the network reads and the shortcut in the ablation "
                 "chapter): a model cannot gain from slices or a phase that show a trait it does not read.")
    return "\n".join(lines)


def readout_yardstick(readout: pd.DataFrame, meta: pd.DataFrame, cv=None, seed: int = 0) -> pd.Series:
    """Probabilities of a logistic regression on the cropping stage's trait readout
    (:func:`hcc25d.crop25d.trait_readout`: three measurements made knowing where the twin puts its
    traits) — fitted on the training patients (out-of-fold there, with ``cv``), applied to the others.

    A yardstick, not a model of the method: what a reading of *these images* that knows where to look
    reaches, between the latent reference (which knows the traits exactly) and the learned DL_2.5D.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    R = readout.reindex(meta.index)
    R = R[[c for c in R.columns if R[c].notna().all()]]
    train = (meta["cohort"] == "training").to_numpy()
    y = meta["label"].to_numpy()
    if R.shape[1] == 0:
        return pd.Series(np.nan, index=meta.index)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = cv if cv is not None else StratifiedKFold(5, shuffle=True, random_state=seed)
    oof = cross_val_predict(model, R[train], y[train], cv=cv, method="predict_proba")[:, 1]
    p = model.fit(R[train], y[train]).predict_proba(R)[:, 1]
    p[train] = oof
    return pd.Series(p, index=meta.index)


# --------------------------------------------------------------------------------------------------
# the stage's steps, so that the chapter's cells stay a few lines each
# --------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What every variant shares: the run's config, the cropped bags before the intensity reference,
    the CNN stage's folds and backbone, the radiomics features, the patients and the DL_2.5D family."""

    cfg: object
    raw: object
    full_preds: pd.DataFrame
    radf: pd.DataFrame
    meta: pd.DataFrame
    key: str
    cv: object = None
    cache: object = None
    confounders: Optional[pd.DataFrame] = None
    #: each patient's ROI extent (mm) for the size adjustment (the negative-control twin has the same anatomy)
    size: Optional[pd.Series] = None
    #: the CNN stage's first cross-fitting alone (with ``cnn.repeats`` > 1)
    first_repeat: Optional[pd.DataFrame] = None
    #: the instance predictions of every model this stage scores, by (twin, variant name): filled by
    #: :func:`run_variants` (twin ``default``) and :func:`negative_control` (``negative control``)
    predictions: dict = field(default_factory=dict)
    #: the negative-control twin's instances (before the intensity reference), kept by
    #: :func:`negative_control` for :func:`trait_probe`
    nc_raw: object = None
    #: each patient's centre (for ``signatures.harmonise_centres``)
    centre: Optional[pd.Series] = None

    def fusion_input(self, preds: pd.DataFrame) -> pd.DataFrame:
        """A variant's instance predictions as the fusion reads them: with ``signatures.harmonise_centres``,
        every centre without training patients on the training scores' scale, as in the signatures stage."""
        if not self.cfg.signatures.harmonise_centres or self.centre is None:
            return preds
        from .mil import harmonise_centres

        return harmonise_centres(preds, self.centre)[0]

    @property
    def backbone(self) -> str:
        return str(self.full_preds["backbone"].iloc[0])

    @property
    def fold_of(self) -> dict:
        f = self.full_preds.dropna(subset=["fold"]).drop_duplicates("patient_id")
        return f.set_index("patient_id")["fold"].astype(int).to_dict()

    @property
    def rad_cols(self) -> list:
        return [c for c in self.radf.columns if self.radf[c].notna().any()]

    @property
    def weights(self) -> Optional[np.ndarray]:
        if self.confounders is None:
            return None
        from .cnn import deconfounding_weights

        train = (self.meta["cohort"] == "training").to_numpy()
        return deconfounding_weights(self.meta["label"].to_numpy()[train],
                                     self.confounders.loc[self.meta.index[train]])


def load_context(cfg, paths) -> Context:
    """Read the upstream stages' files for the ablation stage."""
    from .crop25d import load_bags, roi_extent_mm
    from .io import read_json

    patients = pd.read_csv(paths.stage_dir("cohort") / "patients.csv", dtype={"patient_id": str})
    full = pd.read_csv(paths.stage_dir("cnn") / "instance_probs_selected.csv", dtype={"patient_id": str})
    radf = pd.read_csv(paths.stage_dir("radiomics") / "features.csv", dtype={"patient_id": str}).set_index("patient_id")
    key = read_json(paths.stage_dir("signatures") / "stage_provenance.json")["dl25d_model"]
    ids = sorted(set(full["patient_id"]) & set(radf.index))
    P = patients.set_index("patient_id")
    meta = P.loc[ids, ["cohort", "label"]]
    bags = load_bags(paths.stage_dir("crop25d"))
    ctx = Context(cfg, bags, full, radf, meta, key,
                  cache=paths.run_dir / ".cache" / "ablations" if cfg.cnn.resume else None,
                  confounders=P[list(cfg.cnn.deconfound)] if cfg.cnn.deconfound else None,
                  size=roi_extent_mm(bags.index, cfg.crop.spacing_mm),
                  centre=P["centre"] if "centre" in P else None)
    first = paths.stage_dir("cnn") / "instance_probs_selected_first_repeat.csv"
    if first.exists():
        ctx.first_repeat = pd.read_csv(first, dtype={"patient_id": str})
    train = (meta["cohort"] == "training").to_numpy()
    if cfg.signatures.cv == "cnn" and ctx.fold_of:
        ctx.cv = sig.folds_cv(pd.Series(ctx.fold_of).reindex(meta.index[train]))
    return ctx


def patient_mean_auc(preds: pd.DataFrame) -> dict:
    """The CNN's own patient-level AUC per cohort, before any fusion: a patient's score is the mean of its
    instances' probabilities."""
    pat = preds.groupby("patient_id").agg(cohort=("cohort", "first"), label=("label", "first"),
                                          prob=("prob", "mean"))
    return {c: auc_ci(g["label"], g["prob"]).auc for c in in_cohort_order(pat["cohort"])
            if (g := pat[pat["cohort"] == c])["label"].nunique() == 2}


def run_variants(ctx: Context, variants) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Retrain the CNN per variant and score each with DL features alone and with radiomics.

    Returns ``(table, probabilities, patient-mean AUC of each variant's CNN)``."""
    from .cnn import undo_size_adjust

    rows, probs, inst_auc, full = [], {}, [], {}
    reference = full_reference(ctx)
    for v in variants:
        if v.reference is not None and v.reference == ctx.cfg.cnn.intensity_reference:
            continue  # the full model itself
        if v.excess is False and not ctx.cfg.cnn.arterial_excess:
            continue  # the full model itself
        if v.factor == "reference":
            preds = reference
        elif v.size_adjust is False:
            preds = undo_size_adjust(reference)
        else:
            preds = retrain_cnn(ctx.raw, v, ctx.cfg, ctx.fold_of, ctx.backbone, ctx.cache,
                                ctx.cfg.compute.progress, confounders=ctx.confounders, size=ctx.size)
        ctx.predictions[("default", v.name)] = preds
        inst_auc.append({"variant": v.name, **patient_mean_auc(preds)})
        fused = ctx.fusion_input(preds)
        B = mil_features(fused).reindex(ctx.meta.index)
        size_col = sig.SIZE_COL if ctx.cfg.signatures.size_adjust and v.size_adjust is not False else None
        for with_rad in (False, True):
            rc = radiomics_columns(ctx.rad_cols, v.phases) if with_rad else []
            X = B.join(ctx.radf[rc]) if rc else B
            if rc and size_col:
                X = X.join(ctx.size.rename(size_col))
            label = "DL + radiomics" if with_rad else "DL alone"
            row, p = evaluate_variant(v.name, X, ctx.meta, list(B.columns), rc, ctx.key, ctx.cfg, ctx.cv,
                                      None if v.factor == "reference" else full[label],
                                      views=sig.heldout_views(fused, X, list(B.columns)),
                                      sample_weight=ctx.weights, size_col=size_col if rc else None)
            if v.factor == "reference":
                full[label] = p
            rows.append({"factor": v.factor, "features": label, **row})
            probs[f"{v.name} | {label}"] = p
    return pd.DataFrame(rows), pd.DataFrame(probs, index=ctx.meta.index), pd.DataFrame(inst_auc)


def negative_control(ctx: Context, patients: pd.DataFrame, table: pd.DataFrame, progress: bool = True,
                     cnn_auc: Optional[pd.DataFrame] = None):
    """2.5D against 2D on the default twin (from ``table``, and ``cnn_auc`` for the CNN's own patient-mean
    AUC) and on the negative-control twin (retrained here), deep-learning features alone; the columns
    ``CNN AUC <cohort>`` hold the CNN's patient-mean AUC before the fusion."""
    nc_raw = negative_control_bags(patients[patients["patient_id"].isin(ctx.meta.index)], ctx.cfg, progress)
    ctx.nc_raw = nc_raw
    full_v, twod = VARIANTS[0], VARIANTS[1]
    rows, p_full = [], None
    for v in (full_v, twod):
        cache = ctx.cache / "negative-control" if ctx.cache else None
        preds = retrain_cnn(nc_raw, v, ctx.cfg, ctx.fold_of, ctx.backbone, cache, progress,
                            name=f"{ctx.backbone} [negative control, {v.name}]", confounders=ctx.confounders,
                            size=ctx.size)
        ctx.predictions[("negative control", v.name)] = preds
        fused = ctx.fusion_input(preds)
        B = mil_features(fused).reindex(ctx.meta.index)
        row, p = evaluate_variant(v.name, B, ctx.meta, list(B.columns), [], ctx.key, ctx.cfg, ctx.cv, p_full,
                                  views=sig.heldout_views(fused, B, list(B.columns)), sample_weight=ctx.weights)
        p_full = p if v is full_v else p_full
        rows.append({"twin": "negative control (signal on the central slice)", **row,
                     **{f"CNN AUC {c}": a for c, a in patient_mean_auc(preds).items()}})
    base = table[(table["features"] == "DL alone") & table["variant"].isin([full_v.name, twod.name])]
    base = base.drop(columns=["factor", "features"]).assign(twin="default (signal 4-6 mm off the central slice)")
    if cnn_auc is not None:
        c_auc = cnn_auc.set_index("variant")
        for c in c_auc.columns:
            base[f"CNN AUC {c}"] = base["variant"].map(c_auc[c]).to_numpy()
    return pd.concat([base, pd.DataFrame(rows)], ignore_index=True)


def yardstick_table(ctx: Context, readout: pd.DataFrame, dl25d: pd.Series, reference: Optional[dict]) -> pd.DataFrame:
    """Patient-level AUC per cohort of the latent reference, the knowledge-driven reading and DL_2.5D,
    with each one's share of the reference's margin over chance."""
    levels = ctx.meta.assign(reading=readout_yardstick(readout, ctx.meta, ctx.cv, ctx.cfg.seed),
                             dl=dl25d.reindex(ctx.meta.index))
    rows = []
    for c in in_cohort_order(levels["cohort"]):
        g = levels[levels["cohort"] == c]
        r = {"cohort": c, "n": len(g)}
        ref = (reference or {}).get("image", {}).get(c)
        if ref is not None:
            r["latent reference (image only)"] = ref
        r["knowledge-driven reading"] = auc_ci(g["label"], g["reading"]).auc
        r["DL_2.5D"] = auc_ci(g["label"], g["dl"]).auc
        if ref is not None:
            r["reading: share of the reference margin"] = (r["knowledge-driven reading"] - 0.5) / (ref - 0.5)
            r["DL_2.5D: share of the reference margin"] = (r["DL_2.5D"] - 0.5) / (ref - 0.5)
        rows.append(r)
    return pd.DataFrame(rows)


def shortcut_table(ctx: Context, patients: pd.DataFrame, traits: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Per cohort: the AUC of the recorded tumour size and of the diameter, and the rank correlation of
    the CNN's patient score (mean instance probability) with the diameter and the planted traits."""
    score = ctx.full_preds.groupby("patient_id")["prob"].mean()
    P = patients.set_index("patient_id").loc[ctx.meta.index]
    rows = []
    for c in COHORTS:
        g = P[P["cohort"] == c]
        if g["label"].nunique() < 2:
            continue
        r = {"cohort": c}
        if "tumor_size" in g:
            r["AUC of tumour size ≥ 5 cm"] = auc_ci(g["label"], g["tumor_size"]).auc
        if traits is not None:
            t = traits.loc[g.index]
            r["AUC of the diameter"] = auc_ci(g["label"], t["diameter_mm"]).auc
            for col, name in (("diameter_mm", "diameter"), ("pae_amplitude_hu", "peritumoral enhancement"),
                              ("satellite_radius_mm", "satellites"), ("heterogeneity_sd_hu", "heterogeneity")):
                r[f"CNN score ~ {name} (Spearman)"] = score.loc[g.index].corr(t[col], method="spearman")
        rows.append(r)
    return pd.DataFrame(rows)


def raw_patient_scores(preds: pd.DataFrame, pooling: str = "mean") -> pd.DataFrame:
    """A CNN's raw patient score: its instance logits *before* the size adjustment, pooled per patient —
    ``mean``, or ``lse`` (log-mean-exp, as :func:`hcc25d.cnn.pool_logits` pools them for the bag loss) —
    one row per patient (index: patient id as text, in order of appearance) with its ``cohort`` and
    ``label``."""
    from scipy.special import logsumexp

    from .cnn import _logit, undo_size_adjust

    if pooling not in ("mean", "lse"):
        raise ValueError(f"pooling must be 'mean' or 'lse', not {pooling!r}")
    raw = undo_size_adjust(preds)
    pool = "mean" if pooling == "mean" else (lambda z: float(logsumexp(z) - np.log(len(z))))
    return pd.DataFrame({"pid": raw["patient_id"].astype(str).to_numpy(), "cohort": raw["cohort"].to_numpy(),
                         "label": raw["label"].to_numpy(), "score": _logit(raw["prob"])}).groupby(
        "pid", sort=False).agg(cohort=("cohort", "first"), label=("label", "first"), score=("score", pool))


#: what :func:`trait_loadings` regresses a patient score on: the twin's three latent traits (standardised)
#: and what else its images show that varies between patients (from the twin's trait table)
LOADING_TERMS = {**{t: TRAIT_NAMES[t] for t in ("u_pae", "u_satellites", "u_heterogeneity")},
                 "ln_diameter": "ln diameter", "irregular_margin": "irregular margin", "necrosis": "necrosis",
                 "vessel_contact": "vessel contact", "extra_tumours": "more than one tumour"}


#: the ablation models whose trait loadings the chapter shows (variant key → short name)
LOADING_MODELS = {"full": "2.5D (full)", "no-excess": "2.5D, no arterial excess", "2d": "2D"}


def loading_model_names() -> dict:
    """Variant name → short name of the models of :data:`LOADING_MODELS`, for :func:`trait_loadings`."""
    return {v.name: LOADING_MODELS[v.key] for v in VARIANTS if v.key in LOADING_MODELS}


def trait_loadings(predictions: dict, traits: pd.DataFrame) -> pd.DataFrame:
    """What a CNN's patient score reads of the twin, cohort by cohort — a description for the reader, used
    by no prediction.

    ``predictions``: (twin, model) or model name → instance predictions (as
    :func:`hcc25d.cnn.crossfit_predict` returns them);
    ``traits``: the twin's trait table (``data/tab-twin-traits.csv``, indexed by patient). A patient's score
    is its mean instance logit *before* the size adjustment. Within each cohort the score is regressed
    (least squares) on the three latent traits — each standardised over all patients, so a coefficient is
    logit units per SD of the trait — together with what else the twin's images show and vary
    (:data:`LOADING_TERMS`: ln diameter, irregular margin, necrosis, vessel contact, more than one tumour).
    A trait's coefficient is what the score follows of that trait *at equal size and appearance*. A plain
    correlation would also pick a trait up through the outcome, which goes with the size and the margin
    differently in each cohort (the paper's Table 1, copied by the twin), and so differ between cohorts
    even for one and the same network. Returns one row per model, cohort and term: ``twin`` (empty for a
    plain name), ``model``, ``cohort``, ``term`` (the readable name), ``coef``, ``se``, ``n``; a term that
    does not vary within a cohort gets NaN.
    """
    t = traits.copy()
    t.index = t.index.astype(str)
    X = pd.DataFrame(index=t.index)
    for k in ("u_pae", "u_satellites", "u_heterogeneity"):
        X[k] = (t[k] - t[k].mean()) / t[k].std()
    X["ln_diameter"] = np.log(t["diameter_mm"].astype(float))
    for k in ("irregular_margin", "necrosis", "vessel_contact"):
        X[k] = t[k].astype(float)
    X["extra_tumours"] = (t["n_extra_tumours"] > 0).astype(float)
    rows = []
    for name, preds in predictions.items():
        twin, model = name if isinstance(name, tuple) else ("", name)
        pat = raw_patient_scores(preds).join(X, how="inner")
        for c in [c for c in COHORTS if c in set(pat["cohort"])]:
            g = pat[pat["cohort"] == c]
            terms = [k for k in LOADING_TERMS if g[k].std() > 0]
            A = np.c_[np.ones(len(g)), g[terms].to_numpy(float)]
            beta, *_ = np.linalg.lstsq(A, g["score"].to_numpy(float), rcond=None)
            dof = len(g) - A.shape[1]
            s2 = float(np.sum((g["score"].to_numpy(float) - A @ beta) ** 2) / dof) if dof > 0 else np.nan
            se = np.sqrt(np.diag(np.linalg.pinv(A.T @ A)) * s2)
            got = dict(zip(terms, zip(beta[1:], se[1:])))
            for k, label in LOADING_TERMS.items():
                b, e = got.get(k, (np.nan, np.nan))
                rows.append({"twin": twin, "model": model, "cohort": c, "term": label, "coef": float(b),
                             "se": float(e), "n": len(g)})
    return pd.DataFrame(rows)


#: the planted traits :func:`trait_probe` trains the network on, one at a time
PROBE_TRAITS = ("u_pae", "u_satellites", "u_heterogeneity")
#: the probe's row for the network trained on the outcome (the method itself)
PROBE_OUTCOME = "recurrence (the method)"
#: the twins :func:`trait_probe` trains on: the default one, the negative control, and the negative control
#: with the two-point intensity reference
PROBE_TWINS = ("default twin", "negative-control twin", "negative-control twin, two-point reference")
#: the traits the negative-control twin moves onto the central slice (the others are identical there)
NC_TRAITS = ("u_pae", "u_satellites")
#: the traits probed once more on the negative-control twin with the two-point intensity reference (where
#: the run does not use it already): does referencing the tumour too carry them over to the other centre?
TWO_POINT_TRAITS = ("u_pae",)


def probe_table(predictions: dict, traits: pd.DataFrame, pooling: str = "mean") -> pd.DataFrame:
    """:func:`trait_probe`'s table from its models' predictions: ``predictions`` maps what a model was
    trained on (a :data:`LOADING_TERMS` name, or :data:`PROBE_OUTCOME`), or ``(twin, that)``, to its instance
    predictions, whose ``label`` column is the label it was trained on. One row per model and cohort:
    ``twin`` (one of :data:`PROBE_TWINS`; the first for a plain key), ``trained on``,
    ``cohort``, ``n``, the Spearman ρ of the raw patient score (:func:`raw_patient_scores` with ``pooling``)
    with each planted trait (``ρ <trait>``), and ``AUC on its label`` (the score against the label it was
    trained on)."""
    from scipy.stats import spearmanr

    t = traits.copy()
    t.index = t.index.astype(str)
    rows = []
    for key, preds in predictions.items():
        twin, target = key if isinstance(key, tuple) else (PROBE_TWINS[0], key)
        pat = raw_patient_scores(preds, pooling).join(t[list(PROBE_TRAITS)], how="inner")
        for c in [c for c in COHORTS if c in set(pat["cohort"])]:
            g = pat[pat["cohort"] == c]
            row = {"twin": twin, "trained on": target, "cohort": c, "n": len(g)}
            for k in PROBE_TRAITS:
                row[f"ρ {LOADING_TERMS[k]}"] = float(spearmanr(g["score"], g[k])[0]) if len(g) > 2 else np.nan
            ok = g["label"].notna()
            row["AUC on its label"] = (auc_ci(g.loc[ok, "label"].astype(int), g.loc[ok, "score"]).auc
                                       if g.loc[ok, "label"].nunique() == 2 else np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


def _has_tumour_levels(bags) -> bool:
    """Whether the cropping stage measured the tumour's level per phase (``tum_<phase>``), which the
    two-point intensity reference needs (crops of an older run lack it)."""
    return any(str(c).startswith("tum_") for c in bags.index.columns)


def trait_probe(ctx: Context, traits: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """Can the network see a planted trait at all? The full model's network, crops, intensity reference,
    fold split, seed and training settings — but trained, one trait at a time, on the trait itself instead
    of the outcome: a patient's label is whether its latent trait lies above the *training* patients'
    median (a clean label, no outcome noise). One model per trait, trained on all training patients (the
    question is what the network can learn, not a training-cohort estimate) and read on the internal and
    external patients only, without the size adjustment (a correction for the outcome) and without
    deconfounding weights. If a trait is not read even then, the method cannot
    learn it from the far noisier outcome label; if it is, what stops the method is the outcome label (how
    little of the outcome one trait explains, on how few patients), not what the network can see.

    Where :func:`negative_control` has run (``ctx.nc_raw``), the traits that the negative-control twin moves
    onto the central slice (:data:`NC_TRAITS`) are probed there too: the same trait on most of a patient's
    instances instead of one or two. A description of the twin for the reader, used by no prediction. The
    full model as the ablations retrain it (trained on the outcome; ``ctx.predictions``: the mean of its
    fold models on these patients) is the first row when :func:`run_variants` has run. A patient's score is the one the network is trained to give: its
    instance logits pooled as the loss pools them (``cnn.bag_pooling`` for ``cnn.loss: bag``, where one
    instance that shows a trait can carry the patient; the mean for the instance loss). Returns
    :func:`probe_table`.
    """
    t = traits.copy()
    t.index = t.index.astype(str)
    train_ids = [i for i in map(str, ctx.meta.index[ctx.meta["cohort"] == "training"]) if i in t.index]
    settings = {"repeats": 1, "size_adjust": False, "deconfound": ()}
    C = ctx.cfg.cnn.model_copy(update=settings)
    twins = {PROBE_TWINS[0]: ctx.raw, PROBE_TWINS[1]: ctx.nc_raw}
    if C.intensity_reference != "two-point" and ctx.nc_raw is not None and _has_tumour_levels(ctx.nc_raw):
        twins[PROBE_TWINS[2]] = ctx.nc_raw
    models = {}
    full = ctx.predictions.get(("default", VARIANTS[0].name))
    if full is not None:
        models[(PROBE_TWINS[0], PROBE_OUTCOME)] = full
    for k in PROBE_TRAITS:
        label = (t[k] > float(t.loc[train_ids, k].median())).astype(int)
        for tw, raw in twins.items():
            if raw is None or (tw != PROBE_TWINS[0] and k not in NC_TRAITS) or (
                    tw == PROBE_TWINS[2] and k not in TWO_POINT_TRAITS):
                continue
            tag = {PROBE_TWINS[0]: "", PROBE_TWINS[1]: "negative control, ",
                   PROBE_TWINS[2]: "negative control, two-point reference, "}[tw]
            extra = {"intensity_reference": "two-point"} if tw == PROBE_TWINS[2] else {}
            models[(tw, LOADING_TERMS[k])] = retrain_cnn(
                raw, VARIANTS[0], ctx.cfg, ctx.fold_of, ctx.backbone,
                ctx.cache / "trait-probe" if ctx.cache else None, progress,
                name=f"{ctx.backbone} [{tag}trained on {LOADING_TERMS[k]}]",
                labels=label, prediction="insample", settings={**settings, **extra})
    probe = probe_table(models, t, C.bag_pooling if C.loss == "bag" else "mean")
    return probe[probe["cohort"] != "training"].reset_index(drop=True)
