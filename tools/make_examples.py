"""Developer tool: how the reduced public samples under ``data/examples/`` were made.

Run once by a maintainer from a checkout that has the original public data beside it
(``python tools/make_examples.py SOURCE`` with SOURCE holding ``real/`` and ``reference/``, as the
project's development material does). Nothing in the package, the tests or the book runs this script or
reads SOURCE: they read only ``data/examples/``. Each sample keeps its licence file, and
``data/examples/PROVENANCE.md`` says where it came from and what was cut.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "data" / "examples"

#: HCC_048 portal venous series: the slab and the in-plane window kept (0-based indices of the original)
HCC_SLICES = range(38, 70)             # 32 of 89 slices (80 mm) through the liver
HCC_ROWS, HCC_COLS = (120, 376), (60, 316)  # 256 x 256 pixels (180 mm) over the right liver lobe
#: lung1: the slab of axial slices kept around the 3-slice tumour mask (0-based, end exclusive)
LUNG_SLICES = (24, 44)


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def reduce_dicom_series(src: Path, dst: Path, slices, rows, cols) -> None:
    """Keep ``slices`` (sorted by position) and crop each to ``rows`` × ``cols``: pixel data, Rows,
    Columns and ImagePositionPatient are rewritten so the geometry stays exact; everything else
    (already de-identified by the source) is kept."""
    import pydicom

    files = sorted(src.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                              .ImagePositionPatient[2]))
    dst.mkdir(parents=True, exist_ok=True)
    for k in slices:
        ds = pydicom.dcmread(files[k])
        arr = ds.pixel_array[rows[0]:rows[1], cols[0]:cols[1]]
        iop = np.array(ds.ImageOrientationPatient, float)
        ps = np.array(ds.PixelSpacing, float)  # (between rows, between columns)
        ipp = np.array(ds.ImagePositionPatient, float) + cols[0] * ps[1] * iop[:3] + rows[0] * ps[0] * iop[3:]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds.save_as(dst / files[k].name, enforce_file_format=True)


def reduce_nrrd(src: Path, dst: Path, z: tuple) -> None:
    import SimpleITK as sitk

    im = sitk.ReadImage(str(src))
    size = list(im.GetSize())
    out = sitk.RegionOfInterest(im, [size[0], size[1], z[1] - z[0]], [0, 0, z[0]])
    sitk.WriteImage(out, str(dst), useCompression=True)


def main(source: str) -> None:
    src = Path(source)
    OUT.mkdir(parents=True, exist_ok=True)
    copy_tree(src / "reference" / "stats", OUT / "stats")
    copy_tree(src / "reference" / "ibsi_digital_phantom", OUT / "ibsi_digital_phantom")
    copy_tree(src / "real" / "abdomen_ct_3slice", OUT / "abdomen_ct_3slice")
    lung = OUT / "lung1_ct"
    if lung.exists():
        shutil.rmtree(lung)
    (lung / "baseline").mkdir(parents=True)
    for f in (src / "real" / "lung1_ct" / "baseline").glob("*.csv"):
        shutil.copy2(f, lung / "baseline" / f.name)
    shutil.copy2(src / "real" / "lung1_ct" / "LICENSE_pyradiomics_BSD-3.txt", lung)
    for name in ("lung1_image.nrrd", "lung1_label.nrrd"):
        reduce_nrrd(src / "real" / "lung1_ct" / name, lung / name, LUNG_SLICES)
    hcc = OUT / "hcc048_portal_venous_dicom"
    if hcc.exists():
        shutil.rmtree(hcc)
    reduce_dicom_series(src / "real" / "hcc048_portal_venous_dicom", hcc, HCC_SLICES, HCC_ROWS, HCC_COLS)
    for f in (src / "real" / "hcc048_portal_venous_dicom").glob("LICENSE*"):
        shutil.copy2(f, hcc / f.name)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"data/examples: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared" / "data"))
