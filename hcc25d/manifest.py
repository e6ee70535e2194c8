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
``vessel_hu_plain``, ``vessel_hu_arterial``, ``vessel_hu_portal``
                  optional: the mean (or median) HU of a region of interest in the aorta on each phase,
                  as read at the workstation; what ``cnn.intensity_reference: vessel`` normalises the
                  arterial enhancement by. A row may leave them empty (that patient is not rescaled).

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

from .images import _Info, read_image, verify_complete  # noqa: F401 (read_image stays part of this API)

__all__ = [
    "PHASE_COLUMNS",
    "VESSEL_COLUMNS",
    "REQUIRED",
    "COHORT_ALIASES",
    "ManifestError",
    "pseudonymise",
    "validate_manifest",
    "DELIMITERS",
    "read_table",
    "table_problems",
    "load_patient",
    "read_clinical",
    "cases",
    "relative_cases",
]

PHASE_COLUMNS = {"plain": "image_plain", "arterial": "image_arterial", "portal": "image_portal"}
#: optional per-phase HU of a vessel ROI (the aorta), for ``cnn.intensity_reference: vessel``
VESSEL_COLUMNS = {"plain": "vessel_hu_plain", "arterial": "vessel_hu_arterial", "portal": "vessel_hu_portal"}
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
                      clinical_variables: Sequence[str] = (), coding: Optional[dict] = None,
                      full: bool = True, progress: bool = False) -> pd.DataFrame:
    """Check a manifest and all its files; return a normalised table (absolute paths, cohort names,
    a ``grid`` column saying per patient whether phases must be resampled onto the mask's grid).

    ``coding`` maps clinical columns to their allowed codes (a list) or ``None`` for a continuous
    variable (a number); :meth:`hcc25d.cohort.CohortSpec.coding` gives it for a cohort specification.
    ``full`` reads every image's pixels (catching truncated or corrupt files that a header read passes);
    ``full=False`` reads only the phases' headers (the masks are always read in full).

    Raises :class:`ManifestError` listing every problem.
    """
    import SimpleITK as sitk

    path = Path(path)
    df = read_table(path)
    problems: list[str] = []
    missing_cols = [c for c in REQUIRED if c not in df.columns]
    missing_cols += [PHASE_COLUMNS[p] for p in phases if PHASE_COLUMNS[p] not in df.columns]
    unknown_phase = [p for p in phases if p not in PHASE_COLUMNS]
    if unknown_phase:
        problems.append(f"data.phases: unknown phase(s) {unknown_phase} (known: plain, arterial, portal)")
    if missing_cols:
        problems.append(f"missing column(s): {', '.join(missing_cols)}" + _columns_hint(df))
        raise ManifestError(problems, str(path))
    base = path.parent
    # ---- table-level checks
    problems += table_problems(df, coding)
    df["cohort"] = df["cohort"].astype(str).str.strip().str.lower().map(COHORT_ALIASES).fillna(df["cohort"])
    # ---- file-level checks
    grids = []
    rows = df.iterrows()
    if progress:
        from tqdm import tqdm
        rows = tqdm(rows, total=len(df), desc="reading images", unit="patient", mininterval=2.0, ncols=90)
    for i, r in rows:
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
                if full:
                    verify_complete(mfile)
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
                problems.append(_file_problem(pid, "mask", mpath, mfile, exc))
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
                if full:
                    read_image(f)  # every voxel
                    verify_complete(f)  # what the readers let pass: a truncated NIfTI, a cut DICOM
            except Exception as exc:
                problems.append(_file_problem(pid, col, val, f, exc))
                continue
            if mask_info is not None and not _same_grid(info, mask_info):
                if _overlap(info, mask_info):
                    grid = "resample"
                else:
                    problems.append(f"patient {pid}: {col} {val} and mask {mpath} do not overlap in space "
                                    f"(different patients or coordinate systems?)")
        grids.append(grid)
    vessel = {}
    for col in VESSEL_COLUMNS.values():
        if col in df.columns:
            text = df[col].astype(str).str.strip()
            num = pd.to_numeric(text.replace({"": np.nan, "nan": np.nan}), errors="coerce")
            vessel[col] = num.to_numpy(float)
            bad = num.isna() & ~text.isin(["", "nan"])
            problems += [f"patient {pid}: {col} {v!r} is not a number (HU; leave it empty if not measured)"
                         for pid, v in zip(df.loc[bad, "patient_id"], df.loc[bad, col])]
    if problems:
        raise ManifestError(problems, str(path))
    out = pd.DataFrame({"patient_id": df["patient_id"].astype(str), "centre": df["centre"].astype(float).astype(int),
                        "cohort": df["cohort"], "label": df["label"].astype(float).astype(int)})
    for v in clinical_variables:
        if v in df.columns:
            out[v] = pd.to_numeric(df[v], errors="coerce")
    for ph, col in PHASE_COLUMNS.items():
        out[col] = [str((base / str(p)).resolve()) if ph in phases and pd.notna(p) else ""
                    for p in (df[col] if col in df.columns else [None] * len(df))]
    out["mask"] = [str((base / str(p)).resolve()) for p in df["mask"]]
    out["grid"] = grids
    for col, num in vessel.items():
        out[col] = num
    if pseudonymise_ids:
        out["patient_id"] = [pseudonymise(p, salt) for p in out["patient_id"]]
    return out


DELIMITERS = (",", ";", "\t", "|")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV. The delimiter is detected from the header line (``,``, ``;``, tab or ``|``:
    spreadsheets in many locales save ``;``); the one used is kept in ``df.attrs["delimiter"]``."""
    path = Path(path)
    if not path.exists():
        raise ManifestError([f"manifest not found: {path}"], str(path))
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = fh.readline()
    except (UnicodeDecodeError, OSError) as exc:
        raise ManifestError([f"not readable as a UTF-8 text file ({_short(exc)}); save it as CSV (UTF-8)"],
                            str(path)) from None
    sep = max(DELIMITERS, key=header.count) if header else ","
    sep = sep if header.count(sep) else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype={"patient_id": str}, encoding="utf-8-sig")
    except Exception as exc:  # pandas' parser errors
        raise ManifestError([f"not readable as a table with delimiter {sep!r} ({_short(exc)})"],
                            str(path)) from None
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["delimiter"] = sep
    return df


def _columns_hint(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    return (f" (the header read as {len(cols)} column(s): {', '.join(map(repr, cols[:8]))}"
            f"{' …' if len(cols) > 8 else ''}; delimiter {df.attrs.get('delimiter', ',')!r})")


def _as_number(v):
    try:
        x = float(str(v).strip())
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def table_problems(df: pd.DataFrame, coding: Optional[dict] = None) -> list[str]:
    """The table-level problems of a manifest (no file is read): duplicate ids, a patient in two
    cohorts, cohort names, labels other than 0/1, non-integer centres, a cohort with one class, and
    clinical values outside their ``coding`` (column -> allowed codes, or ``None`` for a number).
    Empty clinical cells are allowed (missing values); each problem names the patient and column."""
    problems: list[str] = []
    dup = df["patient_id"][df["patient_id"].duplicated(keep=False)]
    for pid, g in df[df["patient_id"].isin(dup)].groupby("patient_id"):
        cohorts = sorted(set(g["cohort"].astype(str)))
        if len(cohorts) > 1:
            problems.append(f"patient {pid}: in two cohorts ({', '.join(cohorts)}) on rows "
                            f"{', '.join(str(i + 2) for i in g.index)}")
        else:
            problems.append(f"patient {pid}: duplicate patient id on rows {', '.join(str(i + 2) for i in g.index)}")
    labels = []
    for i, r in df.iterrows():
        pid = r["patient_id"]
        if str(r["cohort"]).strip().lower() not in COHORT_ALIASES:
            problems.append(f"patient {pid}: cohort {r['cohort']!r} is not train, internal or external")
        lab = _as_number(r["label"])
        labels.append(lab)
        if lab not in (0.0, 1.0):
            problems.append(f"patient {pid}: label {r['label']!r} is not 0 or 1 (code early recurrence as "
                            f"1, none as 0)")
        c = _as_number(r["centre"])
        if c is None or c != int(c):
            problems.append(f"patient {pid}: centre {r['centre']!r} is not an integer")
        for col, codes in (coding or {}).items():
            if col not in df.columns or pd.isna(r[col]) or str(r[col]).strip() == "":
                continue
            x = _as_number(r[col])
            if codes is None:
                if x is None:
                    problems.append(f"patient {pid}: {col} {r[col]!r} is not a number")
            elif x is None or x not in [float(k) for k in codes]:
                problems.append(f"patient {pid}: {col} {r[col]!r} is outside its coding "
                                f"({', '.join(map(str, codes))}; see the cohort specification)")
    cohort = df["cohort"].astype(str).str.strip().str.lower().map(COHORT_ALIASES)
    lab = pd.Series(labels, index=df.index)
    for c in [c for c in ("training", "internal", "external") if (cohort == c).any()]:
        vals = set(lab[(cohort == c) & lab.isin([0.0, 1.0])].astype(int))
        if len(vals) == 1:
            problems.append(f"cohort {c}: all {int((cohort == c).sum())} patients have label {vals.pop()} "
                            f"(one class only)")
    return problems


def _short(exc: Exception) -> str:
    """The informative line of an exception (ITK's first line only names its own source file)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in")] or lines
    return lines[0].replace("sitk::ERROR: ", "")[:200] if lines else type(exc).__name__


def _file_problem(pid, col: str, value, file: Path, exc: Exception) -> str:
    if not Path(file).exists():
        return (f"patient {pid}: {col} {value} not found (paths are relative to the manifest's folder, "
                f"{Path(file).parent.name}/)")
    return f"patient {pid}: {col} {value} unreadable ({_short(exc)}); re-export or replace the file"


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
                  salt: str = "", coding: Optional[dict] = None) -> pd.DataFrame:
    """The clinical part of a manifest (for the cohort chapter): ids, centre, cohort, label and the
    clinical columns present, after the table checks of :func:`table_problems` (labels, cohorts, ids,
    clinical coding). File checks are left to :func:`validate_manifest`."""
    path = Path(path)
    df = read_table(path)
    missing = [c for c in ("patient_id", "centre", "cohort", "label") if c not in df.columns]
    if missing:
        raise ManifestError([f"missing column(s): {', '.join(missing)}" + _columns_hint(df)], str(path))
    problems = table_problems(df, coding)
    if problems:
        raise ManifestError(problems, str(path))
    df["label"] = df["label"].astype(float).astype(int)
    for v in variables:
        if v in df.columns:
            df[v] = pd.to_numeric(df[v], errors="coerce")
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
