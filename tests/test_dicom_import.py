"""`import-dicom`: a DICOM export tree (several patients, phases, a DICOM-SEG, a mask folder, faults)
arranged from the real samples, turned into a manifest that the check accepts; no header text leaks."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from hcc25d import check as chk
from hcc25d import images
from hcc25d import dicom_import as di
from hcc25d import manifest

ROOT = Path(__file__).resolve().parent.parent
ABD = "abdomen_ct_3slice"
HCC = "hcc048_portal_venous_dicom"
HEADER_TEXT = ["JANCT000", "Recon 3", "LIVER 2 PHASE", "Patient_01", "ART 0.6", "PV 0.6", "PRE 5mm",
               "DELAYED", "Scout"]


def _copy_series(src_files, dest: Path, patient: str, description: str, keep_uids=False):
    di.copy_series(src_files, dest, description, patient_id=patient, keep_uids=keep_uids)


@pytest.fixture(scope="module")
def export(examples, tmp_path_factory):
    """ABD: three phases in ONE folder (+ a delayed and a scout series), its portal series referenced by
    the real DICOM-SEG (liver). HCC: three phases, one folder each, tumour mask in a mask folder.
    NOART: no arterial series. NOSEG: no segmentation anywhere. Plus a clinical table with a ghost."""
    t = tmp_path_factory.mktemp("export")
    root = t / "export"
    abd = sorted(str(p) for p in (examples / ABD).glob("0*.dcm"))
    hcc = sorted(str(p) for p in (examples / HCC).glob("*.dcm"))
    study = root / "ABD" / "study1"
    # the portal series keeps its UIDs: the SEG references them; PatientID 99000 is the samples' own
    _copy_series(abd, study, "99000", "PV 0.6", keep_uids=True)
    for desc, sub in (("ART 0.6", "a"), ("PRE 5mm", "b"), ("DELAYED", "c"), ("Scout", "d")):
        tmpd = t / f"tmp_{sub}"
        _copy_series(abd, tmpd, "99000", desc)
        for f in tmpd.iterdir():
            shutil.move(str(f), study / f"{sub}_{f.name}")
    shutil.copy(examples / ABD / "liver.dcm", study / "seg.dcm")
    for pid, phases in (("Patient_01", ("ART 0.6", "PV 0.6", "PRE 5mm")), ("NOART", ("PV 0.6", "PRE 5mm")),
                        ("NOSEG", ("ART 0.6", "PV 0.6", "PRE 5mm"))):
        for i, desc in enumerate(phases):
            _copy_series(hcc, root / pid / f"series{i}", pid, desc)
    (root / pid / "README.txt").write_text("not DICOM")
    masks = t / "masks"
    masks.mkdir()
    ref = images.read_image(root / "Patient_01" / "series1", orient=False)
    zz, yy, xx = np.indices(sitk.GetArrayViewFromImage(ref).shape)
    ball = ((zz - 16) ** 2 * 6 + (yy - 128) ** 2 + (xx - 128) ** 2 < 30 ** 2).astype(np.uint8)
    m = sitk.GetImageFromArray(ball)
    m.CopyInformation(ref)
    for pid in ("Patient_01", "NOART"):
        sitk.WriteImage(m, str(masks / f"{pid}.nii.gz"))
    clin = pd.DataFrame({"patient_id": ["99000", "Patient_01", "NOART", "NOSEG", "GHOST"],
                         "centre": [1] * 5, "cohort": ["train"] * 5, "label": [0, 1, 1, 0, 1],
                         "TBIL": [12.0, 20.5, 9.9, 15.0, 30.0], "cirrhosis": [0, 1, 1, 0, 0]})
    clin.to_csv(t / "clinical.csv", index=False)
    return t, root, masks


def test_phase_rules():
    assert di.phase_of("Recon 2: LIVER 3 PHASE (AP)")[0] == "arterial"
    assert di.phase_of("PV 0.6")[0] == "portal"
    assert di.phase_of("Portal venous phase")[0] == "portal"
    assert di.phase_of("NON-CONTRAST 5mm")[0] == "plain"
    assert di.phase_of("pre")[0] == "plain"
    assert di.phase_of("DELAYED 3 min") == (None, "excluded")
    assert di.phase_of("Abdomen 5mm")[1] == "no rule matches"
    assert di.phase_of("arterial and venous")[1].startswith("matches several phases")


def test_rules_file_errors(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"phase": {}}))
    with pytest.raises(di.DicomImportError, match="unknown key"):
        di.load_rules(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"phases": {"arterial": ["(unclosed"]}}))
    with pytest.raises(di.DicomImportError, match="not a regular expression"):
        di.load_rules(tmp_path / "r.yaml")


def test_import_export_tree(export, examples, tmp_path):
    t, root, masks = export
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "own" / "manifest.csv"
    proc = subprocess.run([sys.executable, "-m", "hcc25d", "import-dicom", str(root), "--out", str(out),
                           "--clinical", str(t / "clinical.csv"), "--masks", str(masks),
                           "--pseudonymise", "--salt", "s3cret"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    man = pd.read_csv(out)
    ids = {p: manifest.pseudonymise(p, "s3cret") for p in ("99000", "Patient_01", "NOART", "NOSEG", "GHOST")}
    assert list(man["patient_id"]) == [ids["99000"], ids["Patient_01"]]
    assert list(man.columns[:4]) == ["patient_id", "centre", "cohort", "label"]
    assert {"TBIL", "cirrhosis"} <= set(man.columns)
    # pseudonymised: every series and mask is a copy under the pseudonym (no export path in the manifest)
    for c in ("image_plain", "image_arterial", "image_portal", "mask"):
        assert all(v.startswith(("images/", "masks/")) for v in man[c]), c
    # left out, with reasons, not silently
    rep = pd.read_csv(out.with_name("manifest.import-report.csv")).set_index("patient_id")
    assert "no arterial series" in rep.loc[ids["NOART"], "detail"]
    assert "no DICOM-SEG" in rep.loc[ids["NOSEG"], "detail"]
    assert "not in the export" in rep.loc[ids["GHOST"], "detail"]
    assert "NOART" not in proc.stdout or "left out" in proc.stdout
    assert "'DELAYED'" in proc.stdout and "excluded" in proc.stdout  # descriptions on the terminal only
    # the DICOM-SEG liver equals the same liver as NRRD (dcmqi's own conversion), voxel for voxel
    cases = manifest.validate_manifest(out, coding={"TBIL": None, "cirrhosis": [0, 1]})
    imgs, mask = manifest.load_patient(cases.iloc[0])
    nrrd = sitk.GetArrayFromImage(images.read_image(examples / ABD / "liver_seg.nrrd", kind="mask"))
    got = sitk.GetArrayFromImage(mask)
    assert got.shape == nrrd.shape and got.sum() > 1000
    assert np.array_equal(got > 0, nrrd > 0)
    # the arterial NIfTI copy equals the DICOM series it came from
    art = sitk.GetArrayFromImage(imgs["arterial"])
    por = sitk.GetArrayFromImage(imgs["portal"])
    assert np.array_equal(art, por)  # the copies share the pixels of the original series
    # accepted by the check of a run; inputs unchanged
    params = tmp_path / "own.yaml"
    params.write_text(yaml.safe_dump({"run": "own", "data": {"source": "manifest", "manifest": str(out)}}))
    rep = chk.check(params, progress=False)
    assert rep.ok, rep.text()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    # no header text and no original id in anything written
    for f in [out, out.with_name("manifest.import-report.csv")] + sorted((out.parent).rglob("*.nii.gz")):
        data = f.read_bytes()
        if f.suffix == ".gz":
            import gzip
            data = gzip.decompress(data)
        for s in HEADER_TEXT + ["NOART", "NOSEG", "GHOST", "99000"]:
            assert s.encode() not in data, (s, f)


def test_segment_choice_by_label_and_missing_label(export, tmp_path):
    t, root, masks = export
    out = tmp_path / "m.csv"
    res = di.import_dicom(root, out, clinical=t / "clinical.csv", masks=masks, segment="Liver", progress=False)
    assert "99000" in set(res.manifest["patient_id"])
    # not pseudonymised: the mixed folder is written as NIfTI copies, one-series folders are referenced
    abd, hcc = res.manifest.iloc[0], res.manifest.iloc[1]
    assert abd["image_arterial"].startswith("images/") and abd["mask"].startswith("masks/")
    assert hcc["image_portal"].endswith("Patient_01/series1") and hcc["mask"].endswith("Patient_01.nii.gz")
    res = di.import_dicom(root, out, clinical=t / "clinical.csv", masks=masks, segment="Tumor", progress=False)
    assert "99000" not in set(res.manifest["patient_id"])
    assert "segment 'Tumor' not in the segmentation (it has Liver)" in \
        res.report.set_index("patient_id").loc["99000", "detail"]
