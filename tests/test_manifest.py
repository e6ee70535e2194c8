"""Own-data ingest: real DICOM and NRRD, manifest validation (each fault reported), no header text in outputs."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hcc25d import manifest
from hcc25d import images

HCC = "hcc048_portal_venous_dicom"  # reduced: slices 38-69, rows 120-375, columns 60-315 of the original


def _write(arr, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    sitk.WriteImage(im, str(path))
    return path


def test_hcc_portal_dicom_series(examples):
    folder = examples / HCC
    im = images.read_image(folder)
    assert im.GetSize() == (256, 256, 32)
    assert np.allclose(im.GetSpacing(), (0.703125, 0.703125, 2.5))
    assert np.allclose(im.GetDirection(), np.eye(3).ravel())
    a = sitk.GetArrayFromImage(im)
    assert a.min() >= -2048 and a.max() <= 3071
    body = a[a > -500]
    assert -200 < np.median(body) < 150  # soft tissue dominates the body
    liver = a[22, 70:130, 80:150]  # a box in the right liver lobe, portal venous phase
    assert 70 < np.median(liver) < 170 and np.percentile(liver, 95) < 250
    info = images.read_image(folder, header_only=True)
    assert info.size == (256, 256, 32)


def test_abdomen_3slice_dicom_and_nrrd_labels(examples):
    d = examples / "abdomen_ct_3slice"
    ct = images.read_image(d)  # the folder also holds a DICOM SEG: the CT series (3 files) is chosen
    assert ct.GetSize() == (512, 512, 3)
    assert np.allclose(ct.GetSpacing()[:2], (0.810547, 0.810547), atol=1e-5)
    seg = sitk.GetArrayFromImage(images.read_image(d / "liver_spine_seg.nrrd"))
    assert set(np.unique(seg)) == {0, 1, 2}
    liver_hu = sitk.GetArrayFromImage(ct)[seg == 1]
    assert 20 < np.median(liver_hu) < 200


@pytest.fixture()
def real_manifest(examples, tmp_path):
    """A manifest over the real files: the 3-slice CT with its liver masks, the HCC series with a
    hand-made mask on its grid. Paths relative to the manifest."""
    d = examples / "abdomen_ct_3slice"
    hcc = examples / HCC
    ref = images.read_image(hcc)
    m = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
    m[2:8, 80:110, 90:120] = 1
    mk = sitk.GetImageFromArray(m)
    mk.CopyInformation(ref)
    sitk.WriteImage(mk, str(tmp_path / "hcc_mask.nii.gz"))
    rows = [
        dict(patient_id="A1", centre=1, cohort="train", label=0, image_portal=str(d), mask=str(d / "liver_seg.nrrd")),
        dict(patient_id="A2", centre=1, cohort="train", label=1, image_portal=str(d),
             mask=str(d / "liver_spine_seg.nrrd")),
        dict(patient_id="H1", centre=2, cohort="external", label=1, image_portal=str(hcc), mask="hcc_mask.nii.gz"),
        dict(patient_id="H2", centre=2, cohort="external", label=0, image_portal=str(hcc), mask="hcc_mask.nii.gz"),
    ]
    df = pd.DataFrame(rows)
    df["image_plain"] = ""
    df["image_arterial"] = ""
    p = tmp_path / "manifest.csv"
    df.to_csv(p, index=False)
    return p


def test_real_manifest_validates(real_manifest):
    out = manifest.validate_manifest(real_manifest, phases=["portal"], mask_label=1)
    assert list(out["patient_id"]) == ["A1", "A2", "H1", "H2"]
    assert set(out["cohort"]) == {"training", "external"}
    imgs, mask = manifest.load_patient(out.iloc[1], phases=["portal"], mask_label=1)
    assert sitk.GetArrayFromImage(mask).max() == 1 and set(imgs) == {"portal"}
    assert imgs["portal"].GetSize() == mask.GetSize()


def test_vessel_readings_pass_through_and_are_checked(real_manifest, tmp_path):
    """The optional ``vessel_hu_<phase>`` columns reach the case table as numbers (empty: NaN), and the
    crop stage's index columns; a reading that is not a number is reported with its patient."""
    df = pd.read_csv(real_manifest, keep_default_na=False)
    df["vessel_hu_plain"] = ["40", "41.5", "", "39"]
    df["vessel_hu_arterial"] = [140, 138, 125, 150]
    p = real_manifest.parent / "with_vessel.csv"
    df.to_csv(p, index=False)
    out = manifest.validate_manifest(p, phases=["portal"], mask_label=1)
    assert out["vessel_hu_plain"].tolist()[:2] == [40.0, 41.5] and np.isnan(out["vessel_hu_plain"].iloc[2])
    assert out["vessel_hu_arterial"].tolist() == [140.0, 138.0, 125.0, 150.0]
    assert "vessel_hu_portal" not in out
    from hcc25d import crop25d
    lv = crop25d.vessel_levels(out.iloc[2])
    assert set(lv) == {"ves_plain", "ves_arterial"} and np.isnan(lv["ves_plain"]) and lv["ves_arterial"] == 125
    df["vessel_hu_arterial"] = [140, "high", 125, 150]
    df.to_csv(p, index=False)
    with pytest.raises(manifest.ManifestError, match=r"A2: vessel_hu_arterial 'high' is not a number"):
        manifest.validate_manifest(p, phases=["portal"], mask_label=1)


def test_multilabel_mask_needs_mask_label(real_manifest):
    with pytest.raises(manifest.ManifestError, match=r"A2: mask .*liver_spine_seg.nrrd is not binary \(labels \[1, 2\]\)"):
        manifest.validate_manifest(real_manifest, phases=["portal"])


def test_missing_phase_only_allowed_when_declared(real_manifest):
    with pytest.raises(manifest.ManifestError) as err:
        manifest.validate_manifest(real_manifest, phases=["plain", "arterial", "portal"], mask_label=1)
    assert "A1: phase plain missing" in str(err.value) and "H2: phase arterial missing" in str(err.value)


def _digest(paths):
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(f.read_bytes())
    return h.hexdigest()


def test_planted_faults_all_reported(tmp_path):
    img = np.full((8, 16, 16), 40, np.int16)
    m = np.zeros((8, 16, 16), np.uint8)
    m[3:5, 5:9, 5:9] = 1
    {ph: _write(img, tmp_path / f"{ph}.nii.gz") for ph in ("plain", "arterial", "portal")}
    _write(m, tmp_path / "mask.nii.gz")
    _write(np.zeros_like(m), tmp_path / "empty.nii.gz")
    _write(m * 3 + np.roll(m, 6, axis=2) * 2, tmp_path / "multi.nii.gz")
    _write(img, tmp_path / "far.nii.gz", origin=(500.0, 500.0, 500.0))
    _write(img[:, ::2, ::2].copy(), tmp_path / "coarse.nii.gz", spacing=(2.0, 2.0, 1.0))
    (tmp_path / "broken.nii.gz").write_text("not an image")

    def row(pid, cohort="train", label=0, **kw):
        r = dict(patient_id=pid, centre=1, cohort=cohort, label=label, image_plain="plain.nii.gz",
                 image_arterial="arterial.nii.gz", image_portal="portal.nii.gz", mask="mask.nii.gz")
        r.update(kw)
        return r

    rows = [
        row("ok0"), row("ok1", label=1), row("int0", "internal"), row("int1", "internal", 1),
        row("missing", image_plain="nope.nii.gz"),
        row("broken", image_arterial="broken.nii.gz"),
        row("empty", mask="empty.nii.gz"),
        row("multi", mask="multi.nii.gz"),
        row("far", image_portal="far.nii.gz"),
        row("coarse", image_portal="coarse.nii.gz"),  # overlapping, other grid: accepted, resampled
        row("nophase", image_arterial=""),
        row("dup"), row("dup"),
        row("twice", "train"), row("twice", "internal", 1),
        row("badlabel", label=2),
        row("ext0", "external", 1), row("ext1", "external", 1),
    ]
    p = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    before = _digest([tmp_path])
    with pytest.raises(manifest.ManifestError) as err:
        manifest.validate_manifest(p)
    msg = str(err.value)
    expected = [
        "missing: image_plain nope.nii.gz not found",
        "broken: image_arterial broken.nii.gz unreadable",
        "empty: mask empty.nii.gz is empty",
        "multi: mask multi.nii.gz is not binary",
        "far: image_portal far.nii.gz and mask mask.nii.gz do not overlap",
        "nophase: phase arterial missing",
        "dup: duplicate patient id",
        "twice: in two cohorts (internal, train)",
        "badlabel: label 2 is not 0 or 1",
        "cohort external: all 2 patients have label 1 (one class only)",
    ]
    for e in expected:
        assert e in msg, e
    assert "coarse" not in msg
    assert len(err.value.problems) == len(expected)
    assert _digest([tmp_path]) == before  # no input file was modified


def test_other_grid_is_resampled_onto_mask(tmp_path):
    img = np.arange(8 * 16 * 16, dtype=np.int16).reshape(8, 16, 16)
    m = np.zeros((8, 16, 16), np.uint8)
    m[3:5, 5:9, 5:9] = 1
    for ph in ("plain", "arterial"):
        _write(img, tmp_path / f"{ph}.nii.gz")
    _write(img[:, ::2, ::2].copy(), tmp_path / "portal.nii.gz", spacing=(2.0, 2.0, 1.0))
    _write(m, tmp_path / "mask.nii.gz")
    rows = [dict(patient_id=f"p{i}", centre=1, cohort="train", label=i % 2, image_plain="plain.nii.gz",
                 image_arterial="arterial.nii.gz", image_portal="portal.nii.gz", mask="mask.nii.gz") for i in range(2)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    out = manifest.validate_manifest(tmp_path / "m.csv")
    assert list(out["grid"]) == ["resample", "resample"]
    imgs, mask = manifest.load_patient(out.iloc[0])
    assert all(i.GetSize() == mask.GetSize() for i in imgs.values())


def test_pseudonymised_and_no_header_text_in_outputs(real_manifest, tmp_path, examples):
    import pydicom

    out = manifest.validate_manifest(real_manifest, phases=["portal"], mask_label=1, pseudonymise_ids=True,
                                     salt="s3cret")
    assert not set(out["patient_id"]) & {"A1", "A2", "H1", "H2"}
    assert out["patient_id"].iloc[0] == manifest.pseudonymise("A1", "s3cret")
    res = tmp_path / "results"
    res.mkdir()
    manifest.relative_cases(out, res).to_csv(res / "cases.csv", index=False)
    imgs, mask = manifest.load_patient(out.iloc[2], phases=["portal"], mask_label=1)
    for name, im in {**imgs, "mask": mask}.items():
        sitk.WriteImage(im, str(res / f"{name}.nii.gz"))
    header_text = set()
    for f in [sorted((examples / HCC).glob("*.dcm"))[7], examples / "abdomen_ct_3slice" / "01.dcm"]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "StudyDate", "StudyDescription", "SeriesDescription",
                    "StudyInstanceUID", "Manufacturer"):
            v = str(ds.get(tag) or "")
            if len(v) >= 5:
                header_text.add(v)
    assert "Patient_01" in header_text and "JANCT000" in header_text
    for f in res.rglob("*"):
        blob = f.read_bytes()
        for v in header_text:
            assert v.encode() not in blob, (f.name, v)
