"""One figure style for the whole book, and saving as PNG + SVG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["set_style", "savefig", "correlation_heatmap", "SYNTHETIC_NOTE"]

SYNTHETIC_NOTE = "synthetic study twin — not patient data"


def set_style() -> None:
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "svg.hashsalt": "hcc25d", "axes.titleweight": "bold"})


def savefig(fig, out_dir: str | Path, topic: str, synthetic: bool = True) -> Path:
    """Save ``fig`` as ``fig-<topic>.png`` and ``.svg`` in ``out_dir`` (atomically) and return the PNG path."""
    from .io import atomic_path

    out_dir = Path(out_dir)
    if synthetic:
        fig.text(0.995, 0.005, SYNTHETIC_NOTE, ha="right", va="bottom", fontsize=7, color="0.45")
    png = out_dir / f"fig-{topic}.png"
    for ext in ("png", "svg"):
        with atomic_path(out_dir / f"fig-{topic}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, metadata={"Date": None} if ext == "svg" else None)
    return png


def correlation_heatmap(df: pd.DataFrame, labels: dict | None = None, title: str = ""):
    """Clustered Spearman-correlation heat map of the columns of ``df``."""
    import seaborn as sns

    corr = df.corr(method="spearman")
    if labels:
        corr = corr.rename(index=labels, columns=labels)
    g = sns.clustermap(corr, cmap="vlag", vmin=-1, vmax=1, figsize=(9, 9), linewidths=0.3,
                       cbar_kws={"label": "Spearman ρ"}, dendrogram_ratio=0.12)
    if title:
        g.fig.suptitle(title, y=1.01)
    return g.fig
