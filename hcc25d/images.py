"""Reading images: NIfTI, NRRD, MHA/MHD files and DICOM series folders, with one anatomical orientation.

Every volume is reoriented on read to **LPS** (the DICOM convention: the first index axis runs to the
patient's left, the second to the posterior, the third to the superior), so that every crop, view and
figure has the same orientation whatever the file's direction cosines — a NIfTI written in RAS by another
tool (direction −1, −1, 1) gives the same 2.5D instances as the DICOM it came from. An axis-aligned
direction (a signed permutation) is reoriented losslessly by flipping and permuting the voxel array
(SimpleITK's ``DICOMOrient``); an oblique one (tilted axes) is resampled onto an LPS grid that covers the
volume (linear interpolation for images, nearest neighbour for masks).

Only pixels and geometry are read: no DICOM header text leaves this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["read_image", "to_lps", "is_axis_aligned"]


def _dicom_files(folder: Path) -> list[str]:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise OSError(f"no DICOM series found in folder {folder}")
    series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids]
    return list(max(series, key=len))


@dataclass
class _Info:
    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple
    files: Optional[list] = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical bounding box (min, max corners) of the image's voxel centres."""
        D = np.array(self.direction, float).reshape(3, 3) if len(self.direction) == 9 else np.eye(3)
        corners = []
        for i in (0, self.size[0] - 1):
            for j in (0, self.size[1] - 1):
                for k in (0, (self.size[2] if len(self.size) > 2 else 1) - 1):
                    idx = np.array([i, j, k], float) * np.array(self.spacing[:3], float)
                    corners.append(np.array(self.origin[:3], float) + D @ idx)
        c = np.array(corners)
        return c.min(0), c.max(0)


def read_image(path: str | Path, header_only: bool = False, kind: str = "image", orient: bool = True):
    """Read a NIfTI / NRRD / MHA file or a DICOM series folder with SimpleITK (pixels and geometry only),
    reoriented to LPS (:func:`to_lps`; ``kind`` = ``image`` or ``mask`` picks the interpolation an
    oblique volume needs; ``orient=False`` keeps the file's own orientation).

    ``header_only`` returns a reader's information (size, spacing, origin, direction as stored in the
    file) without pixels.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        files = _dicom_files(path)
        if header_only:
            r = sitk.ImageFileReader()
            r.SetFileName(files[0])
            r.ReadImageInformation()
            size = list(r.GetSize())
            size[2] = len(files) if len(size) > 2 else 1
            return _Info(tuple(size[:3]), r.GetSpacing()[:3], r.GetOrigin()[:3], r.GetDirection()[:9],
                         files=files)
        r = sitk.ImageSeriesReader()
        r.SetFileNames(files)
        r.MetaDataDictionaryArrayUpdateOff()
        r.LoadPrivateTagsOff()
        img = r.Execute()
    else:
        if not path.exists():
            raise FileNotFoundError(f"file not found: {path}")
        if header_only:
            r = sitk.ImageFileReader()
            r.SetFileName(str(path))
            r.ReadImageInformation()
            return _Info(tuple(r.GetSize()[:3]), r.GetSpacing()[:3], r.GetOrigin()[:3], r.GetDirection()[:9])
        img = sitk.ReadImage(str(path))
    if img.GetDimension() == 4:  # e.g. a 3-slice series read as 4D with a trailing singleton
        img = img[:, :, :, 0]
    return to_lps(img, kind) if orient else img


def is_axis_aligned(direction, tol: float = 1e-4) -> bool:
    """Whether a 3×3 direction matrix is a signed permutation (no tilt)."""
    D = np.abs(np.asarray(direction, float).reshape(3, 3))
    return bool(np.all((np.abs(D - 1) < tol) | (D < tol)) and np.allclose(D.sum(0), 1, atol=tol))


def to_lps(img, kind: str = "image"):
    """The image with identity direction (LPS): flipped/permuted when its axes are aligned with the
    patient's, resampled when they are oblique (linear for an image, nearest neighbour for a mask)."""
    import SimpleITK as sitk

    if img.GetDimension() != 3 or np.allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6):
        return img
    if is_axis_aligned(img.GetDirection()):
        out = sitk.DICOMOrient(img, "LPS")
        out.SetDirection(tuple(np.eye(3).ravel()))  # exact identity (no rounding noise left)
        return out
    # oblique: an LPS grid covering all the volume's corners; in-plane spacing the finest, z the slice's
    size = np.array(img.GetSize())
    corners = np.array([img.TransformContinuousIndexToPhysicalPoint([float(i), float(j), float(k)])
                        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    s = sorted(img.GetSpacing())
    sp = np.array([s[0], s[0], s[2]])
    lo, hi = corners.min(0), corners.max(0)
    new_size = [int(np.ceil((h - l) / v)) + 1 for l, h, v in zip(lo, hi, sp)]
    ref = sitk.Image(new_size, img.GetPixelID())
    ref.SetSpacing(tuple(float(v) for v in sp))
    ref.SetOrigin(tuple(float(v) for v in lo))
    interp = sitk.sitkNearestNeighbor if kind == "mask" else sitk.sitkLinear
    fill = 0.0 if kind == "mask" else float(sitk.GetArrayViewFromImage(img).min())
    return sitk.Resample(img, ref, sitk.Transform(), interp, fill, img.GetPixelID())
