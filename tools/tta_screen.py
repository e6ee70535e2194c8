"""Does test-time augmentation help the slice-level CNN? Score the same networks with and without it.
``python tools/tta_screen.py --params params/synthetic.yaml results/synthetic/draws/synthetic-seed17.yaml ...``

Test-time augmentation (TTA) scores every instance in the eight poses of the square that the training flips
give it (the identity, three quarter turns, the transpose and its three quarter turns) and averages the
logits. It changes nothing in training, so the comparison is paired on the very same networks: for every
run given, the CNN stage's cross-fitting is replayed from the run's checkpoints (``results/<run>/.cache/cnn``,
written by the CNN stage with ``cnn.resume``; nothing is retrained when they match this code) once as the
stage does it and once with TTA, with the stage's input, folds, fold-scale alignment and size adjustment.

Printed and written (``results/<first run>/draws/tab-tta.csv``), per run and as the mean ± standard error of
TTA minus plain over the runs: the training cohort's out-of-fold instance AUC (the CNN chapter's Table 3,
size-adjusted as the stage's), and per cohort the CNN's own patient score (mean instance logit) AUC.
No result of any run changes.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hcc25d import cnn, config, crop25d  # noqa: E402
from hcc25d.io import RunPaths  # noqa: E402
from hcc25d.stats import auc  # noqa: E402
from tools.oof_diagnostics import patient_scores  # noqa: E402

PLAIN_PREDICT = cnn.predict


def dihedral_poses(x: np.ndarray) -> list:
    """The eight poses of square crops ``x`` (N, C, H, W): quarter turns of ``x`` and of its transpose."""
    t = np.swapaxes(x, 2, 3)
    return [np.ascontiguousarray(np.rot90(a, k, axes=(2, 3))) for a in (x, t) for k in range(4)]


def predict_tta(model, x, batch_size: int = 128, device: str = "cpu", dims: int = 2, amp: bool = False):
    """:func:`hcc25d.cnn.predict` averaged over :func:`dihedral_poses` on the logit scale (2D only)."""
    if dims != 2 or len(x) == 0:
        return PLAIN_PREDICT(model, x, batch_size, device, dims, amp)
    logits = [cnn._logit(PLAIN_PREDICT(model, p, batch_size, device, dims, amp)) for p in dihedral_poses(x)]
    return 1.0 / (1.0 + np.exp(-np.mean(logits, axis=0)))


@contextmanager
def scoring(tta: bool):
    cnn.predict = predict_tta if tta else PLAIN_PREDICT
    try:
        yield
    finally:
        cnn.predict = PLAIN_PREDICT


def stage_predictions(params: str, tta: bool) -> pd.DataFrame:
    """The CNN stage's instance predictions of the run of ``params``, replayed from its checkpoints."""
    cfg = config.load(params, {})
    paths = RunPaths(cfg.run)
    C = cfg.cnn
    cache = paths.run_dir / ".cache" / "cnn"
    if not cache.is_dir():
        raise SystemExit(f"{cache} is missing: run the CNN stage of {cfg.run} first (with cnn.resume)")
    raw = crop25d.load_bags(paths.stage_dir("crop25d"))
    bags, _, _ = cnn.prepare_input(raw, C, cfg.crop.channels)
    patients = pd.read_csv(paths.stage_dir("cohort") / "patients.csv", dtype={"patient_id": str})
    confounders = patients.set_index("patient_id")[list(C.deconfound)] if C.deconfound else None
    size = crop25d.roi_extent_mm(raw.index, cfg.crop.spacing_mm)
    before = {f: f.stat().st_mtime_ns for f in cache.glob("*.pt")}
    with scoring(tta):
        preds, _, _, _ = cnn.train_backbones(bags, C, cfg.cnn_seed(), "cpu", cache, confounders, size=size)
    if {f: f.stat().st_mtime_ns for f in cache.glob("*.pt")} != before:
        raise SystemExit(f"{cfg.run}: a checkpoint did not match this code, and its network was retrained")
    return preds.assign(run=cfg.run)


def summary(preds: pd.DataFrame) -> dict:
    tr = preds[preds["cohort"] == "training"]
    out = {"instance AUC training (out of fold)": auc(tr["label"].to_numpy(), tr["prob"].to_numpy())}
    pat = patient_scores(preds)  # the CNN's own patient score: mean instance logit
    for c, g in pat.groupby("cohort"):
        out[f"CNN patient score {c}"] = auc(g["label"].to_numpy(), g["score"].to_numpy())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", nargs="+", required=True, help="params of finished runs (CNN stage done)")
    a = ap.parse_args(argv)
    rows = []
    for p in a.params:
        for tta in (False, True):
            s = summary(stage_predictions(p, tta))
            rows.append({"run": config.load(p, {}).run, "tta": tta, **s})
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    num = [c for c in table.columns if c not in ("run", "tta")]
    d = table[table["tta"]].set_index("run")[num] - table[~table["tta"]].set_index("run")[num]
    res = pd.DataFrame({"mean": d.mean(), "se": d.std(ddof=1) / np.sqrt(len(d)), "runs": len(d)})
    print("\nTTA minus plain, per run:\n" + d.round(4).to_string())
    print("\nmean ± standard error over the runs:\n" + res.round(4).to_string())
    out = RunPaths(config.load(a.params[0], {}).run).run_dir / "draws"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tab-tta.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
