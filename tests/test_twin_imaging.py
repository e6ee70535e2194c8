"""The imaging twin: geometry, HCC's phase behaviour, clinical consistency, determinism, the oracle."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from hcc25d import cohort, config, manifest, twin_clinical, twin_imaging
from hcc25d.stats import auc_ci

SEED = 20240601


@pytest.fixture(scope="module")
def patients():
    return twin_clinical.generate_clinical(cohort.load_spec(), SEED)


@pytest.fixture(scope="module")
def prm():
    return config.TwinCfg()


def _pick(patients, **kw):
    m = np.ones(len(patients), bool)
    for k, v in kw.items():
        m &= patients[k].to_numpy() == v
    return patients[m].iloc[0]


def test_geometry_anisotropic_and_centre_specific(patients, prm):
    v1 = twin_imaging.make_patient(_pick(patients, centre=1), SEED, prm)
    v2 = twin_imaging.make_patient(_pick(patients, centre=2), SEED, prm)
    for v in (v1, v2):
        sx, sy, sz = v["spacing"]
        assert sx < 1 and sy < 1 and 1 <= sz <= 2.5
        assert v["phases"]["plain"].dtype == np.int16 and v["mask"].dtype == np.uint8
    assert v1["spacing"] != v2["spacing"]
    # centre 2 is noisier: compare the SD in a homogeneous far corner region after removing structure
    noise = [np.std(np.diff(v["phases"]["plain"].astype(float), axis=2)) for v in (v1, v2)]
    assert noise[1] > noise[0]


def test_vessel_roi_reads_each_centres_arterial_timing_from_the_images(patients, prm):
    """The twin's vessel ROI readings (the manifest's ``vessel_hu_<phase>``) are measured on the generated
    images: centre 2's later arterial phase shows as an arterial enhancement of the blood 0.85 times centre
    1's, its HU offset in the plain reading; an empty vessel gives NaN."""
    enh = {}
    for c in (1, 2):
        rows = patients[patients["centre"] == c].iloc[:3]
        v = [twin_imaging.make_patient(r, SEED, prm)["vessel_hu"] for _, r in rows.iterrows()]
        enh[c] = np.mean([h["arterial"] - h["plain"] for h in v])
        off = np.mean([h["plain"] for h in v]) - twin_imaging.HU["major_vessel"][0]
        assert abs(off - prm.hu_offset[c - 1]) < 2.0
        assert all(h["portal"] > h["arterial"] > h["plain"] for h in v)
    base = twin_imaging.HU["major_vessel"][1] - twin_imaging.HU["major_vessel"][0]
    assert abs(enh[1] - base) < 3.0
    assert abs(enh[2] / enh[1] - prm.arterial_timing[1] / prm.arterial_timing[0]) < 0.03
    empty = twin_imaging.vessel_roi_hu({"plain": np.zeros((4, 4, 4))}, np.zeros((4, 4, 4), bool), (1, 1, 1))
    assert np.isnan(empty["plain"])


def test_hcc_phase_behaviour(patients, prm):
    row = _pick(patients, centre=1, necrosis=0, tumor_size=1)
    v = twin_imaging.make_patient(row, SEED, prm)
    m = v["mask"].astype(bool)
    core = ndimage.binary_erosion(m, iterations=3)
    shell = ndimage.binary_dilation(m, iterations=12) & ~ndimage.binary_dilation(m, iterations=6)
    mean = {ph: (v["phases"][ph][core].mean(), np.median(v["phases"][ph][shell])) for ph in twin_imaging.PHASES}
    assert mean["arterial"][0] > mean["arterial"][1] + 20   # arterial hyper-enhancement
    assert mean["portal"][0] < mean["portal"][1] - 15       # portal wash-out
    assert mean["plain"][0] < mean["plain"][1]              # hypodense before contrast
    assert 80 < mean["portal"][1] < 140                     # liver around 110 HU in the portal phase


def test_clinical_row_is_visible(patients, prm):
    small = twin_imaging.make_patient(_pick(patients, tumor_size=0, tumor_number=0), SEED, prm)
    big = twin_imaging.make_patient(_pick(patients, tumor_size=1, tumor_number=0), SEED, prm)

    def diameter(v):
        m = v["mask"]
        xs = np.flatnonzero(m.any(axis=(0, 1)))
        return (xs.max() - xs.min() + 1) * v["spacing"][0]

    assert diameter(small) < 50 <= diameter(big)
    multi = twin_imaging.make_patient(_pick(patients, tumor_number=1), SEED, prm)
    assert ndimage.label(multi["mask"])[1] >= 2
    assert ndimage.label(small["mask"])[1] == 1
    nec = twin_imaging.make_patient(_pick(patients, necrosis=1, tumor_size=1), SEED, prm)
    m = nec["mask"].astype(bool)
    k = int(np.argmax(m.sum(axis=(1, 2))))
    centre = tuple(int(c) for c in ndimage.center_of_mass(m[k]))
    assert nec["phases"]["arterial"][k][centre] < 70  # the non-enhancing core


def test_patient_depends_only_on_seed_and_patient(patients, prm, tmp_path):
    row = patients.iloc[5]
    a = twin_imaging.make_patient(row, SEED, prm)
    b = twin_imaging.make_patient(row, SEED, prm)
    assert all(np.array_equal(a["phases"][p], b["phases"][p]) for p in twin_imaging.PHASES)
    c = twin_imaging.make_patient(row, SEED + 1, prm)
    assert not np.array_equal(a["phases"]["plain"], c["phases"]["plain"])
    # generating it among other patients (a subset) gives the same files
    sub1 = patients.iloc[[5, 6]]
    sub2 = patients.iloc[[3, 5]]
    m1, _, _ = twin_imaging.build_twin(sub1, SEED, prm, tmp_path / "one", [])
    m2, _, _ = twin_imaging.build_twin(sub2, SEED, prm, tmp_path / "two", [], n_jobs=2)
    pid = row["patient_id"]
    f1 = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one" / "images" / pid / "arterial.nii.gz")))
    f2 = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / "images" / pid / "arterial.nii.gz")))
    assert np.array_equal(f1, f2)
    im = sitk.ReadImage(str(tmp_path / "one" / "images" / pid / "mask.nii.gz"))
    assert np.allclose(im.GetSpacing(), a["spacing"])


def test_twin_manifest_validates(patients, prm, tmp_path):
    sub = twin_clinical.imaging_subset(patients, 14, SEED)
    spec = cohort.load_spec()
    twin_imaging.build_twin(sub, SEED, prm.__class__(matrix=48, spacing_xy=(2.0, 2.2), extent_z_mm=60), tmp_path, spec.variables)
    out = manifest.validate_manifest(tmp_path / "manifest.csv", clinical_variables=spec.variables)
    assert len(out) == len(sub) and (out["grid"] == "same").all()
    assert set(spec.variables) <= set(out.columns)


def test_latent_signal_and_oracle(patients):
    lat = pd.DataFrame([{"patient_id": r["patient_id"], **twin_imaging.draw_latent(r, SEED)} for _, r in patients.iterrows()])
    df = patients.merge(lat, on="patient_id")
    for k in ("u_pae", "u_satellites", "u_heterogeneity"):
        assert df.loc[df.label == 1, k].mean() > df.loc[df.label == 0, k].mean()
    oracle = twin_imaging.oracle_probabilities(patients, lat)
    auc = auc_ci(oracle["label"], oracle["oracle_prob"]).auc
    img_only = auc_ci(oracle["label"], oracle["imaging_llr"]).auc
    assert 0.75 < auc < 0.99 and 0.6 < img_only < auc
    # no imaging signal: the imaging part carries nothing
    lat0 = pd.DataFrame([{"patient_id": r["patient_id"], **twin_imaging.draw_latent(r, SEED, 0.0)} for _, r in patients.iterrows()])
    o0 = twin_imaging.oracle_probabilities(patients, lat0, 0.0)
    assert np.allclose(o0["imaging_llr"], 0)


@pytest.fixture(scope="module")
def contrast(patients):
    """The planted contrast measured on the crops of two small-tumour patients, both twin layouts."""
    from hcc25d import config

    crop = config.CropCfg(image_size=64)
    rows = patients[(patients["tumor_size"] == 0) & (patients["tumor_number"] == 0)].iloc[:2]
    out = {}
    for pos in ("offcentre", "central"):
        twin = config.TwinCfg(signal_position=pos, matrix=112, extent_z_mm=64.0)  # small tumours fit
        out[pos] = pd.concat([twin_imaging.planted_contrast(r, SEED, twin, crop, t).assign(patient_id=r["patient_id"])
                              for _, r in rows.iterrows() for t in twin_imaging.TRAIT_REGIONS], ignore_index=True)
    return out


def _slot(df, trait, phase):
    g = df[(df["trait"] == trait) & (df["phase"] == phase)]
    return g.pivot_table(index="patient_id", columns="slot", values="contrast")


def test_peritumoral_enhancement_sits_4_to_6_mm_off_the_central_slice(contrast):
    pae = _slot(contrast["offcentre"], "u_pae", "arterial")
    side = pae[["axial-4", "axial+4"]].max(axis=1)       # above or below, per patient
    assert (side > 0.04).all()                              # clearly visible 4 mm away ...
    assert (pae["axial+0"] < 0.2 * side).all()              # ... and not on the central slice
    assert (pae[["axial-1", "axial+1"]].max(axis=1) < 0.5 * side).all()
    # the negative control puts it on the central slice, with the same strength
    nc = _slot(contrast["central"], "u_pae", "arterial")
    assert (nc["axial+0"] > 4 * nc[["axial-4", "axial+4"]].max(axis=1)).all()
    assert nc["axial+0"].mean() > 0.5 * side.mean()


def test_arterial_only_traits_and_heterogeneity_in_every_phase(contrast):
    df = contrast["offcentre"]
    for trait in ("u_pae", "u_satellites"):
        assert _slot(df, trait, "arterial").max(axis=1).gt(0.04).all(), trait
        for phase in ("plain", "portal"):  # invisible outside the arterial phase
            assert _slot(df, trait, phase).to_numpy().max() < 0.005, (trait, phase)
    het = {ph: _slot(df, "u_heterogeneity", ph) for ph in ("arterial", "plain", "portal")}
    for ph, t in het.items():  # in every phase and on every slot, the central one included
        assert (t > 0.03).all().all(), ph
    assert np.allclose(het["plain"].to_numpy(), het["portal"].to_numpy(), rtol=0.2)


def test_reference_auc_unchanged_by_signal_position(patients):
    lat = pd.DataFrame([{"patient_id": r["patient_id"], **twin_imaging.draw_latent(r, SEED)} for _, r in patients.iterrows()])
    ref = twin_imaging.oracle_probabilities(patients, lat)
    for c, g in ref.groupby("cohort"):
        assert 0.78 <= auc_ci(g["label"], g["imaging_llr"]).auc <= 0.86, c  # the image-only reference


def test_slot_reference_reads_the_traits_each_slot_shows(patients, contrast):
    lat = pd.DataFrame([{"patient_id": r["patient_id"], **twin_imaging.draw_latent(r, SEED)}
                        for _, r in patients.iterrows()])
    oracle = twin_imaging.oracle_probabilities(patients, lat).set_index("patient_id")
    vis = {pos: twin_imaging.visible_traits(c) for pos, c in contrast.items()}
    off, cen = vis["offcentre"], vis["central"]
    # measured on the images: the peritumoral enhancement is off the central slice and on it in the
    # negative control; heterogeneity on every slot
    assert not off.loc["axial+0", "u_pae visible"] and off.loc[["axial-4", "axial+4"], "u_pae visible"].any()
    assert cen.loc["axial+0", "u_pae visible"] and off["u_heterogeneity visible"].all()
    pts = patients.set_index("patient_id")
    inst = pd.DataFrame([{"patient_id": p, "cohort": pts.loc[p, "cohort"], "label": pts.loc[p, "label"],
                          "view": s.rstrip("+-0123456789"), "offset": int(s[len(s.rstrip("+-0123456789")):])}
                         for p in pts.index for s in off.index])
    ref = twin_imaging.slot_reference(inst, lat.set_index("patient_id"), pts, contrast["offcentre"])
    slot = ref["view"] + ref["offset"].map("{:+d}".format)
    full = slot.map(off.filter(like="visible").all(axis=1)).to_numpy(bool)
    assert full.any() and (~full).any()
    # a slot that shows all three traits gets the image-only reference exactly; one that shows fewer gets less
    assert np.allclose(ref.loc[full, "llr"], oracle.loc[ref.loc[full, "patient_id"], "imaging_llr"])
    assert not np.allclose(ref.loc[~full, "llr"], oracle.loc[ref.loc[~full, "patient_id"], "imaging_llr"])
    assert set(ref.loc[slot == "axial+0", "visible"]) == {"satellites + heterogeneity"}
    assert np.allclose(ref["prob"], 1 / (1 + np.exp(-ref["llr"])))
    with pytest.raises(ValueError, match="no planted contrast"):
        twin_imaging.slot_reference(inst.assign(offset=9), lat.set_index("patient_id"), pts, contrast["offcentre"])
    with pytest.raises(ValueError, match="no latent traits"):
        twin_imaging.slot_reference(inst, lat.set_index("patient_id").iloc[1:], pts, contrast["offcentre"])


def test_trait_visibility_measures_each_patient_as_planted_contrast_does(patients, contrast):
    """One generation with ``probe`` gives the same phases as without it, and its per-slot measure of each
    peritumoral trait matches :func:`planted_contrast` (two generations per trait) on the same patients,
    down to which slots show the trait; the slots that show the enhancement differ between patients."""
    crop = config.CropCfg(image_size=64)
    twin = config.TwinCfg(matrix=112, extent_z_mm=64.0)
    rows = patients[(patients["tumor_size"] == 0) & (patients["tumor_number"] == 0)].iloc[:2]
    pc = contrast["offcentre"]
    pc = pc[pc["phase"] == "arterial"].set_index(["patient_id", "trait", "slot"])["contrast"]
    shown = {}
    for _, r in rows.iterrows():
        v = twin_imaging.make_patient(r, SEED, twin, probe=True)
        plain = twin_imaging.make_patient(r, SEED, twin)
        assert all(np.array_equal(v["phases"][p], plain["phases"][p]) for p in twin_imaging.PHASES)
        assert v["traits"] == plain["traits"] and "trait_delta" not in plain
        vis = twin_imaging.trait_visibility(v, crop)
        assert set(vis["trait"]) == {"u_pae", "u_satellites"} and len(vis) == 2 * 9
        ref = pc.loc[r["patient_id"]].reindex(pd.MultiIndex.from_frame(vis[["trait", "slot"]])).to_numpy()
        assert np.allclose(vis["contrast"], ref, atol=0.015)
        limit = twin_imaging.VISIBLE_CONTRAST
        assert ((vis["contrast"] >= limit) == (ref >= limit)).mean() >= 17 / 18
        pae = vis[vis["trait"] == "u_pae"].set_index("slot")["contrast"]
        shown[r["patient_id"]] = frozenset(pae.index[pae >= limit])
        # the enhancement is on one side of the largest cross-section: one outer axial slot, not both
        assert (pae["axial+4"] >= limit) != (pae["axial-4"] >= limit)
    assert len(set(shown.values())) == 2  # two patients, two different sets of slots


def test_slot_reference_per_patient_visibility(patients, contrast):
    """With a per-patient visibility table, a patient is credited with a trait only on the slots its own
    images show it on; without one, every patient on every slot the probed patients show it on."""
    lat = pd.DataFrame([{"patient_id": r["patient_id"], **twin_imaging.draw_latent(r, SEED)}
                        for _, r in patients.iloc[:6].iterrows()])
    pts = patients.set_index("patient_id")
    ids = list(lat["patient_id"])
    inst = pd.DataFrame([{"patient_id": p, "cohort": pts.loc[p, "cohort"], "label": pts.loc[p, "label"],
                          "view": "axial", "offset": o} for p in ids for o in (-4, 4)])
    # the enhancement above the tumour for the first three patients, below it for the others
    vis = pd.DataFrame([{"patient_id": p, "trait": "u_pae", "slot": f"axial{o:+d}",
                         "contrast": 0.1 if (o > 0) == (k < 3) else 0.0}
                        for k, p in enumerate(ids) for o in (-4, 4)])
    per = twin_imaging.slot_reference(inst, lat.set_index("patient_id"), pts, contrast["offcentre"],
                                      visibility=vis)
    slot_wise = twin_imaging.slot_reference(inst, lat.set_index("patient_id"), pts, contrast["offcentre"])
    above = per["patient_id"].isin(ids[:3]).to_numpy() == (per["offset"] > 0).to_numpy()
    assert per.loc[above, "visible"].str.contains("peritumoral").all()
    assert not per.loc[~above, "visible"].str.contains("peritumoral").any()
    pae = twin_imaging._trait_llr("pae", lat.set_index("patient_id").loc[per["patient_id"], "u_pae"].to_numpy(),
                                  pts.loc[per["patient_id"], "mvi"].to_numpy(), 1.0)
    probed = slot_wise["visible"].str.contains("peritumoral").to_numpy()  # per slot, as the probe shows it
    assert np.allclose(slot_wise["llr"] - per["llr"], pae * (probed.astype(float) - above))
    with pytest.raises(ValueError, match="no u_pae visibility"):
        twin_imaging.slot_reference(inst, lat.set_index("patient_id"), pts, contrast["offcentre"],
                                    visibility=vis[vis["patient_id"] != ids[0]])
    # the share table: half the patients show the enhancement on each outer slice, all the satellites
    shares = twin_imaging.slot_reference_shares(per)
    assert list(shares.columns) == ["axial+4", "axial-4"]  # the slot AUC table's order (mil.bag_matrix)
    assert list(shares.index) == ["peritumoral enhancement", "satellites", "heterogeneity"]
    assert shares.loc["peritumoral enhancement"].tolist() == [0.5, 0.5]
    expected = per["visible"].str.contains("satellites").groupby(per["offset"]).mean()[[4, -4]].tolist()
    assert shares.loc["satellites"].tolist() == expected
