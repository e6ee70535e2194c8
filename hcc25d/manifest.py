"""Own data through a manifest: one CSV row per patient, validated before any work.

Columns
-------
``patient_id``    unique id (pseudonymised by a salted hash when ``data.pseudonymise`` is true)
``centre``        hospital number (integer)
``cohort``        ``train`` (or ``training``), ``internal`` or ``external``
``label``         1 = early recurrence, 0 = none
clinical columns  any of the variables of the cohort specification, coded as in Table 2
                  (second-listed level = 1, ALBI 1/2/3, TBIL in µmol/L); optional
``image_plain``, ``image_arterial``, ``image_portal``, ``mask``
                  paths relative to the manifest's folder: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD, or a
                  folder holding one DICOM series (the largest series is taken if there are several)

Checks (all problems are reported together, each with patient and file): missing columns; missing or
unreadable file; empty mask; a mask that is not binary (``data.mask_label`` picks one label of a
multi-label map); phases and mask on different grids (resampled onto the mask's grid when they overlap
in space, refused when they do not); a missing phase (allowed only for phases not listed in
``data.phases``); duplicate patient ids; a patient in two cohorts; a label other than 0/1; a cohort with
one class only. Input files are only read, never modified.

From DICOM only pixels and geometry are read (no header text reaches results or the book).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .images import _Info, read_image  # noqa: F401 (read_image stays part of this API)

__all__ = ["ManifestError", "PHASE_COLUMNS", "read_image", "validate_manifest", "load_patient",
           "pseudonymise", "COHORT_ALIASES"]

PHASE_COLUMNS = {"plain": "image_plain", "arterial": "image_arterial", "portal": "image_portal"}
REQUIRED = ("patient_id", "centre", "cohort", "label", "mask")
COHORT_ALIASES = {"train": "training", "training": "training", "internal": "internal", "external": "external"}


class ManifestError(ValueError):
    """The manifest or its files are invalid; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "manifest"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


def pseudonymise(patient_id: str, salt: str) -> str:
    """A salted SHA-256 pseudonym: the same id and salt always give the same pseudonym."""
    return "p-" + hashlib.sha256((salt + "|" + str(patient_id)).encode()).hexdigest()[:12]


def _same_grid(a: _Info, b: _Info, tol: float = 1e-3) -> bool:
    return (tuple(a.size) == tuple(b.size) and np.allclose(a.spacing, b.spacing, atol=tol)
            and np.allclose(a.origin, b.origin, atol=tol * 100) and np.allclose(a.direction, b.direction, atol=tol))


def _overlap(a: _Info, b: _Info) -> bool:
    amin, amax = a.bounds()
    bmin, bmax = b.bounds()
    return bool(np.all(np.minimum(amax, bmax) >= np.maximum(amin, bmin)))


def validate_manifest(path: str | Path, phases: Sequence[str] = ("plain", "arterial", "portal"),
                      mask_label: Optional[int] = None, pseudonymise_ids: bool = False, salt: str = "",
                      clinical_variables: Sequence[str] = ()) -> pd.DataFrame:
    """Check a manifest and all its files; return a normalised table (absolute paths, cohort names,
    a ``grid`` column saying per patient whether phases must be resampled onto the mask's grid).

    Raises :class:`ManifestError` listing every problem.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise ManifestError([f"manifest not found: {path}"], str(path))
    try:
        df = pd.read_csv(path, dtype={"patient_id": str})
    except Exception as exc:  # pandas' parser errors
        raise ManifestError([f"not readable as CSV ({exc})"], str(path)) from None
    problems: list[str] = []
    missing_cols = [c for c in REQUIRED if c not in df.columns]
    missing_cols += [PHASE_COLUMNS[p] for p in phases if PHASE_COLUMNS[p] not in df.columns]
    unknown_phase = [p for p in phases if p not in PHASE_COLUMNS]
    if unknown_phase:
        problems.append(f"data.phases: unknown phase(s) {unknown_phase} (known: plain, arterial, portal)")
    if missing_cols:
        problems.append(f"missing column(s): {', '.join(missing_cols)}")
        raise ManifestError(problems, str(path))
    base = path.parent
    # ---- table-level checks
    dup = df["patient_id"][df["patient_id"].duplicated(keep=False)]
    for pid, g in df[df["patient_id"].isin(dup)].groupby("patient_id"):
        cohorts = sorted(set(g["cohort"].astype(str)))
        if len(cohorts) > 1:
            problems.append(f"patient {pid}: in two cohorts ({', '.join(cohorts)}) on rows "
                            f"{', '.join(str(i + 2) for i in g.index)}")
        else:
            problems.append(f"patient {pid}: duplicate patient id on rows {', '.join(str(i + 2) for i in g.index)}")
    for i, r in df.iterrows():
        pid = r["patient_id"]
        if str(r["cohort"]).strip().lower() not in COHORT_ALIASES:
            problems.append(f"patient {pid}: cohort {r['cohort']!r} is not train, internal or external")
        if r["label"] not in (0, 1) or pd.isna(r["label"]):
            problems.append(f"patient {pid}: label {r['label']!r} is not 0 or 1")
        try:
            int(r["centre"])
        except (TypeError, ValueError):
            problems.append(f"patient {pid}: centre {r['centre']!r} is not an integer")
    df["cohort"] = df["cohort"].astype(str).str.strip().str.lower().map(COHORT_ALIASES).fillna(df["cohort"])
    for c, g in df.groupby("cohort"):
        labels = set(pd.to_numeric(g["label"], errors="coerce").dropna().astype(int))
        if labels and len(labels) < 2:
            problems.append(f"cohort {c}: all {len(g)} patients have label {labels.pop()} (one class only)")
    # ---- file-level checks
    grids = []
    for i, r in df.iterrows():
        pid = r["patient_id"]
        grid = "same"
        mask_info = None
        mpath = r.get("mask")
        if pd.isna(mpath) or str(mpath).strip() == "":
            problems.append(f"patient {pid}: no mask given")
        else:
            mfile = (base / str(mpath)).resolve()
            try:
                mask_info = read_image(mfile, header_only=True)
                m = sitk.GetArrayFromImage(read_image(mfile, kind="mask"))
                labels = np.unique(m)
                nonzero = [int(v) for v in labels if v != 0]
                if mask_label is not None:
                    if mask_label not in nonzero:
                        problems.append(f"patient {pid}: mask {mpath} has no voxel with label {mask_label} "
                                        f"(labels present: {nonzero or 'none'})")
                elif not nonzero:
                    problems.append(f"patient {pid}: mask {mpath} is empty")
                elif len(nonzero) > 1:
                    problems.append(f"patient {pid}: mask {mpath} is not binary (labels {nonzero}); "
                                    f"set data.mask_label to the tumour's label")
            except Exception as exc:
                problems.append(f"patient {pid}: mask {mpath} missing or unreadable ({_short(exc)})")
        for ph, col in PHASE_COLUMNS.items():
            val = r.get(col) if col in df.columns else None
            if val is None or pd.isna(val) or str(val).strip() == "":
                if ph in phases:
                    problems.append(f"patient {pid}: phase {ph} missing ({col} is empty); if the study "
                                    f"lacks this phase, leave it out of data.phases")
                continue
            if ph not in phases:
                continue
            f = (base / str(val)).resolve()
            try:
                info = read_image(f, header_only=True)
            except Exception as exc:
                problems.append(f"patient {pid}: {col} {val} missing or unreadable ({_short(exc)})")
                continue
            if mask_info is not None and not _same_grid(info, mask_info):
                if _overlap(info, mask_info):
                    grid = "resample"
                else:
                    problems.append(f"patient {pid}: {col} {val} and mask {mpath} do not overlap in space "
                                    f"(different patients or coordinate systems?)")
        grids.append(grid)
    if problems:
        raise ManifestError(problems, str(path))
    out = pd.DataFrame({"patient_id": df["patient_id"].astype(str), "centre": df["centre"].astype(int),
                        "cohort": df["cohort"], "label": df["label"].astype(int)})
    for v in clinical_variables:
        if v in df.columns:
            out[v] = df[v]
    for ph, col in PHASE_COLUMNS.items():
        out[col] = [str((base / str(p)).resolve()) if ph in phases and pd.notna(p) else ""
                    for p in (df[col] if col in df.columns else [None] * len(df))]
    out["mask"] = [str((base / str(p)).resolve()) for p in df["mask"]]
    out["grid"] = grids
    if pseudonymise_ids:
        out["patient_id"] = [pseudonymise(p, salt) for p in out["patient_id"]]
    return out


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


def load_patient(row: pd.Series, phases: Sequence[str] = ("plain", "arterial", "portal"),
                 mask_label: Optional[int] = None):
    """Read one patient's phases and mask: ``({phase: sitk.Image (HU, float32)}, mask sitk.Image uint8)``.

    Phases on another grid than the mask are resampled onto the mask's grid (linear interpolation).
    The mask becomes binary (``mask_label`` if given, else any non-zero voxel).
    """
    import SimpleITK as sitk

    mask = read_image(row["mask"], kind="mask")
    m = sitk.GetArrayFromImage(mask)
    m = (m == mask_label) if mask_label is not None else (m != 0)
    mb = sitk.GetImageFromArray(m.astype(np.uint8))
    mb.CopyInformation(mask)
    out = {}
    for ph in phases:
        p = row.get(PHASE_COLUMNS[ph], "")
        if not p:
            continue
        img = sitk.Cast(read_image(p), sitk.sitkFloat32)
        if (img.GetSize() != mb.GetSize() or not np.allclose(img.GetSpacing(), mb.GetSpacing())
                or not np.allclose(img.GetOrigin(), mb.GetOrigin(), atol=1e-2)
                or not np.allclose(img.GetDirection(), mb.GetDirection(), atol=1e-4)):
            img = sitk.Resample(img, mb, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
        out[ph] = img
    return out, mb


def read_clinical(path: str | Path, variables: Sequence[str], pseudonymise_ids: bool = False,
                  salt: str = "") -> pd.DataFrame:
    """The clinical part of a manifest (for the cohort chapter): ids, centre, cohort, label and the
    clinical columns present. File checks are left to :func:`validate_manifest`."""
    path = Path(path)
    if not path.exists():
        raise ManifestError([f"manifest not found: {path}"], str(path))
    df = pd.read_csv(path, dtype={"patient_id": str})
    missing = [c for c in ("patient_id", "centre", "cohort", "label") if c not in df.columns]
    if missing:
        raise ManifestError([f"missing column(s): {', '.join(missing)}"], str(path))
    df["cohort"] = df["cohort"].astype(str).str.strip().str.lower().map(COHORT_ALIASES).fillna(df["cohort"])
    if pseudonymise_ids:
        df["patient_id"] = [pseudonymise(p, salt) for p in df["patient_id"].astype(str)]
    return df[["patient_id", "centre", "cohort", "label"] + [v for v in variables if v in df.columns]]


def cases(data_dir: str | Path) -> pd.DataFrame:
    """The validated case table of a run (``results/<run>/data/cases.csv``) with absolute paths."""
    data_dir = Path(data_dir)
    df = pd.read_csv(data_dir / "cases.csv", dtype={"patient_id": str}, keep_default_na=False)
    for col in list(PHASE_COLUMNS.values()) + ["mask"]:
        df[col] = [str(p if (not p or Path(p).is_absolute()) else (data_dir / p)) for p in df[col]]
    return df


def relative_cases(validated: pd.DataFrame, data_dir: str | Path) -> pd.DataFrame:
    """Paths inside ``data_dir`` made relative to it (so the stage folder can be renamed or moved)."""
    data_dir = Path(data_dir).resolve()
    out = validated.copy()
    for col in list(PHASE_COLUMNS.values()) + ["mask"]:
        rel = []
        for p in out[col]:
            try:
                rel.append(str(Path(p).resolve().relative_to(data_dir)) if p else "")
            except ValueError:
                rel.append(p)
        out[col] = rel
    return out
