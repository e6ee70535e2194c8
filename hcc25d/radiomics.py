"""Radiomics features with PyRadiomics (``pyradiomics-bhklab``), per patient and phase, and their
validation against PyRadiomics' own baselines and the IBSI digital phantom.

Feature names: ``<phase>_<imagetype>_<class>_<feature>``, e.g. ``arterial_original_glcm_Contrast``.
Shape features depend only on the mask, so they are computed once per patient (on the first phase
of the study) and named after that phase.
"""
from __future__ import annotations

import ast
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import yaml

__all__ = [
    "IBSI_MAP",
    "load_settings",
    "make_extractor",
    "extract_patient",
    "extract_all",
    "feature_counts",
    "compare_baselines",
    "ibsi_table",
]

logging.getLogger("radiomics").setLevel(logging.ERROR)
try:  # PyRadiomics installs its own stderr handler at INFO; keep only errors
    import radiomics as _pyrad

    _pyrad.setVerbosity(logging.ERROR)
except ImportError:  # pragma: no cover - the CNN stages run without PyRadiomics
    pass

IBSI_MAP = Path(__file__).parent / "data" / "ibsi_pyradiomics.yaml"


def load_settings(path: str | Path) -> dict:
    """Read a PyRadiomics parameter YAML (``setting`` / ``imageType`` / ``featureClass``) and validate it
    with PyRadiomics' own schema (``radiomics/schemas/paramSchema.yaml`` and its functions, through
    pykwalify, as PyRadiomics does), reporting every problem at once."""
    import logging

    import pykwalify.core
    from pykwalify.errors import PyKwalifyException
    from radiomics import getParameterValidationFiles

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"radiomics settings not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    schema, funcs = getParameterValidationFiles()
    log = logging.getLogger("pykwalify")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the errors are reported below, together
    try:
        core = pykwalify.core.Core(source_data=d, schema_files=[schema], extensions=[funcs])
        core.validate(raise_exception=False)
        errors = list(core.validation_errors or [])
    except (PyKwalifyException, ValueError) as exc:  # the schema's own functions raise ValueError
        errors = [str(exc)]
    finally:
        log.setLevel(level)
    if errors:
        raise ValueError(f"{path}: {len(errors)} problem(s) by PyRadiomics' parameter schema:\n  - "
                         + "\n  - ".join(str(e) for e in errors))
    return d


def make_extractor(params: dict, classes: Optional[Sequence[str]] = None):
    from radiomics import featureextractor

    ex = featureextractor.RadiomicsFeatureExtractor(dict(params))
    if classes is not None:
        ex.disableAllFeatures()
        fc = params.get("featureClass") or {}
        for c in classes:
            feats = fc.get(c) or []
            ex.enableFeatureClassByName(c) if not feats else ex.enableFeaturesByName(**{c: feats})
    return ex


def _features(result: dict, prefix: str) -> dict:
    """``<phase>_<feature>``; shape features describe the mask, not a phase: ``shape_<feature>``."""
    return {f"{'shape' if k.split('_')[1].startswith('shape') else prefix}_{k}": float(v)
            for k, v in result.items() if not k.startswith("diagnostics_")}


def extract_patient(row: pd.Series, params: dict, phases: Sequence[str], mask_label: Optional[int] = None,
                    pad_mm: float = 10.0):
    """Features of one patient: ``(features dict, failures list, seconds per phase dict)``.

    The phases are read and put on the mask's grid by :func:`hcc25d.manifest.load_patient`, cut to the
    ROI's bounding box plus ``pad_mm`` (the same helper the 2.5D cropping uses), then PyRadiomics
    resamples and extracts with ``params``.
    """
    import SimpleITK as sitk

    from .crop25d import _roi_region
    from .manifest import load_patient

    pid = str(row["patient_id"])
    feats: dict = {"patient_id": pid}
    failures = []
    secs = {}
    try:
        imgs, mask = load_patient(row, phases, mask_label)
        lo, size = _roi_region(mask, pad_mm)
        mask = sitk.RegionOfInterest(mask, [int(s) for s in size], [int(v) for v in lo])
        imgs = {p: sitk.RegionOfInterest(im, [int(s) for s in size], [int(v) for v in lo]) for p, im in imgs.items()}
    except Exception as exc:
        return feats, [{"patient_id": pid, "phase": "all", "error": f"{type(exc).__name__}: {exc}"}], secs
    classes = list((params.get("featureClass") or {}).keys())
    first = True
    for ph in phases:
        if ph not in imgs:
            continue
        cls = classes if first else [c for c in classes if c != "shape"]
        t = time.perf_counter()
        try:
            res = make_extractor(params, cls).execute(imgs[ph], mask, label=1)
            feats.update(_features(res, ph))
            first = False
        except Exception as exc:  # PyRadiomics raises ValueError for empty / too small ROIs
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append({"patient_id": pid, "phase": ph, "error": f"{type(exc).__name__}: {msg}"})
        secs[ph] = time.perf_counter() - t
    return feats, failures, secs


def _worker(args):
    *rest, threads = args
    if threads:
        import SimpleITK as sitk

        # one process per core: SimpleITK's own threads would only compete with the other workers
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return extract_patient(*rest)


def extract_all(cases: pd.DataFrame, params: dict, phases, mask_label=None, on_error: str = "stop",
                n_jobs: int = 1, backend: str = "loky", progress: bool = True, threads: Optional[int] = None):
    """Extract every patient in parallel. Returns ``(features, failures, timings)`` data frames.

    ``on_error="stop"`` raises (naming each patient and phase) if any extraction failed;
    ``"continue"`` keeps going and returns the failures for the notebook to list.
    """
    from .parallel import map_patients

    if threads is None:
        threads = 1 if n_jobs != 1 else 0
    items = [(row, params, tuple(phases), mask_label, threads) for _, row in cases.iterrows()]
    res = map_patients(_worker, items, n_jobs=n_jobs, backend=backend, desc="radiomics", progress=progress)
    feats = pd.DataFrame([f for f, _, _ in res])
    failures = pd.DataFrame([x for _, fl, _ in res for x in fl], columns=["patient_id", "phase", "error"])
    timings = pd.DataFrame([{"patient_id": f["patient_id"], "phase": p, "seconds": s}
                            for f, _, t in res for p, s in t.items()])
    if len(failures) and on_error == "stop":
        lines = [f"{r.patient_id} / {r.phase}: {r.error}" for r in failures.itertuples()]
        raise RuntimeError(f"radiomics failed for {len(failures)} patient-phase(s) "
                           f"(set radiomics.on_error: continue to go on without them):\n  - " + "\n  - ".join(lines))
    return feats, failures, timings


def feature_counts(columns: Sequence[str]) -> pd.DataFrame:
    """Number of features per phase, image type and class, from ``<phase>_<imagetype>_<class>_<feature>``."""
    rows = []
    for c in columns:
        parts = c.split("_")
        if len(parts) < 4:
            continue
        rows.append({"phase": parts[0], "image type": parts[1], "class": parts[2]})
    return pd.DataFrame(rows).value_counts().rename("features").reset_index().sort_values(["phase", "image type", "class"])


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def _baseline_task(args):
    import SimpleITK as sitk
    from radiomics import featureextractor

    cls, config, column, image_path, mask_path, slice_offset = args
    image = sitk.ReadImage(str(image_path))
    mask = sitk.ReadImage(str(mask_path))
    settings = ast.literal_eval(column["diagnostics_Configuration_Settings"])
    types = ast.literal_eval(column["diagnostics_Configuration_EnabledImageTypes"])
    settings = {k: v for k, v in settings.items() if k not in ("additionalInfo",)}
    ex = featureextractor.RadiomicsFeatureExtractor(**settings)
    ex.disableAllImageTypes()
    for t, kw in types.items():
        ex.enableImageTypeByName(t, customArgs=kw)
    ex.disableAllFeatures()
    ex.enableFeatureClassByName(cls)
    if cls == "shape2D":
        # PyRadiomics' 2D-shape baseline was computed on the single slice of the mask named in its
        # diagnostics (a 512 x 512 x 1 mask), not on the 3D mask
        bb = ast.literal_eval(column["diagnostics_Mask-corrected_BoundingBox"])
        k = bb[2] - slice_offset
        mask = mask[:, :, k:k + 1]
    res = ex.execute(image, mask)
    rows = []
    for feat, val in column.items():
        if str(feat).startswith("diagnostics_") or pd.isna(val):
            continue
        ours = float(res[feat]) if feat in res else np.nan
        base = float(val)
        diff = abs(ours - base) / abs(base) if base != 0 else abs(ours - base)
        rows.append({"class": cls, "configuration": config, "feature": feat, "baseline": base,
                     "ours": ours, "rel_diff": diff})
    return rows


def compare_baselines(baseline_dir: str | Path, image: str | Path, mask: str | Path,
                      rel_tol: float = 0.03, n_jobs: int = 1, slice_offset: int = 0) -> pd.DataFrame:
    """Re-extract PyRadiomics' own baseline values for a case under each baseline's settings.

    Each ``baseline_<class>.csv`` has one column per configuration; its settings and enabled image
    types are in the ``diagnostics_Configuration_Settings`` / ``..._EnabledImageTypes`` rows. Returns
    one row per (configuration, feature) with the baseline, our value and the relative difference;
    ``ok`` applies PyRadiomics' test rule (relative difference below 3 %, absolute where the baseline is 0).
    ``slice_offset``: axial slices cut from the front of the image (a reduced sample), so that a
    baseline's slice index still names the same slice.
    """
    from .parallel import map_patients

    tasks = []
    for f in sorted(Path(baseline_dir).glob("baseline_*.csv")):
        cls = f.stem.replace("baseline_", "")
        b = pd.read_csv(f).set_index("featureName")
        for config in b.columns:
            tasks.append((cls, config, b[config].dropna().to_dict(), str(image), str(mask), slice_offset))
    res = map_patients(_baseline_task, tasks, n_jobs=n_jobs, desc="baselines", progress=False)
    out = pd.DataFrame([r for rows in res for r in rows])
    out["ok"] = out["rel_diff"] < rel_tol
    return out


def ibsi_table(phantom: str | Path, mask: str | Path, reference_csv: str | Path) -> pd.DataFrame:
    """The IBSI digital phantom: PyRadiomics vs the IBSI-1 reference values, feature by feature.

    Columns: family, IBSI feature and tag, reference, tolerance, PyRadiomics feature, ours, difference,
    ``agrees`` (|difference| ≤ tolerance), and the documented reason where PyRadiomics differs or
    has no counterpart.
    """
    import SimpleITK as sitk
    from radiomics import featureextractor

    mp = yaml.safe_load(IBSI_MAP.read_text())
    ref = pd.read_csv(reference_csv, encoding="utf-8-sig", dtype=str)
    ex = featureextractor.RadiomicsFeatureExtractor(binWidth=1, label=1, additionalInfo=False,
                                                    voxelArrayShift=0, minimumROIDimensions=1)
    ex.enableAllFeatures()
    res = ex.execute(sitk.ReadImage(str(phantom)), sitk.ReadImage(str(mask)))
    ours = {k.replace("original_", "", 1): float(v) for k, v in res.items() if not k.startswith("diagnostics")}
    keep_families = ("Morphology", "Statistics", "Intensity histogram", "Co-occurrence matrix (3D, averaged)",
                     "Run length matrix (3D, averaged)", "Size zone matrix (3D)",
                     "Neighbourhood grey tone difference matrix (3D)", "Neighbouring grey level dependence matrix (3D)")
    rows = []
    for r in ref[ref["family"].isin(keep_families)].itertuples(index=False):
        tag = r.tag
        refv = pd.to_numeric(r._4, errors="coerce")
        tol = pd.to_numeric(r.tolerance, errors="coerce")
        if pd.isna(refv):
            continue
        if pd.isna(tol) or tol == 0:
            # no tolerance given: the value is exact to the precision printed (half a unit of its last digit)
            txt = str(r._4).strip().lower()
            mant = txt.split("e")[0]
            dec = len(mant.split(".")[1]) if "." in mant else 0
            exp = int(txt.split("e")[1]) if "e" in txt else 0
            tol = 0.5 * 10.0 ** (exp - dec)
        feat = mp["map"].get(tag)
        val = ours.get(feat, np.nan) if feat else np.nan
        diff = val - refv if feat else np.nan
        agrees = bool(feat) and bool(abs(diff) <= tol + 1e-12)
        reason = mp["reason"].get(tag, "")
        if not feat and not reason:
            reason = "No PyRadiomics counterpart."
        if feat and not agrees and not reason:
            reason = "Unexplained difference."
        rows.append({"family": r.family, "feature": r.feature, "tag": tag, "reference": refv, "tolerance": tol,
                     "pyradiomics": feat or "", "ours": val, "difference": diff, "agrees": agrees,
                     "reason": "" if agrees else reason})
    return pd.DataFrame(rows)
