"""Check a run before any work: ``python -m hcc25d check --params params/<run>.yaml``.

What is checked, all problems reported together (each naming the patient, the column and what to do):

* the params file: unknown keys, wrong types, values outside their choices or ranges, and combinations
  that cannot work (a manifest run without ``data.manifest``, pseudonymisation without a salt);
* the cohort specification (``cohort.spec``);
* for manifest runs (``data.source: manifest``), the whole manifest: the delimiter (detected), the
  columns, ids, cohorts, labels (0/1), centres, clinical values against the specification's coding, and
  every file — each image and mask is **read in full**, so a truncated ``.nii.gz`` or a cut DICOM series
  is found now and not in the middle of the work; masks must be non-empty (binary, or with
  ``data.mask_label``) and overlap their phases in space.

Input files are only read. ``run`` performs the same check before its first stage; it remembers a passed
check (``results/<run>/.check.json``, keyed on the params, the manifest and the size and modification
time of every file it lists) so that an unchanged manifest is not read twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .io import PROJECT_ROOT

__all__ = [
    "CheckFailed",
    "Report",
    "resolve",
    "check",
    "check_stamp",
]


class CheckFailed(ValueError):
    """The pre-run check found problems; the message lists all of them."""


@dataclass
class Report:
    """The outcome of :func:`check`: ``problems`` (empty when the run can start) and ``notes``."""

    params_file: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = (f"{self.params_file}: ready to run" if self.ok
                else f"{self.params_file}: {len(self.problems)} problem(s), nothing was run")
        lines = [head] + [f"  - {p}" for p in self.problems] + [f"  · {n}" for n in self.notes]
        return "\n".join(lines)


def resolve(path: str | Path) -> Path:
    """A params path as the stages see it: absolute, or relative to the project root."""
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def _problem_lines(exc: Exception) -> list[str]:
    problems = getattr(exc, "problems", None)
    if problems:
        return list(problems)
    lines = [ln.strip() for ln in str(exc).splitlines()]
    items = [ln[2:] for ln in lines if ln.startswith("- ")]
    return items or [lines[0]]


def check(params_file: str | Path, overrides: Optional[dict] = None, full: bool = True,
          progress: bool = True) -> Report:
    """Validate a params file and, for a manifest run, its manifest and every file it lists."""
    from . import config as _config
    from .cohort import CohortSpecError, load_spec
    from .manifest import ManifestError, read_table, validate_manifest

    report = Report(str(params_file))
    try:
        cfg = _config.load(params_file, overrides)
    except _config.ConfigError as exc:
        report.problems += _problem_lines(exc)
        return report
    try:
        spec = load_spec(cfg.cohort.spec if cfg.cohort.spec == "default" else resolve(cfg.cohort.spec),
                         cfg.cohort.training_scale)
    except CohortSpecError as exc:
        report.problems += _problem_lines(exc)
        return report
    from .radiomics import load_settings

    try:
        load_settings(resolve(cfg.radiomics.settings))
    except (ValueError, FileNotFoundError) as exc:
        report.problems += [f"radiomics.settings: {p}" for p in _problem_lines(exc)]
    if cfg.data.source != "manifest" or not cfg.data.manifest:
        if cfg.data.source == "twin":
            report.notes.append("data: the synthetic study twin (no files to read)")
        return report
    path = resolve(cfg.data.manifest)
    try:
        table = read_table(path)
        if table.attrs.get("delimiter", ",") != ",":
            report.notes.append(f"manifest delimiter {table.attrs['delimiter']!r} detected")
        cases = validate_manifest(path, phases=cfg.data.phases, mask_label=cfg.data.mask_label,
                                  clinical_variables=spec.variables, coding=spec.coding(), full=full,
                                  progress=progress)
    except ManifestError as exc:
        report.problems += [f"manifest: {p}" for p in exc.problems]
        return report
    _check_vessel_readings(cfg, cases, report)
    n_img = sum(int(bool(p)) for col in ("image_plain", "image_arterial", "image_portal", "mask")
                for p in cases[col])
    report.notes.append(f"manifest: {len(cases)} patients, {n_img} images and masks read "
                        f"{'in full' if full else '(headers; masks in full)'}; "
                        f"{int((cases['grid'] == 'resample').sum())} patient(s) will be resampled onto "
                        f"the mask's grid")
    return report


def _check_vessel_readings(cfg, cases, report: Report) -> None:
    """``cnn.intensity_reference: vessel`` reads each patient's vessel ROI on the plain and arterial
    phases: a manifest without those columns is a problem now, not at the CNN stage; patients whose
    readings are empty are named in a note (they are shifted, not rescaled)."""
    from .cnn import VESSEL_MIN_ENHANCEMENT_HU
    from .manifest import VESSEL_COLUMNS

    if cfg.cnn.intensity_reference != "vessel":
        return
    need = [VESSEL_COLUMNS["plain"], VESSEL_COLUMNS["arterial"]]
    missing = [c for c in need if c not in cases.columns]
    if missing:
        report.problems.append(f"cnn.intensity_reference: vessel needs the manifest's {' and '.join(missing)} "
                               f"column(s) (the HU of an ROI in the aorta on each phase); add them, or set "
                               f"cnn.intensity_reference: parenchyma")
        return
    enh = cases[need[1]] - cases[need[0]]
    unread = cases.loc[~(enh >= VESSEL_MIN_ENHANCEMENT_HU), "patient_id"].astype(str).tolist()
    if unread:
        report.notes.append(f"cnn.intensity_reference: vessel: {len(unread)} patient(s) without a vessel reading "
                            f"or with an arterial enhancement below {VESSEL_MIN_ENHANCEMENT_HU:g} HU are shifted, "
                            f"not rescaled: {', '.join(unread[:10])}{' …' if len(unread) > 10 else ''}")
    if not (enh[cases["cohort"] == "training"] >= VESSEL_MIN_ENHANCEMENT_HU).any():
        report.problems.append("cnn.intensity_reference: vessel: no training patient has a vessel reading "
                               "to scale to")


def _file_state(p: Path) -> list:
    if p.is_dir():
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.rglob("*")) if f.is_file()]
    if p.exists():
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns]]
    return [[str(p), None, None]]


def check_stamp(params_file: str | Path) -> Optional[str]:
    """A digest of what :func:`check` reads for a manifest run (params, manifest bytes, the size and
    modification time of each listed file); ``None`` for a twin run or an unreadable manifest."""
    from . import config as _config
    from .manifest import ManifestError, PHASE_COLUMNS, read_table

    cfg = _config.load(params_file)
    if cfg.data.source != "manifest" or not cfg.data.manifest:
        return None
    path = resolve(cfg.data.manifest)
    try:
        table = read_table(path)
    except ManifestError:
        return None
    state = {"params": _config.to_dict(cfg), "manifest": hashlib.sha256(path.read_bytes()).hexdigest(),
             "files": []}
    for col in list(PHASE_COLUMNS.values()) + ["mask"]:
        if col in table.columns:
            for v in table[col].dropna().astype(str):
                if v.strip():
                    state["files"] += _file_state((path.parent / v).resolve())
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
