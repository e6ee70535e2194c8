"""One figure style for the whole book, and saving as PNG + SVG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = [
    "SYNTHETIC_NOTE",
    "set_style",
    "describe",
    "savefig",
    "correlation_heatmap",
    "phase_gallery",
    "cube_slices",
    "instance_grid",
    "feature_clustermap",
    "COHORT_TITLES",
    "roc_panels",
    "learning_curves",
    "gradcam_figure",
    "arterial_excess_figure",
    "grid_search_plot",
    "calibration_panels",
    "delong_heatmaps",
    "decision_curves",
    "nomogram_plot",
    "probe_heatmap",
    "ablation_plot",
    "ceiling_plot",
    "ablation_effect_plot",
    "instance_reference_plot",
    "planted_contrast_heatmap",
    "slot_auc_plot",
    "fusion_bins_plot",
    "trait_loadings_plot",
    "trait_probe_plot",
]

SYNTHETIC_NOTE = "synthetic study twin — not patient data"


def set_style() -> None:
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "svg.hashsalt": "hcc25d", "axes.titleweight": "bold"})


def describe(fig) -> str:
    """Alt text for a figure from what it draws: its title, each panel's title and axis labels, the
    series in its legends."""
    parts = []
    sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    if sup:
        parts.append(sup.strip().rstrip("."))
    panels = []
    for ax in fig.axes:
        if not ax.get_visible() or (not ax.has_data() and not ax.get_title()):
            continue
        bits = [ax.get_title().replace("\n", " ").strip()]
        xl, yl = ax.get_xlabel(), ax.get_ylabel()
        if xl or yl:
            bits.append(f"{yl or 'value'} against {xl or 'position'}")
        leg = ax.get_legend()
        if leg is not None:
            names = [t.get_text() for t in leg.get_texts()][:6]
            bits.append("series: " + "; ".join(names))
        bits = [b for b in bits if b]
        if bits:
            panels.append(", ".join(bits))
    if panels:
        parts.append(f"{len(panels)} panel(s): " + " | ".join(panels[:6]))
    return (". ".join(parts) or "Figure") + "."


def savefig(fig, out_dir: str | Path, topic: str, synthetic: bool = True, alt: Optional[str] = None) -> Path:
    """Save ``fig`` as ``fig-<topic>.png`` and ``.svg`` in ``out_dir`` (atomically), show it with its alt
    text (``alt``, else :func:`describe`) and return the PNG path."""
    from .io import atomic_path

    out_dir = Path(out_dir)
    text = alt or describe(fig)
    if synthetic:
        fig.text(0.995, 0.005, SYNTHETIC_NOTE, ha="right", va="bottom", fontsize=7, color="0.45")
        text += " Synthetic twin data."
    png = out_dir / f"fig-{topic}.png"
    for ext in ("png", "svg"):
        with atomic_path(out_dir / f"fig-{topic}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, metadata={"Date": None} if ext == "svg" else None)
    _show(png, text)
    plt.close(fig)
    return png


def _show(png: Path, alt: str = "") -> None:
    """In a notebook, show the saved PNG (what the reader sees is exactly the file in results/); the alt
    text travels in the output's metadata (the book puts it on the image)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover
        return
    if get_ipython() is not None:
        display(Image(filename=str(png)), metadata={"image/png": {"alt": alt}} if alt else None)


def correlation_heatmap(df: pd.DataFrame, labels: dict | None = None, title: str = ""):
    """Clustered Spearman-correlation heat map of the columns of ``df``."""
    import seaborn as sns

    corr = df.corr(method="spearman")
    if labels:
        corr = corr.rename(index=labels, columns=labels)
    # a horizontal colour bar in the free top-left corner, clear of both dendrograms
    g = sns.clustermap(corr, cmap="vlag", vmin=-1, vmax=1, figsize=(9, 9), linewidths=0.3,
                       cbar_kws={"orientation": "horizontal"}, dendrogram_ratio=0.14,
                       cbar_pos=(0.02, 0.93, 0.1, 0.018))
    g.ax_cbar.set_title("Spearman ρ", fontsize=8)
    g.ax_cbar.tick_params(labelsize=7)
    if title:
        g.fig.suptitle(title, y=1.01)
    return g.fig


def phase_gallery(cases_df: pd.DataFrame, load, window=(250.0, 50.0), title: str = ""):
    """One row per patient: the three phases at the tumour's maximal-area axial slice, with the mask
    outline. ``load(row)`` returns ``({phase: sitk.Image}, mask sitk.Image)``."""
    import SimpleITK as sitk

    w, lvl = window
    lo, hi = lvl - w / 2, lvl + w / 2
    phases = ("plain", "arterial", "portal")
    n = len(cases_df)
    fig, axes = plt.subplots(n, 3, figsize=(8.4, 2.8 * n), squeeze=False)
    for i, (_, row) in enumerate(cases_df.iterrows()):
        imgs, mask = load(row)
        m = sitk.GetArrayFromImage(mask)
        k = int(np.argmax(m.reshape(m.shape[0], -1).sum(1)))
        sp = mask.GetSpacing()
        for j, ph in enumerate(phases):
            ax = axes[i, j]
            if ph in imgs:
                a = sitk.GetArrayFromImage(imgs[ph])[k]
                ax.imshow(a, cmap="gray", vmin=lo, vmax=hi, aspect=sp[1] / sp[0], interpolation="nearest")
                ax.contour(m[k], levels=[0.5], colors="#e4572e", linewidths=0.8)
            else:
                ax.text(0.5, 0.5, "phase not in\nthis study", ha="center", va="center", color="0.5",
                        transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(ph)
        outcome = "recurrence" if int(row["label"]) == 1 else "no recurrence"
        axes[i, 0].set_ylabel(f"{row['patient_id']}\ncentre {row['centre']}, {outcome}", fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


def cube_slices(cube: np.ndarray, step: int = 4, channel: int = 0, title: str = ""):
    """Every ``step``-th axial slice of one channel of a 3D crop (window units)."""
    ks = np.arange(0, cube.shape[1], step)
    fig, axes = plt.subplots(1, len(ks), figsize=(1.1 * len(ks), 1.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        ax.imshow(cube[channel, k], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(k), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, y=1.08)
    return fig


def instance_grid(instances: np.ndarray, index: pd.DataFrame, channels=("arterial", "plain", "portal"),
                  title: str = ""):
    """Figure 3: a bag's instances as columns (views × offsets); the first row shows the three phases
    as RGB, the next rows each phase alone."""
    n = len(index)
    labels = [f"{r.view}\n{r.offset:+d}" if r.view == "axial" else f"{r.view}\n{r.offset:+d}"
              for r in index.itertuples()]
    fig, axes = plt.subplots(1 + len(channels), n, figsize=(1.45 * n, 1.55 * (1 + len(channels))), squeeze=False)
    for j in range(n):
        rgb = np.moveaxis(instances[j][:3], 0, -1).astype(np.float32)
        axes[0, j].imshow(np.clip(rgb, 0, 1), interpolation="nearest")
        axes[0, j].set_title(labels[j], fontsize=8)
        for i, ch in enumerate(channels):
            axes[i + 1, j].imshow(instances[j][i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("RGB =\n" + "/".join(str(c).replace(" (copy)", "*")[:4] for c in channels), fontsize=8)
    for i, ch in enumerate(channels):
        axes[i + 1, 0].set_ylabel(ch, fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout(pad=0.3)
    return fig


def feature_clustermap(features: pd.DataFrame, meta: pd.DataFrame, max_features: int = 400):
    """Clustered heat map of features (rows) × patients (columns), z-scored with the training cohort's
    mean and SD, with cohort and outcome colour bars."""
    import seaborn as sns

    X = features.select_dtypes("number")
    X = X.loc[:, X.std() > 0]
    if X.shape[1] > max_features:
        X = X.iloc[:, :max_features]
    train = meta.reindex(X.index)["cohort"] == "training"
    ref = X[train] if train.sum() > 1 else X
    Z = ((X - ref.mean()) / ref.std().replace(0, 1)).clip(-3, 3).fillna(0)
    m = meta.reindex(Z.index)
    cohort_col = m["cohort"].map({"training": "#4c72b0", "internal": "#55a868", "external": "#c44e52"})
    label_col = m["label"].map({0: "#dddddd", 1: "#333333"})
    colors = pd.DataFrame({"cohort": cohort_col, "recurrence": label_col})
    g = sns.clustermap(Z.T, cmap="vlag", vmin=-3, vmax=3, col_colors=colors, figsize=(10, 8),
                       xticklabels=False, yticklabels=False, dendrogram_ratio=0.1,
                       cbar_kws={"label": "z (training mean/SD)"})
    g.ax_heatmap.set_xlabel(f"{Z.shape[0]} patients (bars: cohort blue/green/red = training/internal/external; recurrence black)")
    g.ax_heatmap.set_ylabel(f"{Z.shape[1]} features")
    return g.fig


COHORT_TITLES = {"training": "Training cohort", "internal": "Internal validation", "external": "External validation"}


def roc_panels(result, title: str = "", reference: dict | None = None, which: tuple = ("image", "combined")):
    """One ROC panel per cohort, one curve per model (AUC with its DeLong interval in the legend), drawn
    from :func:`hcc25d.evaluation.roc`.

    ``reference``: the twin's patient-level reference AUCs (:func:`hcc25d.stats.load_reference`), shown
    under each panel's title — ``which`` picks the image-only and/or the clinical + image reference. Only
    for patient-level curves: an instance-level AUC is not comparable with a patient-level reference.
    """
    cohorts = result.cohorts
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.2 * len(cohorts), 4.1), squeeze=False)
    for ax, c in zip(axes[0], cohorts):
        for _, r in result.summary[result.summary["cohort"] == c].iterrows():
            fpr, tpr = result.curves[(r["model"], c)]
            ax.plot(fpr, tpr, lw=1.6, label=f"{r['model']}: {r['auc']:.3f} ({r['low']:.3f}–{r['high']:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=0.8)
        t = COHORT_TITLES.get(c, c)
        if reference:
            names = {"image": "image only", "combined": "clinical + image"}
            parts = [f"{names[k]} {reference[k][c]:.3f}" for k in which if c in reference.get(k, {})]
            if parts:  # one line per reference: the panel titles must not run into each other
                t += "".join(f"\nreference AUC, {p}" for p in parts)
        ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title(t, fontsize=9)
        ax.legend(loc="lower right", fontsize=7, title="AUC (95% CI)", title_fontsize=7)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def learning_curves(logs: pd.DataFrame, title: str = ""):
    """Training loss and learning rate per epoch, one line per fitted model; with an early-stopping split,
    its loss too (faint)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for (model, fit), g in logs.groupby(["model", "fit"], sort=False):
        lbl = f"{model} {fit}"
        axes[0].plot(g["epoch"], g["train_loss"], label=lbl)
        if "val_loss" in g and g["val_loss"].notna().any():
            axes[0].plot(g["epoch"], g["val_loss"], alpha=0.5, ls=":")
        axes[1].plot(g["epoch"], g["lr"], label=lbl)
    axes[0].set(xlabel="epoch", ylabel="loss", title="Training loss (validation dotted, if any)")
    axes[1].set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="Learning-rate schedule")
    axes[0].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def gradcam_figure(panels: list, channels=("arterial", "plain", "portal"), title: str = ""):
    """Grad-CAM overlays: ``panels`` = list of (row label, image (C, H, W) in [0, 1], cam (H, W) in [0, 1])."""
    n = len(panels)
    fig, axes = plt.subplots(n, len(channels) + 1, figsize=(2.2 * (len(channels) + 1), 2.3 * n), squeeze=False)
    for i, (lab, img, cam) in enumerate(panels):
        for j, ch in enumerate(channels):
            axes[i, j].imshow(img[j], cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(cam, cmap="jet", alpha=0.35, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(f"{ch} + Grad-CAM", fontsize=8)
        axes[i, -1].imshow(np.clip(np.moveaxis(img[:3], 0, -1), 0, 1))
        if i == 0:
            axes[i, -1].set_title("RGB (input)", fontsize=8)
        axes[i, 0].set_ylabel(lab, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


def arterial_excess_figure(excess, bags, patient_ids, offsets=(-4, -2, 0, 2, 4), title: str = ""):
    """The arterial excess (:class:`hcc25d.cnn.ArterialExcess`): its table (mean arterial value per
    (plain, portal) cell, fitted on the training cohort) and, for each patient of ``patient_ids``, the arterial
    channel above its excess channel on the axial instances at ``offsets``."""
    ix = bags.index.reset_index(drop=True)
    n = len(patient_ids)
    fig = plt.figure(figsize=(2.9 + 1.55 * len(offsets), 1.6 * 2 * n + 0.4))
    gs = fig.add_gridspec(2 * n, len(offsets) + 2, width_ratios=[2.6, 0.25] + [1.0] * len(offsets))
    ax = fig.add_subplot(gs[:, 0])
    t = np.where(excess.counts_ >= excess.min_count, excess.table_, np.nan)
    im = ax.imshow(t.T, origin="lower", extent=(0, 1, 0, 1), cmap="magma", vmin=0, vmax=1)
    ax.set_xlabel("plain (window units)")
    ax.set_ylabel("portal (window units)")
    ax.set_title("mean arterial value\n(training cohort)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    a_ch = excess.channels.index("arterial")
    for k, pid in enumerate(patient_ids):
        for j, off in enumerate(offsets):
            hit = ix.index[(ix["patient_id"] == pid) & (ix["view"] == "axial") & (ix["offset"] == off)]
            for r, (ch, cmap, lim) in enumerate(((a_ch, "gray", (0, 1)), (-1, "RdBu_r", (0.2, 0.8)))):
                a = fig.add_subplot(gs[2 * k + r, j + 2])
                if len(hit):
                    a.imshow(np.asarray(bags.x[hit[0], ch], np.float32), cmap=cmap, vmin=lim[0], vmax=lim[1])
                a.set_xticks([])
                a.set_yticks([])
                if k == 0 and r == 0:
                    a.set_title(f"axial {off:+d}", fontsize=8)
                if j == 0:
                    lab = ix.loc[ix["patient_id"] == pid, "label"]
                    outcome = ("recurrence" if int(lab.iloc[0]) else "no recurrence") if len(lab) else ""
                    a.set_ylabel(f"{pid}, {outcome}\n{'arterial' if r == 0 else 'excess'}", fontsize=7)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


def grid_search_plot(results: dict):
    """Mean cross-validated AUC (± SD over folds) of every grid point, one panel per model family."""
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.2), sharey=True, squeeze=False)
    for ax, (name, cvr) in zip(axes[0], results.items()):
        mean = np.asarray(cvr["mean_test_score"])
        sd = np.asarray(cvr["std_test_score"])
        k = np.arange(len(mean))
        best = int(np.argmax(mean))
        ax.errorbar(k, mean, yerr=sd, fmt="o", ms=4, capsize=2, color="0.3")
        ax.plot([best], [mean[best]], "o", color="#c44e52", ms=7, label="best")
        ax.set(title=name, xlabel="grid point", xticks=k)
        ax.axhline(0.5, ls="--", c="0.6", lw=0.8)
    axes[0, 0].set_ylabel("cross-validated AUC (training)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Figure 6 (left). Cross-validation results of the grid search", y=1.03)
    fig.tight_layout()
    return fig


def calibration_panels(result):
    """Figure 8A: calibration curves per cohort, one line per signature, with the Hosmer–Lemeshow P value
    in the legend, drawn from :func:`hcc25d.evaluation.calibration`."""
    cohorts = result.cohorts
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.2 * len(cohorts), 4.1), squeeze=False)
    hl = result.hl.set_index(["signature", "cohort"]) if len(result.hl) else None
    for ax, c in zip(axes[0], cohorts):
        for s, g in result.curves[result.curves["cohort"] == c].groupby("signature", sort=False):
            p = hl.loc[(s, c), "p_value"]
            ax.plot(g["predicted"], g["observed"], "o-", ms=3, lw=1.3, label=f"{s} (HL P = {p:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=0.8, label="perfect")
        ax.set(title=COHORT_TITLES.get(c, c), xlabel="predicted probability", ylabel="observed frequency",
               xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def delong_heatmaps(tables: dict):
    """Figure 8B: paired DeLong P values between every pair of signatures, one heat map per cohort, drawn
    from :func:`hcc25d.evaluation.delong_matrix`."""
    import seaborn as sns

    fig, axes = plt.subplots(1, len(tables), figsize=(4.0 * len(tables), 3.6), squeeze=False)
    for ax, (c, P) in zip(axes[0], tables.items()):
        sns.heatmap(P, annot=True, fmt=".3f", cmap="rocket_r", vmin=0, vmax=1, ax=ax, cbar=False,
                    annot_kws={"fontsize": 8})
        ax.set_title(COHORT_TITLES.get(c, c))
    fig.tight_layout()
    return fig


def decision_curves(nb: pd.DataFrame):
    """Figure 8C: net benefit of each signature, treat-all and treat-none, per cohort, drawn from
    :func:`hcc25d.evaluation.decision_curves`."""
    cohorts = list(dict.fromkeys(nb["cohort"]))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.2 * len(cohorts), 4.0), squeeze=False)
    for ax, c in zip(axes[0], cohorts):
        g = nb[nb["cohort"] == c]
        last = None
        for s, h in g.groupby("signature", sort=False):
            ax.plot(h["threshold"], h["model"], lw=1.4, label=s)
            last = h
        if last is not None:
            ax.plot(last["threshold"], last["treat_all"], c="0.5", lw=1, ls="-.", label="treat all")
            ax.axhline(0, c="0.2", lw=0.8, label="treat none")
        prev = float(g["prevalence"].iloc[0])
        ax.set(title=COHORT_TITLES.get(c, c), xlabel="threshold probability", ylabel="net benefit",
               ylim=(-0.1, max(0.05, prev) * 1.1), xlim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def nomogram_plot(nomo, labels: dict | None = None, title: str = ""):
    """Figure 9: a nomogram (:func:`hcc25d.evaluation.nomogram`), points scaled as ``rms::nomogram``."""
    labels = labels or {}
    names = list(nomo.points)
    n_rows = len(names) + 3
    fig, ax = plt.subplots(figsize=(9, 0.7 * n_rows + 0.6))
    y = n_rows

    def axis_row(yv, xs, ticks, label):
        ax.plot([min(xs), max(xs)], [yv, yv], c="k", lw=1)
        last = -np.inf
        for x, t in sorted(zip(xs, ticks)):
            ax.plot([x, x], [yv, yv + 0.12], c="k", lw=1)
            if x - last >= 0.9 * len(t) + 1.5:  # label only ticks with room for their text (no overlap)
                ax.text(x, yv + 0.18, t, ha="center", va="bottom", fontsize=7)
                last = x
        ax.text(-4, yv, label, ha="right", va="center", fontsize=9)

    pts = np.arange(0, 101, 10)
    axis_row(y, pts, [f"{p:g}" for p in pts], "Points")
    for name in names:
        y -= 1
        axis_row(y, nomo.points[name], [f"{v:g}" for v in nomo.axes[name]], labels.get(name, name))
    y -= 1
    axis_row(y, nomo.total_ticks * 100 / nomo.max_total, [f"{t:g}" for t in nomo.total_ticks], "Total points")
    y -= 1
    axis_row(y, nomo.risk_points * 100 / nomo.max_total, [f"{r:g}" for r in nomo.risk_ticks],
             "Risk of early recurrence")
    ax.set_xlim(-40, 108)
    ax.set_ylim(y - 0.6, n_rows + 0.8)
    ax.axis("off")
    ax.text(50, y - 0.55, "Total-points and risk rows are drawn on a 0–100 width: a total of T points sits at T × 100 / "
            f"{nomo.max_total:.0f}.", ha="center", fontsize=7, color="0.4")
    if title:
        ax.set_title(title)
    return fig


def probe_heatmap(probe: pd.DataFrame):
    """AUC of the signal probe: phase sets (rows) × instance slots (columns)."""
    import seaborn as sns

    t = probe.pivot_table(index="phases", columns="slot", values="AUC", sort=False)
    fig, ax = plt.subplots(figsize=(1.0 * t.shape[1] + 2, 0.55 * t.shape[0] + 1.4))
    sns.heatmap(t, annot=True, fmt=".2f", cmap="mako_r", vmin=0.5, vmax=max(0.75, float(np.nanmax(t.values))),
                ax=ax, cbar_kws={"label": "cross-validated AUC (training)"}, annot_kws={"fontsize": 8})
    ax.set(xlabel="instance", ylabel="")
    ax.set_title("Where is the signal? A histogram probe per instance and phase set")
    fig.tight_layout()
    return fig


def ablation_plot(table: pd.DataFrame, cohorts=("training", "internal", "external"), title: str = "",
                  reference: dict | None = None):
    """AUC with its 95 % CI per ablation variant (rows) and cohort (panels); deep-learning features alone
    (circles) and with radiomics (squares). ``table``: the ablation stage's table."""
    variants = list(dict.fromkeys(table["variant"]))
    feats = list(dict.fromkeys(table["features"]))
    cohorts = [c for c in cohorts if f"AUC {c}" in table]
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.0 * len(cohorts), 0.45 * len(variants) + 1.6),
                             sharey=True, squeeze=False)
    markers = ["o", "s", "^", "D"]
    ypos = np.arange(len(variants))[::-1]
    for ax, c in zip(axes[0], cohorts):
        for j, f in enumerate(feats):
            g = table[table["features"] == f].set_index("variant").reindex(variants)
            off = (j - (len(feats) - 1) / 2) * 0.22
            auc = g[f"AUC {c}"].to_numpy(float)
            lo = auc - g[f"CI low {c}"].to_numpy(float)
            hi = g[f"CI high {c}"].to_numpy(float) - auc
            ax.errorbar(auc, ypos + off, xerr=[lo, hi], fmt=markers[j % 4], ms=5, capsize=2, lw=1, label=f)
        ax.axvline(0.5, ls="--", c="0.6", lw=0.8)
        if reference and c in reference.get("image", {}):
            ax.axvline(reference["image"][c], ls=":", c="0.3", lw=1, label="reference (image only)")
        ax.set(title=COHORT_TITLES.get(c, c), xlabel="AUC (95% CI)", xlim=(0.3, 1.0))
    axes[0][0].set_yticks(ypos, variants)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=1.02)
    return fig


def ceiling_plot(table: pd.DataFrame, title: str = ""):
    """Each signature's AUC (95 % CI) per cohort (panels) beside the reference AUC of the same data (a
    diamond; on the twin, the ceiling of any model of them), with the share of the reference's margin over
    chance that the signature recovers written at the right. ``table``: :func:`hcc25d.findings.ceiling_table`;
    without reference AUCs (own data) only the AUCs are drawn."""
    seen = list(pd.unique(table["cohort"]))
    cohorts = [c for c in COHORT_TITLES if c in seen] + [c for c in seen if c not in COHORT_TITLES]
    sigs = list(dict.fromkeys(table["signature"]))
    ypos = np.arange(len(sigs))[::-1]
    height = 0.5 * len(sigs) + 2.1
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.6 * len(cohorts), height), sharey=True, squeeze=False)
    shown = table[[c for c in ("AUC", "CI low") if c in table]].to_numpy(float)
    low = min(0.3, float(np.nanmin(shown)) - 0.03) if np.isfinite(shown).any() else 0.3  # every point drawn
    for ax, c in zip(axes[0], cohorts):
        g = table[table["cohort"] == c].set_index("signature").reindex(sigs)
        auc = g["AUC"].to_numpy(float)
        lo = g.get("CI low", pd.Series(np.nan, index=g.index)).to_numpy(float)
        hi = g.get("CI high", pd.Series(np.nan, index=g.index)).to_numpy(float)
        err = np.nan_to_num(np.vstack([auc - lo, hi - auc]), nan=0.0)
        ax.errorbar(auc, ypos, xerr=err, fmt="o", ms=6, capsize=2, lw=1.2, c="C0", label="AUC (95% CI)")
        ref = g["reference AUC"].to_numpy(float)
        if np.isfinite(ref).any():
            ax.plot(ref, ypos, "D", mfc="none", mec="0.2", ms=7, label="reference AUC of the same data")
            for y, s in zip(ypos, g["margin over chance recovered"].to_numpy(float)):
                if np.isfinite(s):
                    ax.text(1.02, y, f"{100 * s + 0.0:.0f} %".replace("-0 %", "0 %"), va="center", ha="left",
                            fontsize=8, color="0.3", transform=ax.get_yaxis_transform())  # right of the panel
        ax.axvline(0.5, ls="--", c="0.6", lw=0.8)
        ax.set(title=COHORT_TITLES.get(c, c), xlabel="AUC", xlim=(low, 1.02))
    axes[0][0].set_yticks(ypos, sigs)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if "reference AUC of the same data" in labels:
        handles.append(plt.Line2D([], [], ls="none"))
        labels.append("% : share of the reference's margin over chance recovered")
    fig.tight_layout(rect=(0, 0.65 / height, 1, 1))  # the legend above the bottom line, clear of its note
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.2 / height), ncol=len(labels),
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=1.02)
    return fig


def ablation_effect_plot(effects: pd.DataFrame, title: str = ""):
    """Each ablation variant's AUC minus the full model's, one panel per validation cohort: filled where
    DeLong P < 0.05, open otherwise; the grey band is the training noise (the seed replicate's largest
    difference), inside which a difference says nothing about the factor. ``effects``:
    :func:`hcc25d.findings.ablation_effects`."""
    import textwrap

    cohorts = list(dict.fromkeys(effects["cohort"]))
    variants = list(dict.fromkeys(effects["variant"]))
    ypos = np.arange(len(variants))[::-1]
    span = max(0.1, float(np.nanmax(np.abs(effects["difference"].to_numpy(float)))) + 0.03)
    height = 0.5 * len(variants) + 1.9
    fig, axes = plt.subplots(1, len(cohorts), figsize=(3.4 * len(cohorts) + 3.0, height), sharey=True,
                             squeeze=False)
    for ax, c in zip(axes[0], cohorts):
        g = effects[effects["cohort"] == c].set_index("variant").reindex(variants)
        noise = float(g["noise"].dropna().iloc[0]) if g["noise"].notna().any() else np.nan
        if np.isfinite(noise):
            ax.axvspan(-noise, noise, color="0.88", zorder=0, label="training noise (seed replicate)")
        d, p = g["difference"].to_numpy(float), g["P"].to_numpy(float)
        rep = g["seed replicate"].fillna(False).to_numpy(bool)
        sig = (p < 0.05) & ~rep
        ax.plot(d[sig], ypos[sig], "o", c="C3", ms=7, label="P < 0.05 (DeLong)")
        ax.plot(d[~sig & ~rep], ypos[~sig & ~rep], "o", mfc="none", mec="C0", mew=1.4, ms=7,
                label="P ≥ 0.05")
        ax.plot(d[rep], ypos[rep], "s", c="0.4", ms=6, label="the full model retrained")
        ax.axvline(0, c="0.3", lw=0.9)
        ax.set(title=COHORT_TITLES.get(c, c), xlabel="AUC − full model's AUC", xlim=(-span, span))
    wrapped = [v.replace(" (", "\n(", 1) if len(v) > 40 and " (" in v else textwrap.fill(v, 44)
               for v in variants]  # a parenthesis on a line of its own
    axes[0][0].set_yticks(ypos, wrapped, fontsize=8.5)
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.tight_layout(rect=(0, 0.7 / height, 1, 1))  # the legend above the bottom line, clear of its note
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
               bbox_to_anchor=(0.5, 0.2 / height), ncol=min(len(handles), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=1.02)
    return fig


def instance_reference_plot(table: pd.DataFrame, name: str, title: str = ""):
    """The slice-level CNN's instance AUC per cohort (rows) beside its instance-level yardsticks: the
    logistic regression on the instances' intensity histograms (the floor a simple reader sets), the same
    network taught the twin's latent image score instead of the outcome, and the twin's slot reference (the
    traits each instance shows, read exactly: the ceiling); the CNN's training row also before its size
    adjustment. ``table``: the CNN stage's ``tab-instance-reference.csv`` indexed by cohort; ``name``: the
    CNN's column. Yardsticks missing from the table (own data: the twin's two) are left out."""
    from .cnn import LABEL_REFERENCE
    from .twin_imaging import SLOT_REFERENCE

    cohorts = [c for c in COHORT_TITLES if c in table.index]
    ypos = np.arange(len(cohorts))[::-1]
    series = [("histogram reference", "^", "C1", "histogram reference (logistic regression)"),
              (LABEL_REFERENCE, "s", "C2", LABEL_REFERENCE),
              (SLOT_REFERENCE, "D", "0.2", SLOT_REFERENCE),
              (f"{name}, before size adjustment", "o", "C0", f"{name} before the size adjustment"),
              (name, "o", "C0", name)]
    fig, ax = plt.subplots(figsize=(7.6, 0.55 * len(cohorts) + 2.2))
    for col, m, colour, label in series:
        if col not in table:
            continue
        x = table[col].reindex(cohorts).to_numpy(float)
        open_ = col.endswith("before size adjustment")
        ax.plot(x, ypos, m, ms=8 if col == name else 7, c=colour, mfc="none" if open_ or m == "D" else colour,
                mew=1.4, label=label, zorder=3 if col == name else 2)
    ax.axvline(0.5, ls="--", c="0.6", lw=0.8)
    ax.set_yticks(ypos, [COHORT_TITLES[c] + (" (out of fold)" if c == "training" else "") for c in cohorts])
    vals = table.reindex(cohorts)[[c for c, *_ in series if c in table]].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    low = min(0.4, float(vals.min()) - 0.03) if len(vals) else 0.4  # every point on the chart
    high = max(0.9, float(vals.max()) + 0.03) if len(vals) else 0.9
    ax.set(xlabel="instance AUC", xlim=(low, min(high, 1.02)), ylim=(-0.6, len(cohorts) - 0.4))
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.28), ncol=2, fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return fig


def trait_loadings_plot(loadings: pd.DataFrame, terms=("peritumoral enhancement", "satellites", "heterogeneity"),
                        title: str = ""):
    """What a CNN's patient score reads (:func:`hcc25d.ablation.trait_loadings`): each trait's coefficient
    (logit per SD, at equal size and appearance) with its 95 % CI, one panel per twin, one colour per
    cohort, one marker per model."""
    twins = list(dict.fromkeys(loadings["twin"]))
    models = list(dict.fromkeys(loadings["model"]))
    cohorts = [c for c in ("training", "internal", "external") if c in set(loadings["cohort"])]
    fig, axes = plt.subplots(1, len(twins), figsize=(4.6 * len(twins), 1.0 * len(terms) + 1.6), sharey=True,
                             sharex=True, squeeze=False)
    ypos = np.arange(len(terms))[::-1].astype(float)
    series = [(m, c) for m in models for c in cohorts]
    colours = {c: f"C{i}" for i, c in enumerate(cohorts)}
    markers = dict(zip(models, ["o", "s", "^", "D"]))
    for ax, tw in zip(axes[0], twins):
        for j, (m, c) in enumerate(series):
            g = loadings[(loadings["twin"] == tw) & (loadings["model"] == m) & (loadings["cohort"] == c)]
            g = g.set_index("term").reindex(list(terms))
            off = (j - (len(series) - 1) / 2) * 0.7 / max(len(series), 1)
            ax.errorbar(g["coef"], ypos + off, xerr=1.96 * g["se"], fmt=markers[m], ms=4, capsize=1.5, lw=0.9,
                        color=colours[c], mfc=colours[c] if models.index(m) == 0 else "white",
                        label=f"{m} · {c}" if len(models) > 1 else c)
        ax.axvline(0, ls="--", c="0.6", lw=0.8)
        ax.set(title=tw or None, xlabel="score per SD of the trait (logit, 95% CI)")
    axes[0][0].set_yticks(ypos, list(terms))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    rows = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.04 + 0.05 * rows, 1, 1))  # room for the legend's rows
    # the legend above the figure's bottom edge, where savefig writes the synthetic-data note
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.035), ncol=min(len(labels), 3),
               fontsize=8.5, frameon=False)
    if title:
        fig.suptitle(title, y=1.03)
    return fig


def trait_probe_plot(probe: pd.DataFrame, title: str = ""):
    """What the network can see (:func:`hcc25d.ablation.trait_probe`): one heatmap per cohort, rows = what
    the network was trained on, columns = the planted trait its patient score is correlated with
    (Spearman ρ, annotated); the diagonal of the trait rows is how well a clean label teaches each trait."""
    cols = [c for c in probe.columns if c.startswith("ρ ")]
    cohorts = [c for c in ("training", "internal", "external") if c in set(probe["cohort"])]
    twin = probe["twin"] if "twin" in probe else pd.Series("default twin", index=probe.index)
    first = twin.iloc[0]
    probe = probe.assign(row=probe["trained on"].where(twin == first, probe["trained on"] + " (" + twin + ")"))
    rows = list(dict.fromkeys(probe["row"]))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(2.5 * len(cohorts) + 2.4, 0.45 * len(rows) + 2.0),
                             sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cohorts):
        m = probe[probe["cohort"] == c].set_index("row").reindex(rows)[cols].to_numpy(float)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=9.5,
                        color="white" if abs(v) > 0.6 else "black")
        ax.set_xticks(range(len(cols)), [c[2:] for c in cols], fontsize=9, rotation=30, ha="right")
        ax.grid(False)
        ax.set_title(c)
    axes[0][0].set_yticks(range(len(rows)), [r.replace(" (", "\n(") for r in rows], fontsize=9)
    axes[0][0].set_ylabel("network trained on")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="score's Spearman ρ\nwith the trait")
    if title:
        fig.suptitle(title, y=1.04)
    return fig


def planted_contrast_heatmap(pc: pd.DataFrame):
    """The twin's planted contrast per trait (panels), phase (rows) and instance slot (columns), averaged
    over the probed patients (:func:`hcc25d.twin_imaging.planted_contrast`)."""
    import seaborn as sns

    traits = list(dict.fromkeys(pc["trait"]))
    names = {"u_pae": "peritumoral enhancement (peak)", "u_satellites": "satellites (peak)",
             "u_heterogeneity": "heterogeneity (RMS inside the tumour)"}
    order = (pc.drop_duplicates("slot").assign(k=lambda d: d["view"].astype(str).map(
        {"axial": 0, "sagittal": 1, "coronal": 2}) * 100 + d["offset"]).sort_values("k")["slot"].tolist())
    # one trait per row, the slots across: at the book's column width every number stays legible
    fig, axes = plt.subplots(len(traits), 1, figsize=(7.5, 1.25 + 1.55 * len(traits)), squeeze=False)
    for i, (ax, t) in enumerate(zip(axes[:, 0], traits)):
        m = pc[pc["trait"] == t].pivot_table(index="phase", columns="slot", values="contrast", aggfunc="mean")
        m = m.reindex(index=[p for p in ("arterial", "plain", "portal") if p in m.index], columns=order)
        sns.heatmap(m, ax=ax, cmap="mako_r", vmin=0, annot=True, fmt=".2f", annot_kws={"fontsize": 8},
                    cbar_kws={"label": "window units", "pad": 0.02})
        ax.set_title(names.get(t, t), fontsize=10)
        ax.set(xlabel="", ylabel="")
        ax.tick_params(axis="x", labelrotation=0, labelsize=8, labelbottom=i == len(traits) - 1)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
    fig.suptitle("Planted contrast by instance slot and phase (measured on the crops)", fontsize=11)
    fig.tight_layout()
    return fig


def slot_auc_plot(tables: dict, title: str = ""):
    """Instance AUC per slot of the 2.5D stack, one panel per cohort, one series per model: ``tables`` maps
    a model's name to its :func:`hcc25d.evaluation.slot_auc` table (rows cohorts, columns slots)."""
    first = next(iter(tables.values()))
    cohorts, slots = list(first.index), list(first.columns)
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.2 * len(cohorts), 3.6), squeeze=False, sharey=True)
    x = np.arange(len(slots))
    vals = np.concatenate([t.to_numpy(float).ravel() for t in tables.values()])
    vals = vals[np.isfinite(vals)]
    low = min(0.35, float(vals.min()) - 0.05) if len(vals) else 0.35  # every point on the chart
    high = max(0.9, float(vals.max()) + 0.05) if len(vals) else 0.9
    for ax, c in zip(axes[0], cohorts):
        for (name, t), m in zip(tables.items(), "os^D"):
            ax.plot(x, t.reindex(columns=slots).loc[c].to_numpy(float), marker=m, lw=1.0, ms=5, label=name)
        ax.axhline(0.5, ls="--", c="0.6", lw=0.8)
        ax.set_xticks(x, [s.replace("sagittal", "sag.").replace("coronal", "cor.") for s in slots],
                      rotation=60, fontsize=7)
        ax.set_title(COHORT_TITLES.get(c, c), fontsize=9)
        ax.set_ylim(low, min(high, 1.02))
    axes[0][0].set_ylabel("instance AUC")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # the legend goes below the panels, where it hides no point
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=1.02)
    return fig


def fusion_bins_plot(frozen: pd.DataFrame, bins: dict, harmonised: Optional[pd.DataFrame] = None,
                     title: str = ""):
    """Where each cohort's instance probabilities fall among the fusion's bins: one panel per cohort, the
    distribution of the probabilities as the fusion reads them (``frozen`` and, where given and different,
    ``harmonised``: frames of :func:`hcc25d.signatures.fusion_input_probs`), with the likelihood
    histogram's bins (grid), its label threshold (red) and the bag of words' bin edges (dotted) from
    :func:`hcc25d.signatures.fusion_bins`."""
    seen = list(pd.unique(frozen["cohort"]))
    cohorts = [c for c in COHORT_TITLES if c in seen] + [c for c in seen if c not in COHORT_TITLES]
    fig, axes = plt.subplots(1, len(cohorts), figsize=(4.2 * len(cohorts), 3.4), squeeze=False, sharey=True)
    grid = np.linspace(0, 1, 41)
    for ax, c in zip(axes[0], cohorts):
        p = frozen.loc[frozen["cohort"] == c, "prob"].to_numpy(float)
        ax.hist(p, bins=grid, density=True, color="C0", alpha=0.55, label="as the frozen model scores them")
        if harmonised is not None:
            q = harmonised.loc[harmonised["cohort"] == c, "prob"].to_numpy(float)
            if len(q) and not (len(q) == len(p) and np.allclose(q, p)):  # as signatures.bin_occupancy
                ax.hist(q, bins=grid, density=True, histtype="step", color="C2", lw=1.4,
                        label="harmonised (signatures.harmonise_centres)")
        for e in bins.get("hist_edges", []):
            ax.axvline(e, c="0.85", lw=0.6, zorder=0)
        for k, e in enumerate(list(bins.get("bow_edges", []))[1:-1]):
            ax.axvline(e, c="0.35", lw=0.8, ls=":", label="bag-of-words bin edges" if k == 0 else None)
        if "hist_threshold" in bins:
            ax.axvline(bins["hist_threshold"], c="#c0392b", lw=1.4, label="label threshold (fitted on training)")
        ax.set_xlim(0, 1)
        ax.set_title(COHORT_TITLES.get(c, c), fontsize=9)
        ax.set_xlabel("instance probability")
    axes[0][0].set_ylabel("density of instances")
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(len(handles), 3),
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=1.02)
    return fig
