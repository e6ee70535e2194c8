"""From a DICOM export to a manifest: ``python -m hcc25d import-dicom ROOT --out manifest.csv``.

Hospitals and public archives deliver folders of DICOM files, not manifests. This module

1. scans every file's header under ``ROOT`` (pixels are not read; non-DICOM files are skipped);
2. groups the files by patient, study and series;
3. assigns each CT series to a phase by editable rules (regular expressions on ``SeriesDescription``;
   :data:`DEFAULT_RULES`, or a YAML file with the same keys): arterial / art, portal / pv / venous,
   plain / non-contrast / pre. A series that matches no rule or several is not used and is listed;
4. finds the tumour segmentation: a DICOM-SEG object that references one of the patient's series (read
   with `highdicom`; the segment is chosen by number or label, by default the one whose label says
   tumour / mass / lesion / HCC), written as a NIfTI mask on the referenced series' grid — or a mask file
   ``<patient id>.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha``) in a mask folder;
5. joins the clinical columns (``centre``, ``cohort``, ``label``, Table 1's variables) from a CSV keyed on
   ``patient_id`` (the DICOM PatientID);
6. writes the manifest, with pseudonymised ids when asked (then the file names use the pseudonyms too).

Each phase points to its series folder when that folder holds this series only; otherwise the series is
written as ``images/<id>_<phase>.nii.gz`` beside the manifest (pixels and geometry only). With
pseudonymisation every series and mask is written there under the pseudonym, so that no path in the
manifest carries the export's folder names (which often name the patient). Patients with a
missing phase, segmentation or clinical row are left out of the manifest and listed, with the reason, on
the terminal and in ``<manifest>.import-report.csv``; nothing is dropped silently. No header text other
than what the manifest needs (the patient id, unless pseudonymised) reaches the files written: series
descriptions appear only in the terminal summary, so that rules can be adjusted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import yaml

__all__ = [
    "DEFAULT_RULES",
    "DicomImportError",
    "load_rules",
    "phase_of",
    "scan",
    "ImportResult",
    "import_dicom",
    "copy_series",
    "example_export",
]

#: Phase-assignment rules: ``phases`` maps a phase to regular expressions matched (case-insensitively)
#: against ``field``; a series matching ``exclude`` is never assigned.
DEFAULT_RULES = {
    "field": "SeriesDescription",
    "phases": {
        "arterial": [r"arterial", r"\bart\b", r"\bap\b", r"\bhap\b"],
        "portal": [r"portal", r"\bpv\b", r"\bpvp\b", r"venous", r"\bven\b"],
        "plain": [r"plain", r"non[- _]?contrast", r"\bpre\b", r"pre[- _]?contrast", r"native",
                  r"unenhanced", r"\bnc\b", r"without contrast", r"w/?o contrast"],
    },
    "exclude": [r"delay", r"equilibrium", r"\beq\b", r"localizer", r"scout", r"topogram", r"dose",
                r"\bmip\b", r"\bmpr\b", r"cor(onal)?\b", r"sag(ittal)?\b"],
    "segment": None,
    "tumour_labels": [r"tumou?r", r"mass", r"lesion", r"\bhcc\b", r"neoplasm", r"carcinoma"],
}

_TAGS = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
         "SeriesDescription", "ProtocolName", "ImageType", "SOPClassUID"]
_SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class DicomImportError(ValueError):
    """The export cannot be imported (no DICOM found, bad rules); the message says why."""


def load_rules(path: Optional[str | Path] = None) -> dict:
    """The default rules, updated by a YAML file's keys (``field``, ``phases``, ``exclude``, ``segment``,
    ``tumour_labels``); every pattern is compiled here so that a bad one fails before any scan."""
    rules = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_RULES.items()}
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DicomImportError(f"rules file {path}: {exc}") from None
        unknown = set(user) - set(DEFAULT_RULES)
        if unknown:
            raise DicomImportError(f"rules file {path}: unknown key(s) {sorted(unknown)} "
                               f"(known: {', '.join(DEFAULT_RULES)})")
        rules.update(user)
    bad = [p for p in rules["phases"] if p not in ("plain", "arterial", "portal")]
    if bad:
        raise DicomImportError(f"rules: unknown phase(s) {bad} (plain, arterial, portal)")
    for pats in list(rules["phases"].values()) + [rules["exclude"], rules["tumour_labels"]]:
        for p in pats:
            try:
                re.compile(p)
            except re.error as exc:
                raise DicomImportError(f"rules: pattern {p!r} is not a regular expression ({exc})") from None
    return rules


def phase_of(text: str, rules: dict = DEFAULT_RULES) -> tuple[Optional[str], str]:
    """``(phase, why)``: the phase a series description matches, or ``None`` with the reason."""
    t = str(text or "").lower()
    if any(re.search(p, t) for p in rules["exclude"]):
        return None, "excluded"
    hits = [ph for ph, pats in rules["phases"].items() if any(re.search(p, t) for p in pats)]
    if len(hits) == 1:
        return hits[0], "rule"
    return None, ("no rule matches" if not hits else f"matches several phases ({', '.join(hits)})")


def scan(root: str | Path, progress: bool = True) -> pd.DataFrame:
    """One row per DICOM file under ``root``: its path and the grouping attributes (headers only)."""
    import pydicom
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise DicomImportError(f"not a folder: {root}")
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    rows = []
    for f in tqdm(files, desc="scanning headers", unit="file", disable=not progress, mininterval=2.0, ncols=90):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception:
            continue  # not DICOM
        if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
            continue
        rows.append({"file": str(f), "patient": str(ds.get("PatientID", "") or ""),
                     "study": str(ds.get("StudyInstanceUID", "")), "series": str(ds.SeriesInstanceUID),
                     "sop": str(ds.SOPInstanceUID), "modality": str(ds.get("Modality", "")),
                     "sop_class": str(ds.get("SOPClassUID", "")),
                     "description": str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or "")})
    if not rows:
        raise DicomImportError(f"no DICOM files found under {root}")
    return pd.DataFrame(rows)


@dataclass
class ImportResult:
    """What :func:`import_dicom` wrote and what it left out."""

    manifest: pd.DataFrame
    report: pd.DataFrame                      # patient_id, status, detail (no header text)
    series: pd.DataFrame                      # per series: patient, phase, why, n files (terminal only)
    written: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.manifest)} patient(s) in the manifest, "
                 f"{int((self.report['status'] != 'ok').sum())} left out"]
        for _, r in self.report[self.report["status"] != "ok"].iterrows():
            lines.append(f"  - patient {r['patient_id']}: {r['detail']}")
        un = self.series[self.series["phase"].isna() & (self.series["modality"] == "CT")]
        if len(un):
            lines.append("CT series not assigned to a phase (adjust the rules with --rules if one should be):")
            for _, r in un.iterrows():
                lines.append(f"  · {r['patient']}: {r['description']!r} ({r['n']} files): {r['why']}")
        return "\n".join(lines)


def _series_folder_is_exclusive(files: Sequence[str], all_files: pd.DataFrame) -> Optional[Path]:
    folders = {str(Path(f).parent) for f in files}
    if len(folders) != 1:
        return None
    folder = folders.pop()
    others = all_files[(all_files["folder"] == folder) & ~all_files["file"].isin(files)]
    return Path(folder) if others.empty else None


def _pick_segment(seg, wanted, rules) -> tuple[Optional[int], str]:
    segs = [(int(d.SegmentNumber), str(d.SegmentLabel)) for d in seg.SegmentSequence]
    if wanted is not None:
        for n, label in segs:
            if str(wanted).isdigit() and n == int(wanted):
                return n, ""
            if str(wanted).lower() == label.lower():
                return n, ""
        return None, f"segment {wanted!r} not in the segmentation (it has {', '.join(l for _, l in segs)})"
    hits = [n for n, label in segs if any(re.search(p, label.lower()) for p in rules["tumour_labels"])]
    if len(hits) == 1:
        return hits[0], ""
    if len(segs) == 1:
        return segs[0][0], ""
    return None, (f"segmentation has segments {', '.join(l for _, l in segs)}: choose one with --segment"
                  if not hits else f"several tumour-like segments ({len(hits)}): choose one with --segment")


def _seg_mask(seg_file: str, segment: int, series_files: Sequence[str]):
    """The segment as a uint8 SimpleITK image on the grid of the referenced series (placed by the
    segmentation's geometry, not by frame order, so a SEG with its own frame layout still lands right)."""
    import highdicom as hd
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(list(series_files))
    r.MetaDataDictionaryArrayUpdateOff()
    ref = r.Execute()
    if ref.GetDimension() == 4:
        ref = ref[:, :, :, 0]
    seg = hd.seg.segread(seg_file)
    vol = seg.get_volume(segment_numbers=[segment], combine_segments=True, relabel=True)
    seg_img = vol.to_simpleitk()
    if seg_img.GetDimension() == 4:
        seg_img = seg_img[:, :, :, 0]
    # the segmentation's own grid, placed by its geometry onto the series' grid (nearest neighbour)
    mask = sitk.Resample(sitk.Cast(seg_img > 0, sitk.sitkUInt8), ref, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return mask, ref


def _sorted_series_files(files: Sequence[str]) -> list[str]:
    """The series' files in the order the image reader stacks them (by position along the normal)."""
    import SimpleITK as sitk

    folder = str(Path(files[0]).parent)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    want = set(map(str, files))
    for sid in ids:
        names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid))
        if set(names) == want:
            return names
    # files spread over folders, or GDCM splits them differently: sort by position ourselves
    import pydicom

    def pos(f):
        ds = pydicom.dcmread(f, stop_before_pixels=True,
                             specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
        o = np.array(ds.ImageOrientationPatient, float)
        return float(np.dot(np.cross(o[:3], o[3:]), np.array(ds.ImagePositionPatient, float)))
    return sorted(map(str, files), key=pos)


def import_dicom(root: str | Path, out: str | Path, rules: Optional[str | Path | dict] = None,
                 clinical: Optional[str | Path] = None, masks: Optional[str | Path] = None,
                 segment: Optional[str | int] = None, phases: Sequence[str] = ("plain", "arterial", "portal"),
                 pseudonymise_ids: bool = False, salt: str = "", progress: bool = True) -> ImportResult:
    """Scan ``root`` and write the manifest ``out`` (see the module docstring)."""
    import SimpleITK as sitk

    from .manifest import PHASE_COLUMNS, pseudonymise, read_table

    rules = rules if isinstance(rules, dict) else load_rules(rules)
    if segment is None:
        segment = rules.get("segment")
    if pseudonymise_ids and not str(salt).strip():
        raise DicomImportError("--pseudonymise needs --salt (a secret string, kept fixed across imports)")
    bad = [p for p in phases if p not in PHASE_COLUMNS]
    if bad:
        raise DicomImportError(f"unknown phase(s) {bad} (plain, arterial, portal)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    files = scan(root, progress)
    files["folder"] = [str(Path(f).parent) for f in files["file"]]
    clin = None
    if clinical is not None:
        clin = read_table(clinical)
        if "patient_id" not in clin.columns:
            raise DicomImportError(f"clinical table {clinical}: no patient_id column (the DICOM PatientID)")
        clin["patient_id"] = clin["patient_id"].astype(str).str.strip()
        clin = clin.drop_duplicates("patient_id", keep=False).set_index("patient_id")
    mask_dir = Path(masks) if masks is not None else None

    # per series
    ser = (files.groupby(["patient", "study", "series"], sort=True)
           .agg(modality=("modality", "first"), sop_class=("sop_class", "first"),
                description=("description", "first"), n=("file", "size")).reset_index())
    assigned = [phase_of(d, rules) if m == "CT" else (None, "not CT")
                for d, m in zip(ser["description"], ser["modality"])]
    ser["phase"] = [a[0] for a in assigned]
    ser["why"] = [a[1] for a in assigned]
    # segmentations: SEG objects and the series each references
    segs = files[files["sop_class"] == _SEG_CLASS]
    seg_ref = {}
    if len(segs):
        import pydicom

        for f in segs["file"]:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            for item in ds.get("ReferencedSeriesSequence", []):
                seg_ref.setdefault(str(item.SeriesInstanceUID), []).append(f)

    rows, report, written = [], [], []
    patients = sorted(set(files["patient"]))
    for pid in patients:
        pid_out = pseudonymise(pid, salt) if pseudonymise_ids else pid
        ps = ser[(ser["patient"] == pid) & ser["phase"].notna()]
        problems = []
        # the study: the one a segmentation references, else the one with most phases
        studies = list(dict.fromkeys(ps["study"]))
        seg_studies = [s for s in studies if any(u in seg_ref for u in ps[ps["study"] == s]["series"])]
        if seg_studies:
            study = seg_studies[0]
        elif studies:
            study = max(studies, key=lambda s: ps[ps["study"] == s]["phase"].nunique())
        else:
            study = None
        chosen = {}
        if study is not None:
            st = ps[ps["study"] == study]
            for ph in phases:
                cand = st[st["phase"] == ph]
                if len(cand):
                    chosen[ph] = cand.sort_values("n", ascending=False).iloc[0]["series"]
        missing = [ph for ph in phases if ph not in chosen]
        if missing:
            problems.append(f"no {' / '.join(missing)} series found by the rules")
        row = {"patient_id": pid_out}
        # segmentation
        mask_path, seg_problem = None, None
        seg_series = [u for u in chosen.values() if u in seg_ref]
        if seg_series:
            seg_file = seg_ref[seg_series[0]][0]
            import highdicom as hd

            number, why = _pick_segment(hd.seg.segread(seg_file), segment, rules)
            if number is None:
                seg_problem = why
            elif not problems:
                sfiles = _sorted_series_files(list(files[files["series"] == seg_series[0]]["file"]))
                try:
                    m, _ = _seg_mask(seg_file, number, sfiles)
                except Exception as exc:  # a SEG that does not match its series
                    seg_problem = f"segmentation unreadable ({str(exc).splitlines()[0][:160]})"
                else:
                    if not sitk.GetArrayViewFromImage(m).any():
                        seg_problem = "the chosen segment is empty"
                    else:
                        mask_path = base / "masks" / f"{pid_out}.nii.gz"
                        mask_path.parent.mkdir(exist_ok=True)
                        sitk.WriteImage(m, str(mask_path), useCompression=True)
                        written.append(str(mask_path))
        elif mask_dir is not None:
            hits = [mask_dir / f"{pid}{s}" for s in _MASK_SUFFIXES if (mask_dir / f"{pid}{s}").exists()]
            if hits and pseudonymise_ids:  # a copy under the pseudonym: no path names the patient
                mask_path = base / "masks" / f"{pid_out}.nii.gz"
                mask_path.parent.mkdir(exist_ok=True)
                sitk.WriteImage(sitk.ReadImage(str(hits[0])), str(mask_path), useCompression=True)
                written.append(str(mask_path))
            elif hits:
                mask_path = hits[0].resolve()
            else:
                seg_problem = ("no DICOM-SEG references its series and the mask folder has no file named "
                               "after its PatientID")
        else:
            seg_problem = "no DICOM-SEG references its series (give a mask folder with --masks)"
        if seg_problem:
            problems.append(seg_problem)
        # clinical
        if clin is not None:
            if pid in clin.index:
                for c, v in clin.loc[pid].items():
                    row[c] = v
            else:
                problems.append("no row in the clinical table (or a duplicated one)")
        if problems:
            report.append({"patient_id": pid_out, "status": "left out", "detail": "; ".join(problems)})
            continue
        # images: the series folder when it holds this series only, else a NIfTI copy
        for ph in ("plain", "arterial", "portal"):
            if ph not in chosen:
                row[PHASE_COLUMNS[ph]] = ""
                continue
            sfiles = list(files[files["series"] == chosen[ph]]["file"])
            folder = None if pseudonymise_ids else _series_folder_is_exclusive(sfiles, files)
            if folder is not None:
                row[PHASE_COLUMNS[ph]] = _rel(folder.resolve(), base)
            else:
                r = sitk.ImageSeriesReader()
                r.SetFileNames(_sorted_series_files(sfiles))
                r.MetaDataDictionaryArrayUpdateOff()
                img = r.Execute()
                dest = base / "images" / f"{pid_out}_{ph}.nii.gz"
                dest.parent.mkdir(exist_ok=True)
                sitk.WriteImage(img, str(dest), useCompression=True)
                written.append(str(dest))
                row[PHASE_COLUMNS[ph]] = _rel(dest, base)
        row["mask"] = _rel(Path(mask_path), base)
        rows.append(row)
        report.append({"patient_id": pid_out, "status": "ok", "detail": ", ".join(sorted(chosen))})
    cols = ["patient_id", "centre", "cohort", "label"]
    manifest = pd.DataFrame(rows)
    if len(manifest):
        front = [c for c in cols if c in manifest.columns]
        tail = [PHASE_COLUMNS[p] for p in ("plain", "arterial", "portal")] + ["mask"]
        manifest = manifest[front + [c for c in manifest.columns if c not in front + tail] + tail]
    manifest.to_csv(out, index=False)
    rep = pd.DataFrame(report, columns=["patient_id", "status", "detail"])
    rep.to_csv(out.with_name(out.stem + ".import-report.csv"), index=False)
    if clin is not None:
        extra = sorted(set(clin.index) - set(patients))
        for p in extra:
            rep.loc[len(rep)] = {"patient_id": pseudonymise(p, salt) if pseudonymise_ids else p,
                                 "status": "left out", "detail": "in the clinical table but not in the export"}
        if extra:
            rep.to_csv(out.with_name(out.stem + ".import-report.csv"), index=False)
    return ImportResult(manifest, rep, ser, written)


def _rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(base))
    except ValueError:
        import os

        return os.path.relpath(Path(p).resolve(), base)


# --------------------------------------------------------------------------------------------------
# a small export arranged from the shipped samples (for the own-data chapter and the tests)
# --------------------------------------------------------------------------------------------------
def copy_series(files: Sequence[str | Path], dest: str | Path, description: str, patient_id: Optional[str] = None,
                keep_uids: bool = False, prefix: str = "") -> None:
    """Write a copy of a DICOM series into ``dest`` with another ``SeriesDescription`` (and PatientID):
    new series and instance identifiers unless ``keep_uids``; pixels and geometry unchanged."""
    import pydicom
    from pydicom.uid import generate_uid

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = description
        if patient_id is not None:
            ds.PatientID = patient_id
        if not keep_uids:
            ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dest / f"{prefix}{Path(f).name}")


def example_export(examples: str | Path, dest: str | Path) -> Path:
    """Arrange the shipped samples (``data/examples``) as a small DICOM export under ``dest``:

    * ``patient_a/study/``: the 3-slice abdominal CT as arterial ("ART 0.6"), portal ("PV 0.6", the
      series the real DICOM-SEG references), non-contrast, delayed and scout series, all in one folder,
      with the DICOM-SEG (a liver segmentation);
    * ``patient_b/series0..2/``: the HCC_048 series as "AP", "PV" and "PRE", one folder each (no
      segmentation: its mask comes from a mask folder).
    """
    examples, dest = Path(examples), Path(dest)
    abd = sorted((examples / "abdomen_ct_3slice").glob("0*.dcm"))
    hcc = sorted((examples / "hcc048_portal_venous_dicom").glob("*.dcm"))
    study = dest / "patient_a" / "study"
    copy_series(abd, study, "PV 0.6", keep_uids=True)
    for i, d in enumerate(["ART 0.6", "NON-CONTRAST 5mm", "DELAYED 3 MIN", "Scout"]):
        copy_series(abd, study, d, prefix=f"s{i}_")
    import shutil

    shutil.copy(examples / "abdomen_ct_3slice" / "liver.dcm", study / "seg.dcm")
    for i, d in enumerate(["AP", "PV", "PRE"]):
        copy_series(hcc, dest / "patient_b" / f"series{i}", d)
    return dest
