"""The Dask engine: a LocalCluster of 2 process workers runs the crop and radiomics steps on a few twin
patients with outputs identical to loky's; a corrupt file fails with the patient's id."""
import hashlib

import numpy as np
import pandas as pd
import pytest

from hcc25d import config, cohort, crop25d, manifest, parallel, twin_clinical, twin_imaging
from hcc25d import radiomics as rad

pytest.importorskip("distributed")
SEED = 20240601


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("twin")
    pts = twin_clinical.generate_clinical(cohort.load_spec(), SEED)
    rows = pts[pts.centre == 1].groupby("label").head(2).assign(cohort="training")
    twin_imaging.build_twin(rows, SEED, config.TwinCfg(matrix=64, spacing_xy=(1.6, 1.8), extent_z_mm=60), d, [])
    return manifest.validate_manifest(d / "manifest.csv")


@pytest.fixture(scope="module")
def client():
    c = parallel.dask_client("local", 2)
    yield c
    parallel.close_dask()


def _csv_bytes(folder, name):
    return hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_engine_strings():
    assert parallel.engine(config.ComputeCfg()) == "loky"
    assert parallel.engine(config.ComputeCfg(backend="dask")) == "dask:local"
    assert parallel.engine(config.ComputeCfg(backend="dask", scheduler="tcp://h:8786")) == "dask:tcp://h:8786"


def test_dask_workers_are_single_threaded_processes(client):
    info = client.scheduler_info()["workers"]
    assert len(info) == 2 and all(w["nthreads"] == 1 for w in info.values())
    import SimpleITK as sitk

    threads = client.run(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads)
    assert set(threads.values()) == {1}
    env = client.run(lambda: __import__("os").environ.get("OMP_NUM_THREADS"))
    assert set(env.values()) == {"1"}


def test_crop_and_radiomics_identical_to_loky(cases, client, tmp_path):
    prm = config.CropCfg(image_size=32, cube_size=16)
    phases = ("plain", "arterial", "portal")
    out = {}
    for engine in ("loky", "dask:local"):
        d = tmp_path / engine.replace(":", "_")
        out[engine] = crop25d.crop_all(cases, prm, phases, None, d, n_jobs=2, backend=engine, progress=False)
    a, b = tmp_path / "loky", tmp_path / "dask_local"
    assert _csv_bytes(a, "index.csv") == _csv_bytes(b, "index.csv")
    assert _csv_bytes(a, "trait_readout.csv") == _csv_bytes(b, "trait_readout.csv")
    for f in sorted((a / "instances").glob("*.npz")):
        with np.load(f) as x, np.load(b / "instances" / f.name) as y:
            assert x["x"].tobytes() == y["x"].tobytes()
    params = rad.load_settings(config.RadiomicsCfg().settings)
    f1, _, _ = rad.extract_all(cases, params, phases, n_jobs=2, backend="loky", progress=False)
    f2, _, _ = rad.extract_all(cases, params, phases, n_jobs=2, backend="dask:local", progress=False)
    pd.testing.assert_frame_equal(f1, f2)
    assert f1.to_csv(index=False) == f2.to_csv(index=False)  # byte-identical as written


def test_corrupt_file_is_reported_by_patient_id(cases, client, tmp_path):
    bad = cases.copy()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    bad.loc[bad.index[1], "image_portal"] = str(broken)
    pid = bad.iloc[1]["patient_id"]
    for engine in ("loky", "dask:local"):
        with pytest.raises(parallel.PatientFailed, match=f"patient {pid}: "):
            crop25d.crop_all(bad, config.CropCfg(image_size=32, cube_size=16), ("plain", "arterial", "portal"),
                             None, tmp_path / engine.replace(":", "_"), n_jobs=2, backend=engine, progress=False)
