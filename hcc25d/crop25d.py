"""2.5D cropping: resampling and windowing, the maximal-ROI slice with its neighbours, three views,
three phases as channels — and the 3D crops of the 3D baseline.

What 2.5D means here
--------------------
For each patient (one *bag*), the axial slice with the largest tumour area is found on the resampled
grid. Around it the *instances* are cut:

* the axial slices at offsets ``axial_offsets`` (default 0, ±1, ±2, ±4 slices of the resampled grid, i.e.
  millimetres at 1 mm spacing): 7 instances;
* the sagittal and coronal slices with the largest tumour area (``sagittal_offsets`` /
  ``coronal_offsets``, default ``[0]`` each): 2 instances.

The default bag therefore holds **9** distinct 2D regions. The paper speaks of "10 distinct 2D regions"
while listing exactly these 7 + 2; its count is reachable by parameters, e.g. ``sagittal_offsets: [0, 2]``
(any offsets whose total count is 10).

Each instance is a square crop around the ROI's bounding box plus ``margin_mm`` of context (``scale: roi``,
the paper's way) or a square of ``fov_mm`` centred on that box (``scale: fixed``: one pixel size for every
patient), resampled to ``image_size`` × ``image_size`` pixels, with the phases as channels in the paper's order (arterial,
plain, portal). With ``box: central`` (default) all axial instances share one box — the union of the
ROI's boxes over those slices — so the neighbours are aligned and on one scale; ``box: slice`` uses each
slice's own ROI box (the central box where a slice has no ROI).

Edge cases
----------
* ROI at the volume border: the crop reaches outside the volume and is padded with the window's floor
  (0 after windowing); values never wrap.
* ROI thinner than the largest offset: ``thin_roi: keep`` (default) keeps the slice at that offset (its
  peritumoral context is still informative); ``clamp`` moves it to the last slice that contains ROI.
* several tumour components: ``components: largest`` (default) keeps the largest connected component;
  ``each`` makes every component (≥ ``min_component_voxels``) its own bag ``<patient>#<k>``.
* ties in maximal area: the tied slice nearest the ROI's centre of mass wins, then the lowest index.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from .config import CropCfg

__all__ = [
    "VIEWS",
    "window",
    "resample_and_window",
    "channel_summary",
    "max_area_index",
    "select_instances",
    "extract_square",
    "crop_arrays",
    "parenchyma_reference",
    "tumour_reference",
    "vessel_levels",
    "reference_levels",
    "trait_readout",
    "crop_patient",
    "crop_all",
    "Bags",
    "roi_extent_mm",
    "load_bags",
    "signal_probe",
    "histogram_reference",
]

VIEWS = ("axial", "sagittal", "coronal")


#: the cropping parameters (the ``crop`` section of a params file)


def window(hu: np.ndarray, width: float = 250.0, level: float = 50.0) -> np.ndarray:
    """Map HU to [0, 1]: ``level - width/2`` → 0, ``level + width/2`` → 1, clipped."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - lo) / float(width), 0.0, 1.0)


def _roi_region(mask, pad_mm: float):
    """Index region (start, size) of the mask's bounding box padded by ``pad_mm``, clipped to the image."""
    import SimpleITK as sitk

    f = sitk.LabelShapeStatisticsImageFilter()
    f.Execute(mask)
    if not f.GetLabels():
        raise ValueError("empty mask")
    bb = np.array(f.GetBoundingBox(1))  # x, y, z start, then sizes
    start, size = bb[:3], bb[3:]
    sp = np.array(mask.GetSpacing())
    pad = np.ceil(pad_mm / sp).astype(int)
    lo = np.maximum(start - pad, 0)
    hi = np.minimum(start + size + pad, np.array(mask.GetSize()))
    return lo, hi - lo


def resample_and_window(imgs: dict, mask, prm: CropCfg, pad_mm: Optional[float] = None):
    """Resample phases and mask to ``prm.spacing_mm`` on the mask's grid (around the ROI), then window.

    Returns ``(volume (C, Z, Y, X) float32 in [0, 1], mask (Z, Y, X) uint8, channel names, geometry)``
    where ``geometry`` holds the resampled grid's ``origin``, ``spacing`` and ``direction``.
    Images use linear or B-spline interpolation; the mask uses nearest neighbour (label-safe).
    """
    import SimpleITK as sitk

    m = sitk.Cast(mask != 0, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    if pad_mm is None:
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(m)
        if not stats.GetLabels():
            raise ValueError("empty mask")
        ext = np.array(stats.GetBoundingBox(1)[3:]) * np.array(m.GetSpacing())
        max_off = max([abs(o) for o in prm.axial_offsets + prm.sagittal_offsets + prm.coronal_offsets] or [0])
        pad_mm = max(ext.max() / 2 + prm.margin_mm + max_off * max(prm.spacing_mm) + 4.0, prm.cube_mm / 2 + 4.0,
                     prm.fov_mm / 2 + max_off * max(prm.spacing_mm) + 4.0 if prm.scale == "fixed" else 0.0)
    lo, size = _roi_region(m, pad_mm)
    roi_m = sitk.RegionOfInterest(m, [int(s) for s in size], [int(v) for v in lo])
    new_sp = np.array(prm.spacing_mm, float)
    old_sp = np.array(roi_m.GetSpacing())
    new_size = [max(1, int(round(n * o / s))) for n, o, s in zip(roi_m.GetSize(), old_sp, new_sp)]
    # the new grid starts half a voxel in from the old region's edge so both cover the same extent
    D = np.array(roi_m.GetDirection()).reshape(3, 3)
    origin = np.array(roi_m.GetOrigin()) + D @ ((new_sp - old_sp) / 2.0)
    ref = sitk.Image(new_size, sitk.sitkUInt8)
    ref.SetSpacing(tuple(new_sp))
    ref.SetOrigin(tuple(origin))
    ref.SetDirection(roi_m.GetDirection())
    mask_r = sitk.Resample(roi_m, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    interp = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}[prm.interpolation]
    floor_hu = prm.window_level - prm.window_width / 2.0
    chans = []
    names = []
    available = [c for c in prm.channels if c in imgs]
    if not available:
        raise ValueError(f"none of the channel phases {prm.channels} is available")
    for ch in prm.channels:
        src = imgs.get(ch, imgs[available[0]])
        roi_i = sitk.RegionOfInterest(src, [int(s) for s in size], [int(v) for v in lo])
        r = sitk.Resample(roi_i, ref, sitk.Transform(), interp, float(floor_hu), sitk.sitkFloat32)
        chans.append(window(sitk.GetArrayViewFromImage(r), prm.window_width, prm.window_level))
        names.append(ch if ch in imgs else f"{available[0]} (copy)")
    geometry = {"origin": mask_r.GetOrigin(), "spacing": mask_r.GetSpacing(), "direction": mask_r.GetDirection()}
    return np.stack(chans), sitk.GetArrayFromImage(mask_r), names, geometry


def channel_summary(names) -> str:
    """What the channels hold, in words: ``arterial, plain, portal`` for a three-phase study, or e.g.
    ``portal × 3`` when one phase was copied into every channel (never a phase the study does not have)."""
    phases = [str(n).replace(" (copy)", "") for n in names]
    counts = {p: phases.count(p) for p in dict.fromkeys(phases)}
    return ", ".join(p if k == 1 else f"{p} × {k}" for p, k in counts.items())


def max_area_index(areas: np.ndarray) -> int:
    """Index of the largest area; ties → nearest the area-weighted centre, then the lowest index."""
    areas = np.asarray(areas, float)
    best = areas.max()
    if best <= 0:
        raise ValueError("empty ROI")
    tied = np.flatnonzero(areas == best)
    if len(tied) == 1:
        return int(tied[0])
    com = float((np.arange(len(areas)) * areas).sum() / areas.sum())
    return int(tied[np.lexsort((tied, np.abs(tied - com)))[0]])


def _bbox2d(m2: np.ndarray):
    rows = np.flatnonzero(m2.any(axis=1))
    cols = np.flatnonzero(m2.any(axis=0))
    if len(rows) == 0:
        return None
    return (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))


def _plane(arr: np.ndarray, view: str, idx: int) -> np.ndarray:
    """2D plane of a (..., Z, Y, X) array: axial → (Y, X); sagittal → (Z, Y); coronal → (Z, X)."""
    if view == "axial":
        return arr[..., idx, :, :]
    if view == "sagittal":
        return arr[..., :, :, idx]
    return arr[..., :, idx, :]


def _union(boxes):
    boxes = [b for b in boxes if b is not None]
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


def select_instances(m: np.ndarray, prm: CropCfg) -> list[dict]:
    """The instances of one ROI (a binary (Z, Y, X) array): view, offset, slice index and crop box."""
    out = []
    axis_sum = {"axial": (1, 2), "sagittal": (0, 1), "coronal": (0, 2)}
    axis_len = {"axial": m.shape[0], "sagittal": m.shape[2], "coronal": m.shape[1]}
    for view, offsets in (("axial", prm.axial_offsets), ("sagittal", prm.sagittal_offsets),
                          ("coronal", prm.coronal_offsets)):
        if not offsets:
            continue
        areas = m.sum(axis=axis_sum[view])
        centre = max_area_index(areas)
        present = np.flatnonzero(areas > 0)
        first, last = int(present[0]), int(present[-1])
        idxs = []
        for off in offsets:
            k = centre + int(off)
            if prm.thin_roi == "clamp":
                k = min(max(k, first), last)
            idxs.append(k)
        central_box = _bbox2d(_plane(m, view, centre))
        boxes = [(_bbox2d(_plane(m, view, k)) if 0 <= k < axis_len[view] else None) for k in idxs]
        if prm.box == "central":
            shared = _union([central_box] + boxes)
            boxes = [shared] * len(idxs)
        else:
            boxes = [b if b is not None else central_box for b in boxes]
        for off, k, b in zip(offsets, idxs, boxes):
            out.append({"view": view, "offset": int(off), "slice_index": int(k), "centre_index": int(centre),
                        "r0": b[0], "r1": b[1], "c0": b[2], "c1": b[3]})
    return out


def extract_square(plane: np.ndarray, box, margin_px: float, size: int, side_px: Optional[float] = None) -> np.ndarray:
    """Square crop of a (C, R, Cc) plane around ``box`` = (r0, r1, c0, c1) (inclusive) plus
    ``margin_px`` on each side — or, with ``side_px``, a square of that side centred on the box —
    sampled bilinearly to ``size`` × ``size``; outside → 0 (never wraps)."""
    r0, r1, c0, c1 = box
    side = max(r1 - r0 + 1, c1 - c0 + 1) + 2.0 * margin_px if side_px is None else float(side_px)
    rc, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    t = (np.arange(size) + 0.5) * side / size - side / 2.0
    rr, cc_ = np.meshgrid(rc + t, cc + t, indexing="ij")
    out = np.empty((plane.shape[0], size, size), np.float32)
    for ch in range(plane.shape[0]):
        out[ch] = ndimage.map_coordinates(plane[ch], [rr, cc_], order=1, mode="constant", cval=0.0, prefilter=False)
    return out


def _cube(vol: np.ndarray, m: np.ndarray, spacing, prm: CropCfg) -> np.ndarray:
    com = np.array(ndimage.center_of_mass(m))
    n = prm.cube_size
    t = (np.arange(n) + 0.5) * prm.cube_mm / n - prm.cube_mm / 2.0
    sp = np.array(spacing)[::-1]  # z, y, x
    zz, yy, xx = np.meshgrid(com[0] + t / sp[0], com[1] + t / sp[1], com[2] + t / sp[2], indexing="ij")
    return np.stack([ndimage.map_coordinates(vol[c], [zz, yy, xx], order=1, mode="constant", cval=0.0,
                                             prefilter=False) for c in range(vol.shape[0])]).astype(np.float32)


def _components(m: np.ndarray, prm: CropCfg) -> list[np.ndarray]:
    lab, n = ndimage.label(m)
    if n <= 1:
        return [m.astype(bool)]
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    order = np.argsort(-sizes, kind="stable")
    if prm.components == "largest":
        return [lab == (order[0] + 1)]
    return [lab == (i + 1) for i in order if sizes[i] >= prm.min_component_voxels]


def crop_arrays(vol: np.ndarray, m: np.ndarray, prm: CropCfg, spacing=(1.0, 1.0, 1.0)):
    """Instances of windowed arrays: returns a list of bags ``(instances (N, C, S, S), index rows, cube)``."""
    bags = []
    for roi in _components(m, prm):
        insts = select_instances(roi, prm)
        arrs = []
        sp = np.array(spacing, float)  # x, y, z
        for inst in insts:
            k = inst["slice_index"]
            view = inst["view"]
            n = {"axial": vol.shape[1], "sagittal": vol.shape[3], "coronal": vol.shape[2]}[view]
            plane = _plane(vol, view, k) if 0 <= k < n else np.zeros_like(_plane(vol, view, 0))
            # margin in pixels of this plane (rows of sagittal/coronal planes are z)
            px = sp[0] if view != "sagittal" else sp[1]
            a = extract_square(plane, (inst["r0"], inst["r1"], inst["c0"], inst["c1"]), prm.margin_mm / px,
                               prm.image_size, side_px=prm.fov_mm / px if prm.scale == "fixed" else None)
            if view != "axial":
                a = a[:, ::-1, :]  # superior at the top
            arrs.append(np.ascontiguousarray(a))
        bags.append((np.stack(arrs), insts, _cube(vol, roi, spacing, prm)))
    return bags


def _median_in_window(vol: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Each channel's median over ``region`` of the voxels strictly inside the window (so fat, air, bone
    and padding beyond the image are left out); NaN where the region holds none."""
    out = np.full(vol.shape[0], np.nan, np.float32)
    for c in range(vol.shape[0]):
        v = vol[c][region]
        v = v[(v > 0.0) & (v < 1.0)]
        if len(v):
            out[c] = float(np.median(v))
    return out


def parenchyma_reference(vol: np.ndarray, m: np.ndarray, spacing, shell_mm=(15.0, 30.0)) -> np.ndarray:
    """Each channel's intensity of the parenchyma around the tumour, in window units: the median of the
    voxels in a shell ``shell_mm`` (from, to) outside the tumour mask whose value lies strictly inside the
    window (so fat, air, bone and padding beyond the image are left out).

    On the twin the shell is liver; on real data it is mostly liver for an intrahepatic tumour (a tumour at
    the liver's edge also sees some neighbouring tissue, which the median tolerates up to half the shell).
    The CNN stage can subtract it (``cnn.intensity_reference: parenchyma``) so that a scanner's HU offset
    or a contrast bolus that reaches the liver earlier or later does not move the whole image. NaN where
    the shell holds no such voxel.
    """
    # every second voxel along each axis is plenty for a median, and 8× cheaper
    m2, vol2 = m[::2, ::2, ::2].astype(bool), vol[:, ::2, ::2, ::2]
    d = ndimage.distance_transform_edt(~m2, sampling=tuple(2 * np.asarray(spacing, float)[::-1]))
    shell = (d > shell_mm[0]) & (d <= shell_mm[1])
    return _median_in_window(vol2, shell)


def tumour_reference(vol: np.ndarray, m: np.ndarray, erode_mm: float = 2.0, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Each channel's intensity of the tumour itself, in window units: the median of the voxels inside the
    mask, eroded by ``erode_mm`` where enough remains (so the edge's partial volume with the liver is left
    out), whose value lies strictly inside the window. The second point of the ``two-point`` intensity
    reference (:func:`hcc25d.cnn.reference_shift`): with the parenchyma it fixes how far the tumour's
    enhancement stands from the liver's, which a later or earlier contrast bolus changes. NaN where the
    mask holds no such voxel.
    """
    m2, vol2 = m[::2, ::2, ::2].astype(bool), vol[:, ::2, ::2, ::2]
    r = max(1, int(round(erode_mm / (2 * float(min(spacing))))))
    core = ndimage.binary_erosion(m2, iterations=r)
    inside = core if core.sum() >= 50 else m2
    return _median_in_window(vol2, inside)


def trait_readout(vol: np.ndarray, m: np.ndarray, spacing, channels=("arterial", "plain", "portal")) -> dict:
    """A knowledge-driven reading of the three kinds of trait the twin plants, from one patient's
    resampled, windowed volume — not part of the method: a yardstick of what the images hold.

    * ``pae``: the arterial-only brightening (arterial minus plain, each relative to the parenchyma
      15–30 mm away) averaged over a shell 0.5–8 mm outside the tumour, taken on the axial slice within
      ±8 mm of the maximal cross-section where it is largest, minus its median over those slices;
    * ``heterogeneity``: the SD of the portal phase inside the tumour (eroded by 3 voxels);
    * ``nodules``: the fraction of the shell 1–16 mm outside the tumour whose arterial-only brightening
      exceeds 0.12 window units (30 HU at the default window).

    Computed at full resolution along z and every second voxel in-plane (window units). NaN where a
    needed phase is missing.
    """
    ch = list(channels)
    out = {"pae": np.nan, "heterogeneity": np.nan, "nodules": np.nan}
    roi = _components(m, CropCfg(components="largest"))[0]
    sp = np.asarray(spacing, float)[::-1] * np.array([1, 2, 2])  # z, y, x
    roi2, v2 = roi[:, ::2, ::2], vol[:, :, ::2, ::2]
    d = ndimage.distance_transform_edt(~roi2, sampling=tuple(sp))
    far = (d > 15) & (d <= 30)
    if "portal" in ch:
        core = ndimage.binary_erosion(roi, iterations=3)
        core = core if core.sum() > 50 else roi
        out["heterogeneity"] = float(np.std(vol[ch.index("portal")][core]))
    if not ({"arterial", "plain"} <= set(ch)) or not far.any():
        return out
    art, pla = v2[ch.index("arterial")], v2[ch.index("plain")]
    rel = (art - np.median(art[far])) - (pla - np.median(pla[far]))
    zc = max_area_index(roi.sum(axis=(1, 2)))
    shell = (d > 0.5) & (d <= 8)
    per = [float(rel[z][shell[z]].mean()) for z in range(max(0, zc - 8), min(roi.shape[0], zc + 9))
           if shell[z].sum() > 10]
    if per:
        out["pae"] = float(np.max(per) - np.median(per))
    ring = (d > 1) & (d <= 16)
    out["nodules"] = float(np.mean(rel[ring] > 0.12)) if ring.any() else np.nan
    return out


def crop_patient(row: pd.Series, prm: CropCfg, phases: Sequence[str], mask_label: Optional[int] = None):
    """Load one patient (see :func:`hcc25d.manifest.load_patient`), resample, window and crop.

    Returns ``(bags, channel names, reference levels, trait readout)`` (see :func:`crop_arrays`,
    :func:`reference_levels` and :func:`trait_readout`).
    """
    from .manifest import load_patient

    imgs, mask = load_patient(row, phases, mask_label)
    vol, m, names, _ = resample_and_window(imgs, mask, prm)
    real = [c if c in imgs else None for c in prm.channels]  # copied channels are not read as phases
    return (crop_arrays(vol, m, prm, prm.spacing_mm), names, reference_levels(vol, m, prm),
            trait_readout(vol, m, prm.spacing_mm, real))


def reference_levels(vol: np.ndarray, m: np.ndarray, prm: CropCfg) -> dict:
    """A patient's index columns for the intensity reference: ``ref_<phase>`` (the parenchyma,
    :func:`parenchyma_reference`) and ``tum_<phase>`` (the tumour, :func:`tumour_reference`)."""
    ref = parenchyma_reference(vol, m, prm.spacing_mm)
    tum = tumour_reference(vol, m, spacing=prm.spacing_mm)
    return {**{f"ref_{c}": float(r) for c, r in zip(prm.channels, ref)},
            **{f"tum_{c}": float(t) for c, t in zip(prm.channels, tum)}}


def vessel_levels(row) -> dict:
    """A case's vessel ROI readings as index columns ``ves_<phase>`` (HU, NaN where left empty), for the
    phases whose ``vessel_hu_<phase>`` column the case table has (none: no columns, and
    ``cnn.intensity_reference: vessel`` says so)."""
    from .manifest import VESSEL_COLUMNS

    out = {}
    for ph, col in VESSEL_COLUMNS.items():
        if col in row.index:
            v = pd.to_numeric(pd.Series([row[col]]), errors="coerce").iloc[0]
            out[f"ves_{ph}"] = float(v)
    return out


def _worker(args):
    row, prm, phases, mask_label, out_dir = args
    from .io import write_npz

    pid = str(row["patient_id"])
    bags, names, refs, readout = crop_patient(row, prm, phases, mask_label)
    refs = {**refs, **vessel_levels(row)}
    readout = {"patient_id": pid, **readout}
    rows = []
    for b, (inst, idx, cube) in enumerate(bags):
        bag = pid if len(bags) == 1 and prm.components == "largest" else f"{pid}#{b + 1}"
        fname = bag.replace("#", "_")
        write_npz(out_dir / "instances" / f"{fname}.npz", x=inst.astype(np.float16))
        write_npz(out_dir / "cubes" / f"{fname}.npz", x=cube.astype(np.float16))
        for i, r in enumerate(idx):
            rows.append({"patient_id": pid, "bag": bag, "file": f"{fname}.npz", "instance": i, **r,
                         "cohort": row["cohort"], "label": int(row["label"]), "channels": "|".join(names),
                         **refs})
    return rows, readout


def crop_all(cases: pd.DataFrame, prm: CropCfg, phases, mask_label, out_dir: Path, n_jobs: int = 1,
             backend: str = "loky", progress: bool = True) -> pd.DataFrame:
    """Crop every case; write ``instances/<bag>.npz`` (N × C × S × S, float16), ``cubes/<bag>.npz``
    (C × D × H × W), ``trait_readout.csv`` (:func:`trait_readout`, one row per patient) and return the
    index table (also written as ``index.csv``)."""
    from .io import write_csv
    from .parallel import map_patients

    out_dir = Path(out_dir)
    items = [(row, prm, tuple(phases), mask_label, out_dir) for _, row in cases.iterrows()]
    res = map_patients(_worker, items, n_jobs=n_jobs, backend=backend, desc="2.5D cropping", progress=progress)
    index = pd.DataFrame([r for rows, _ in res for r in rows])
    write_csv(index, out_dir / "index.csv")
    write_csv(pd.DataFrame([ro for _, ro in res]), out_dir / "trait_readout.csv")
    return index


@dataclass
class Bags:
    """All instances of a run in memory: ``x`` (N, C, H, W) float16 and one index row per instance.

    ``channels``: the name of each channel of ``x`` (a phase, or ``excess`` for the arterial-excess
    channel); left empty, it is read from the index's ``ref_<phase>`` columns where they name one phase per
    channel (as the cropping stage writes them)."""

    x: np.ndarray
    index: pd.DataFrame
    channels: tuple = ()

    def __post_init__(self):
        if not self.channels:
            refs = tuple(c[4:] for c in self.index.columns if c.startswith("ref_"))
            if self.x.ndim > 1 and len(refs) == self.x.shape[1]:
                self.channels = refs
        self.channels = tuple(self.channels)
        if self.channels and self.x.ndim > 1 and len(self.channels) != self.x.shape[1]:
            raise ValueError(f"Bags: {len(self.channels)} channel names {self.channels} for "
                             f"{self.x.shape[1]} channels")

    def patients(self) -> pd.DataFrame:
        return self.index.groupby("patient_id", sort=True).agg(cohort=("cohort", "first"), label=("label", "first")).reset_index()

    def rows(self, patient_ids) -> np.ndarray:
        return np.flatnonzero(self.index["patient_id"].isin(set(patient_ids)).to_numpy())


def roi_extent_mm(index: pd.DataFrame, spacing=(1.0, 1.0, 1.0)) -> pd.Series:
    """Each patient's ROI extent in the axial plane (mm): the larger side of the box of its central axial
    instance (with ``box: central`` the union of the ROI over the axial offsets), from the index that
    :func:`crop_all` writes. Measured on the mask, so it exists for every cohort, twin or real."""
    ax = index[(index["view"] == "axial") & (index["offset"] == 0)].drop_duplicates("patient_id")
    rows = (ax["r1"] - ax["r0"] + 1) * float(spacing[1])
    cols = (ax["c1"] - ax["c0"] + 1) * float(spacing[0])
    return pd.Series(np.maximum(rows, cols).to_numpy(float), index=ax["patient_id"].astype(str).to_numpy(),
                     name="roi_extent_mm")


def load_bags(crop_dir: str | Path, kind: str = "instances") -> Bags:
    """Read every bag's arrays written by :func:`crop_all` (numpy only): ``kind`` ``instances`` (the 2.5D
    instances, one index row each) or ``cubes`` (the 3D crops, one per bag)."""
    crop_dir = Path(crop_dir)
    index = pd.read_csv(crop_dir / "index.csv", dtype={"patient_id": str, "bag": str})
    if kind == "instances":
        arrays, rows = [], []
        for f, g in index.groupby("file", sort=False):
            with np.load(crop_dir / "instances" / f) as z:
                a = z["x"]
            arrays.append(a[g["instance"].to_numpy()])
            rows.append(g)
        return Bags(np.concatenate(arrays), pd.concat(rows, ignore_index=True))
    # cubes: one per bag
    first = index.drop_duplicates("bag").reset_index(drop=True)
    arrays = []
    for f in first["file"]:
        with np.load(crop_dir / "cubes" / f) as z:
            arrays.append(z["x"])
    keep = ["patient_id", "bag", "file", "cohort", "label"] + [c for c in first if c.startswith(("ref_", "tum_", "ves_"))]
    return Bags(np.stack(arrays), first[keep].copy())


def _histogram_features(x: np.ndarray, channels, bins: int = 16) -> np.ndarray:
    out = []
    for c in channels:
        a = x[:, c].reshape(len(x), -1).astype(np.float32)
        h = np.stack([np.histogram(r, bins=bins, range=(0.0, 1.0))[0] for r in a]) / a.shape[1]
        out += [h, a.std(1, keepdims=True), np.percentile(a, [90, 99], axis=1).T]
    return np.hstack(out)


def signal_probe(x: np.ndarray, index: pd.DataFrame, channel_names=("arterial", "plain", "portal"),
                 folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Where is the signal? For every instance slot (view, offset) and phase set, the cross-validated AUC
    of a logistic regression on simple intensity-histogram features of that instance alone.

    A teaching probe, not a model of the method: it uses the *training* cohort only (patient-level
    folds, one instance per patient per slot) and shows which slices and phases carry information.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr = index[index["cohort"] == "training"]
    sets = [("three phases", tuple(range(len(channel_names))))] + [(n, (i,)) for i, n in enumerate(channel_names)]
    rows = []
    for (view, off), g in tr.groupby(["view", "offset"], sort=False):
        rows_i = g.index.to_numpy()
        y = g["label"].to_numpy()
        k = min(folds, int(min(np.bincount(y)))) if len(set(y)) == 2 else 0
        if k < 2:
            continue
        for name, chans in sets:
            F = _histogram_features(x[rows_i], chans)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            p = cross_val_predict(model, F, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                  method="predict_proba")[:, 1]
            rows.append({"slot": f"{view}{int(off):+d}", "view": view, "offset": int(off), "phases": name,
                         "AUC": roc_auc_score(y, p)})
    return pd.DataFrame(rows)


def histogram_reference(bags: Bags, splits: Sequence[dict], size: Optional[pd.Series] = None,
                        C: float = 0.1) -> pd.DataFrame:
    """An instance-level yardstick for the CNN: a logistic regression on each instance's intensity
    histograms, trained on exactly the CNN's cross-fitting folds.

    Features per instance: for every channel of ``bags`` (after the intensity reference, with the arterial
    excess where the CNN has it) the 16-bin histogram, SD and 90th/99th percentiles of the whole crop
    (:func:`signal_probe`'s features), plus the instance's slot. ``splits``: the CNN's fold
    assignments (patient → fold), one per cross-fitting repeat (``meta["repeat_folds"]``, or
    ``[meta["fold"]]``). As for the CNN, a training instance is scored by the models of the folds that did
    not see its patient (mean logit over the repeats), every other instance by the mean logit of all fold
    models; classes are balanced as ``class_weight: balanced`` does, ``C`` is fixed (no search), and with
    ``size`` (each patient's ROI extent) the scores are size-adjusted by :func:`hcc25d.cnn.size_adjust` as the CNN's.
    Returns ``bags.index`` with ``prob`` (and ``size_shift`` with ``size``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .cnn import size_adjust

    if not splits:
        raise ValueError("histogram_reference needs the CNN's fold assignments (one per cross-fitting repeat)")
    idx = bags.index.reset_index(drop=True)
    slot = idx["view"].astype(str) + idx["offset"].astype(int).map("{:+d}".format)
    F = np.hstack([_histogram_features(bags.x, range(bags.x.shape[1])),
                   pd.get_dummies(slot).to_numpy(np.float64)])
    pid = idx["patient_id"].astype(str).to_numpy()
    y = idx["label"].to_numpy()
    train = (idx["cohort"] == "training").to_numpy()
    oof, n_oof = np.zeros(len(idx)), np.zeros(len(idx))
    other, n_other = np.zeros(len(idx)), 0
    for split in splits:
        fold = pd.Series({str(k): int(v) for k, v in split.items()}, dtype=float).reindex(pid).to_numpy()
        missing = sorted(set(pid[train & np.isnan(fold)]))
        if missing:
            raise ValueError(f"histogram_reference: no fold for training patient(s) {missing[:5]}")
        for f in sorted(set(fold[train].astype(int))):
            held, fit_rows = train & (fold == f), train & (fold != f)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))
            model.fit(F[fit_rows], y[fit_rows])
            oof[held] += model.decision_function(F[held])
            n_oof[held] += 1
            other[~train] += model.decision_function(F[~train])
            n_other += 1
    score = np.where(train, oof / np.maximum(n_oof, 1), other / max(n_other, 1))
    out = bags.index.copy()
    out["prob"] = 1.0 / (1.0 + np.exp(-score))
    if size is not None:
        out, _ = size_adjust(out, size)
    return out
