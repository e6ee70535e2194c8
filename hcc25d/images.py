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

__all__ = [
    "read_image",
    "is_axis_aligned",
    "to_lps",
    "verify_complete",
]


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


def _nifti_expected_bytes(head: bytes) -> Optional[int]:
    """Header size + voxel bytes a NIfTI-1/2 header announces (``None`` if it is not a NIfTI header)."""
    import struct

    for end in "<>":
        if len(head) >= 348 and struct.unpack(end + "i", head[:4])[0] == 348:
            dim = struct.unpack(end + "8h", head[40:56])
            bitpix = struct.unpack(end + "h", head[72:74])[0]
            offset = int(struct.unpack(end + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(end + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(end + "h", head[14:16])[0]
            dim = struct.unpack(end + "8q", head[16:80])
            offset = int(struct.unpack(end + "q", head[168:176])[0])
            break
    else:
        return None
    n = int(np.prod([max(int(d), 1) for d in dim[1:1 + max(0, min(int(dim[0]), 7))]]))
    return max(offset, 348) + n * max(int(bitpix), 8) // 8


def verify_complete(path: str | Path) -> None:
    """Raise ``OSError`` when a file or DICOM series is incomplete in a way the readers let pass.

    ITK reads a truncated NIfTI (``.nii`` or ``.nii.gz``) without an error and fills the missing voxels
    with zeros, and it silently leaves a cut or unreadable file out of a DICOM series (a gap in the
    volume). This check decompresses a NIfTI completely and compares its size with what the header
    announces; for a DICOM folder it requires every file to be readable DICOM with all its pixel data,
    and the slices to be evenly spaced. NRRD and MHA readers already fail on truncated data.
    """
    import gzip
    import zlib

    path = Path(path)
    if path.is_dir():
        _verify_dicom_folder(path)
        return
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    total, head = 0, b""
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                if len(head) < 540:
                    head += chunk[:540 - len(head)]
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise OSError(f"corrupt or truncated file ({exc})") from None
    expected = _nifti_expected_bytes(head)
    if expected is None:
        raise OSError("not a NIfTI file (no NIfTI header)")
    if total < expected:
        raise OSError(f"truncated: {total:,} of the {expected:,} bytes its header announces")


def _verify_dicom_folder(folder: Path) -> None:
    import pydicom

    used = set(_dicom_files(folder))
    z, problems, series, outside = [], [], set(), []
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # not DICOM at all, or cut inside the header
            with open(f, "rb") as fh:
                looks_dicom = fh.read(132)[128:] == b"DICM"
            if looks_dicom or f.suffix.lower() in (".dcm", ".ima") or str(f) in used:
                problems.append(f"{f.name} is not readable DICOM")
            continue
        if "PixelData" not in ds:
            continue  # a non-image object (e.g. a DICOM-SEG or a report)
        if str(f) not in used:
            outside.append((f.name, str(ds.get("SeriesInstanceUID", ""))))
            continue
        series.add(str(ds.get("SeriesInstanceUID", "")))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
                * int(ds.BitsAllocated) // 8)
        transfer = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
        compressed = transfer not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "")
        if not compressed and len(ds.PixelData) < need:
            problems.append(f"{f.name}: pixel data cut ({len(ds.PixelData):,} of {need:,} bytes)")
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            o = np.array(ds.ImageOrientationPatient, float)
            z.append(float(np.dot(np.cross(o[:3], o[3:]), np.array(ds.ImagePositionPatient, float))))
    for name, uid in outside:
        if uid in series:
            problems.append(f"{name} belongs to the series but the reader left it out (cut or damaged file?)")
    if len(z) > 2:
        dz = np.diff(np.sort(z))
        med = float(np.median(dz))
        if med > 0 and float(dz.max()) > 1.5 * med:
            problems.append(f"slices unevenly spaced (a gap of {dz.max():.2f} mm where the spacing is "
                            f"{med:.2f} mm): a slice is missing")
    if problems:
        raise OSError("; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
