"""`python -m hcc25d check` and the check `run` performs before its first stage: every planted fault is
reported at once, naming patient and column, before any stage runs, and the inputs stay byte-identical."""
import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from hcc25d import check as chk
from hcc25d import manifest, runner

ROOT = Path(__file__).resolve().parent.parent


def _write(arr, path, origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetOrigin(origin)
    sitk.WriteImage(im, str(path))
    return path


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def study(tmp_path):
    """A small valid own-data study (8 patients, all phases) with its params file."""
    d = tmp_path / "study"
    d.mkdir()
    rng = np.random.default_rng(0)
    img = rng.integers(-50, 150, size=(10, 40, 40)).astype(np.int16)  # noise: gzip cannot shrink it away
    m = np.zeros((10, 40, 40), np.uint8)
    m[4:7, 15:25, 15:25] = 1
    for ph in ("plain", "arterial", "portal"):
        _write(img, d / f"{ph}.nii.gz")
    _write(m, d / "mask.nii.gz")
    rows = []
    for i in range(8):
        rows.append(dict(patient_id=f"P{i}", centre=1 if i < 6 else 2,
                         cohort=["train", "internal", "external"][min(i // 3, 2)], label=i % 2,
                         TBIL=12.5 + i, cirrhosis=i % 2, ALBI=1 + i % 3,
                         image_plain="plain.nii.gz", image_arterial="arterial.nii.gz",
                         image_portal="portal.nii.gz", mask="mask.nii.gz"))
    rows[7]["label"] = 0
    rows[6]["label"] = 1
    man = pd.DataFrame(rows)
    man.to_csv(d / "manifest.csv", index=False)
    params = tmp_path / "own.yaml"
    params.write_text(yaml.safe_dump({"run": "own", "data": {"source": "manifest",
                                                              "manifest": str(d / "manifest.csv")}}))
    return d, man, params


def test_valid_study_passes(study):
    d, man, params = study
    rep = chk.check(params, progress=False)
    assert rep.ok, rep.text()
    assert "8 patients, 32 images and masks read in full" in rep.text()


def test_vessel_reference_needs_the_vessel_readings_before_any_stage(study, tmp_path):
    d, man, params = study
    p = tmp_path / "vessel.yaml"
    p.write_text(yaml.safe_dump({"run": "own", "cnn": {"intensity_reference": "vessel"},
                                 "data": {"source": "manifest", "manifest": str(d / "manifest.csv")}}))
    rep = chk.check(p, progress=False)
    assert not rep.ok and "vessel_hu_plain and vessel_hu_arterial" in rep.text()
    man.assign(vessel_hu_plain=40.0, vessel_hu_arterial=[140.0] * 7 + [np.nan]).to_csv(d / "manifest.csv",
                                                                                      index=False)
    rep = chk.check(p, progress=False)
    assert rep.ok, rep.text()
    assert "1 patient(s) without a vessel reading" in rep.text() and "P7" in rep.text()


def test_semicolon_manifest_is_detected_and_equivalent(study):
    d, man, params = study
    man.to_csv(d / "manifest.csv", index=False, sep=";")
    rep = chk.check(params, progress=False)
    assert rep.ok, rep.text()
    assert "manifest delimiter ';' detected" in rep.text()
    a = manifest.validate_manifest(d / "manifest.csv", coding={"TBIL": None})
    man.to_csv(d / "comma.csv", index=False)
    b = manifest.validate_manifest(d / "comma.csv", coding={"TBIL": None})
    pd.testing.assert_frame_equal(a, b)


def test_missing_columns_message_names_the_delimiter(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("patient_id:centre:cohort:label\nA:1:train:0\n")
    with pytest.raises(manifest.ManifestError) as err:
        manifest.read_clinical(p, [])
    msg = str(err.value)
    assert "missing column(s): patient_id, centre, cohort, label" in msg and "delimiter ','" in msg
    assert "'patient_id:centre:cohort:label'" in msg


def test_every_planted_fault_reported_at_once_before_any_stage(study, tmp_path):
    d, man, params = study
    rows = man.to_dict("records")
    # a truncated gzip: header intact, pixel data cut (a header-only read passes it)
    raw = (d / "portal.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (d / "notes.nii.gz").write_bytes(gzip.compress(b"this is a text file, not an image"))
    _write(np.zeros((10, 40, 40), np.uint8), d / "empty_mask.nii.gz")
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "mask.nii.gz")))
    _write(m, d / "far_mask.nii.gz", origin=(900.0, 900.0, 900.0))
    rows[0]["image_portal"] = "truncated.nii.gz"
    rows[1]["image_arterial"] = "notes.nii.gz"
    rows[2]["label"] = "yes"
    rows[3]["cirrhosis"] = 2
    rows[4]["mask"] = "empty_mask.nii.gz"
    rows[5]["mask"] = "far_mask.nii.gz"
    rows.append(dict(rows[7]))  # P7 twice
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False, sep=";")  # and semicolon-separated
    before = _digest(d)

    proc = subprocess.run([sys.executable, "-m", "hcc25d", "check", "--params", str(params)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    out = proc.stderr
    expected = [
        "P0: image_portal truncated.nii.gz unreadable",
        "P1: image_arterial notes.nii.gz unreadable",
        "P2: label 'yes' is not 0 or 1",
        "P3: cirrhosis 2 is outside its coding (0, 1",
        "P4: mask empty_mask.nii.gz is empty",
        "P5: image_plain plain.nii.gz and mask far_mask.nii.gz do not overlap",
        "P7: duplicate patient id on rows 9, 10",
    ]
    for e in expected:
        assert e in out, (e, out)
    assert "manifest delimiter ';' detected" in out
    assert _digest(d) == before  # inputs byte-identical

    # `run` performs the same check before its first stage: nothing runs, nothing is written
    with pytest.raises(chk.CheckFailed) as err:
        runner.run(params, results_root=tmp_path / "results")
    assert all(e in str(err.value) for e in expected)
    run_dir = tmp_path / "results" / "own"
    assert not any(p.is_dir() and p.name not in ("notebooks",) for p in run_dir.iterdir())
    assert not (run_dir / ".check.json").exists()
    assert _digest(d) == before


def test_truncated_gzip_passes_header_read_but_not_full_read(study):
    d, man, params = study
    raw = (d / "portal.nii.gz").read_bytes()
    (d / "portal.nii.gz").write_bytes(raw[: len(raw) // 2])
    manifest.validate_manifest(d / "manifest.csv", full=False)  # the header is intact
    with pytest.raises(manifest.ManifestError, match="image_portal portal.nii.gz unreadable"):
        manifest.validate_manifest(d / "manifest.csv", full=True)


def test_cohort_stage_reader_rejects_label_yes_with_a_message(study):
    d, man, params = study
    man["label"] = man["label"].astype(object)
    man.loc[2, "label"] = "yes"
    man.to_csv(d / "manifest.csv", index=False)
    with pytest.raises(manifest.ManifestError, match=r"P2: label 'yes' is not 0 or 1"):
        manifest.read_clinical(d / "manifest.csv", ["TBIL"])


def test_passed_check_is_remembered_until_a_file_changes(study, tmp_path, monkeypatch):
    d, man, params = study
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    calls = []
    real = chk.check
    monkeypatch.setattr(chk, "check", lambda *a, **k: calls.append(1) or real(*a, **k))
    runner.pre_check(params, run_dir)
    runner.pre_check(params, run_dir)
    assert len(calls) == 1
    (d / "portal.nii.gz").write_bytes((d / "portal.nii.gz").read_bytes()[:200])
    with pytest.raises(chk.CheckFailed, match="portal.nii.gz unreadable"):
        runner.pre_check(params, run_dir)
    assert len(calls) == 2


def test_params_combinations_refused(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"run": "x", "data": {"source": "manifest", "pseudonymise": True}}))
    rep = chk.check(p)
    assert not rep.ok
    assert any(s.startswith("data.manifest: required") for s in rep.problems)
    assert any(s.startswith("data.salt: required") for s in rep.problems)


def test_cut_dicom_slice_is_found_although_the_reader_skips_it(examples, tmp_path):
    """ITK drops a cut file from a series (a silent gap); the full check names it."""
    import shutil

    from hcc25d.images import read_image, verify_complete

    d = tmp_path / "series"
    shutil.copytree(examples / "hcc048_portal_venous_dicom", d)
    verify_complete(d)  # the shipped series is complete (its LICENSE file is not DICOM and is ignored)
    n = read_image(d).GetSize()[2]
    f = sorted(d.glob("*.dcm"))[5]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert read_image(d).GetSize()[2] == n - 1  # what the reader alone would give: one slice fewer
    with pytest.raises(OSError, match=f"{f.name} belongs to the series but the reader left it out"):
        verify_complete(d)


def test_truncated_plain_nifti(tmp_path):
    from hcc25d.images import verify_complete

    f = _write(np.ones((6, 20, 20), np.int16), tmp_path / "a.nii")
    verify_complete(f)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(OSError, match="truncated: .* bytes its header announces"):
        verify_complete(f)
