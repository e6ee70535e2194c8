"""2.5D cropping: exact pixels on a hand-built volume, edge cases, the real lung CT, a twin patient."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hcc25d import config, crop25d, manifest
from hcc25d import images

P = config.CropCfg


def test_window():
    assert np.allclose(crop25d.window([-75, 50, 175, -1000, 3000]), [0, 0.5, 1, 0, 1])
    assert np.allclose(crop25d.window([0], width=100, level=0), [0.5])


def _volume(shape=(12, 16, 16)):
    z, y, x = np.indices(shape)
    vol = np.stack([(z * 1000 + y * 100 + x) / 1e4, np.full(shape, 0.25), np.full(shape, 0.75)]).astype(np.float32)
    return vol


def test_exact_pixels_of_each_instance():
    vol = _volume()
    m = np.zeros((12, 16, 16), np.uint8)
    m[5:8, 6:10, 4:8] = 1        # 3 slices, 4 × 4 on each
    m[6, 5:11, 4:8] = 1          # slice 6 is the largest: rows 5-10 (6) × cols 4-7 (4)
    prm = P(axial_offsets=(0, -1, 2), sagittal_offsets=(0,), coronal_offsets=(0,), margin_mm=0, image_size=6,
            box="slice", cube_size=4, cube_mm=4)
    (inst, idx, cube), = crop25d.crop_arrays(vol, m, prm)
    assert [(r["view"], r["offset"], r["slice_index"]) for r in idx] == [
        ("axial", 0, 6), ("axial", -1, 5), ("axial", 2, 8), ("sagittal", 0, 5), ("coronal", 0, 7)]
    # axial 0: rows 5..10, cols 4..7 centred in a 6-wide square -> cols 3..8, exactly the voxels
    assert np.allclose(inst[0, 0], vol[0, 6, 5:11, 3:9])
    # axial -1 (slice 5, its own box rows 6..9, cols 4..7 -> square 4, sampled to 6 px)
    assert inst.shape == (5, 3, 6, 6)
    # axial +2: slice 8 has no ROI; 'keep' uses the central box on slice 8
    assert np.allclose(inst[2, 0], vol[0, 8, 5:11, 3:9])
    # the other channels come through unchanged
    assert np.allclose(inst[:, 1], 0.25) and np.allclose(inst[:, 2], 0.75)
    # sagittal: x = 4..7 tie; the one nearest the centre of mass (5.5), then the lowest -> x = 5;
    # the plane (z, y) is flipped so that superior (high z) is on top
    r = idx[3]
    assert (r["r0"], r["r1"], r["c0"], r["c1"]) == (5, 7, 5, 10)
    # rows z 5..7 centred in a 6-tall square: pixel centres at z = 3.5 .. 8.5 (bilinear), flipped
    zc = np.arange(3.5, 9.5)[::-1]
    expected = (zc[:, None] * 1000 + np.arange(5, 11)[None, :] * 100 + 5) / 1e4
    assert np.allclose(inst[3, 0], expected)
    assert cube.shape == (3, 4, 4, 4)


def test_box_central_aligns_neighbours_and_contains_roi():
    vol = _volume()
    m = np.zeros((12, 16, 16), np.uint8)
    m[4:9, 6:10, 6:10] = 1
    m[6, 4:12, 6:10] = 1
    prm = P(axial_offsets=(0, -2, 2), sagittal_offsets=(), coronal_offsets=(), margin_mm=1, image_size=10)
    (inst, idx, _), = crop25d.crop_arrays(vol, m, prm)
    boxes = {(r["r0"], r["r1"], r["c0"], r["c1"]) for r in idx}
    assert boxes == {(4, 11, 6, 9)}
    assert np.allclose(inst[1, 0], vol[0, 4, 3:13, 3:13])


def test_roi_at_border_pads_with_window_floor_not_wrap():
    vol = _volume() + 0.1
    m = np.zeros((12, 16, 16), np.uint8)
    m[5:7, 0:3, 0:3] = 1
    prm = P(axial_offsets=(0,), sagittal_offsets=(), coronal_offsets=(), margin_mm=2, image_size=7)
    (inst, idx, _), = crop25d.crop_arrays(vol, m, prm)
    a = inst[0, 0]
    # box rows/cols 0..2 plus 2 px margin: -2..4; the first two rows and columns lie outside -> 0
    assert np.all(a[:2, :] == 0) and np.all(a[:, :2] == 0)
    assert np.allclose(a[2:, 2:], vol[0, 5, 0:5, 0:5])
    assert not np.any(np.isclose(a[:2, :], vol[0, 5, -2:, :].mean()))


def test_thin_roi_keep_or_clamp():
    m = np.zeros((20, 16, 16), np.uint8)
    m[9:12, 5:9, 5:9] = 1
    m[10, 4:10, 5:9] = 1
    keep = crop25d.select_instances(m, P(thin_roi="keep", sagittal_offsets=(), coronal_offsets=()))
    clamp = crop25d.select_instances(m, P(thin_roi="clamp", sagittal_offsets=(), coronal_offsets=()))
    assert [r["slice_index"] for r in keep] == [10, 9, 11, 8, 12, 6, 14]
    assert [r["slice_index"] for r in clamp] == [10, 9, 11, 9, 11, 9, 11]


def test_components_largest_or_each():
    vol = _volume((12, 32, 32))
    m = np.zeros((12, 32, 32), np.uint8)
    m[4:8, 2:10, 2:10] = 1
    m[5:7, 20:24, 20:24] = 1
    largest = crop25d.crop_arrays(vol, m, P(image_size=8))
    each = crop25d.crop_arrays(vol, m, P(image_size=8, components="each"))
    assert len(largest) == 1 and len(each) == 2
    assert largest[0][1][0]["c0"] == 2 and each[1][1][0]["c0"] == 20


def test_ties_are_deterministic():
    assert crop25d.max_area_index(np.array([0, 5, 5, 0])) == 1
    assert crop25d.max_area_index(np.array([5, 0, 5, 5])) == 2
    assert crop25d.max_area_index(np.array([1, 3, 2])) == 1
    with pytest.raises(ValueError):
        crop25d.max_area_index(np.zeros(3))


def test_lung1_real_ct(examples):
    d = examples / "lung1_ct"
    img = images.read_image(d / "lung1_image.nrrd")
    lab = images.read_image(d / "lung1_label.nrrd")
    assert np.isclose(img.GetSpacing()[2], 5.0, atol=0.1)
    m0 = sitk.GetArrayFromImage(lab) > 0
    k0 = int(np.argmax(m0.sum(axis=(1, 2))))
    prm = P(channels=("portal", "portal", "portal"))
    vol, m, names, geo = crop25d.resample_and_window({"portal": img}, sitk.Cast(lab > 0, sitk.sitkUInt8), prm)
    assert np.allclose(geo["spacing"], (1, 1, 1))
    insts = crop25d.select_instances(m, prm)
    ax = [r for r in insts if r["view"] == "axial"]
    kc = ax[0]["centre_index"]
    z_of = lambda k: geo["origin"][2] + k * geo["spacing"][2]  # noqa: E731 (identity direction)
    # the chosen slice lies in the original maximal-area slice
    idx = lab.TransformPhysicalPointToIndex((geo["origin"][0], geo["origin"][1], z_of(kc)))
    assert idx[2] == k0
    # offsets land where the geometry says: offset k -> k mm from the central slice
    for r in ax:
        assert np.isclose(z_of(r["slice_index"]) - z_of(kc), r["offset"] * 1.0)
    # every crop contains the whole ROI of its slice
    for r in insts:
        plane = crop25d._plane(m, r["view"], r["slice_index"])
        bb = crop25d._bbox2d(plane)
        if bb is None:
            continue
        side = max(r["r1"] - r["r0"] + 1, r["c1"] - r["c0"] + 1) + 2 * prm.margin_mm
        rc, cc = (r["r0"] + r["r1"]) / 2, (r["c0"] + r["c1"]) / 2
        assert rc - side / 2 <= bb[0] - 0.5 and bb[1] + 0.5 <= rc + side / 2
        assert cc - side / 2 <= bb[2] - 0.5 and bb[3] + 0.5 <= cc + side / 2
    # windowed values in [0, 1]; the solid part of the tumour is soft tissue (mid-grey), while linear
    # interpolation across 5 mm slices mixes in lung at the ROI's ends (partial volume)
    assert vol.min() >= 0 and vol.max() <= 1
    assert np.percentile(vol[0][m > 0], 90) > 0.4


def test_twin_patient_channels_in_paper_order(tmp_path):
    from hcc25d import cohort, twin_clinical, twin_imaging

    pts = twin_clinical.generate_clinical(cohort.load_spec(), 20240601)
    big = pts[(pts.necrosis == 0) & (pts.tumor_size == 1) & (pts.centre == 1)]
    rows = pd.concat([big[big.label == 1].iloc[:1], big[big.label == 0].iloc[:1]]).assign(cohort="training")
    twin_imaging.build_twin(rows, 20240601, config.TwinCfg(), tmp_path, [])
    case = manifest.validate_manifest(tmp_path / "manifest.csv").iloc[0]
    (bags, names, ref, readout) = crop25d.crop_patient(case, P(image_size=64), ("plain", "arterial", "portal"))
    inst, idx, cube = bags[0]
    assert names == ["arterial", "plain", "portal"]
    # the parenchyma reference is the twin's liver: 70 / 55 / 110 HU at centre 1 (window floor -75 HU), the
    # tumour reference the twin's tumour: 118 / 40 / 80 HU (no necrosis; the capsule eroded away)
    hu = lambda k: np.array([ref[f"{k}_{c}"] for c in names]) * 250 - 75  # noqa: E731
    assert np.allclose(hu("ref"), (70, 55, 110), atol=6)
    assert np.allclose(hu("tum"), (118, 40, 80), atol=6)
    assert inst.shape == (9, 3, 64, 64) and cube.shape == (3, 48, 48, 48)
    c = inst[0, :, 28:36, 28:36].mean(axis=(1, 2))
    assert c[0] > c[2] > c[1]  # tumour: arterial > portal > plain


def test_signal_probe_finds_the_phase_that_carries_signal():
    rng = np.random.default_rng(0)
    rows, xs = [], []
    for i in range(80):
        y = i % 2
        for off in (0, 2):
            x = rng.normal(0.4, 0.05, (3, 16, 16)).astype(np.float32)
            x[0] += 0.08 * y * (off == 2)  # signal only in channel 0, only at offset +2
            xs.append(np.clip(x, 0, 1))
            rows.append({"patient_id": f"p{i}", "cohort": "training", "label": y, "view": "axial", "offset": off})
    probe = crop25d.signal_probe(np.stack(xs), pd.DataFrame(rows))
    t = probe.pivot_table(index="phases", columns="slot", values="AUC")
    assert t.loc["arterial", "axial+2"] > 0.9 and t.loc["three phases", "axial+2"] > 0.85
    assert t.loc["portal", "axial+2"] < 0.7 and t.loc["arterial", "axial+0"] < 0.7


def test_trait_readout_follows_each_planted_trait():
    from hcc25d import cohort, twin_clinical, twin_imaging

    pts = twin_clinical.generate_clinical(cohort.load_spec(), 20240601)
    row = pts[(pts.tumor_size == 0) & (pts.tumor_number == 0) & (pts.necrosis == 0)].iloc[0]
    twin = config.TwinCfg(matrix=112, extent_z_mm=64.0)
    prm = P(image_size=48)

    def read(**lat):
        base = {"u_pae": 0.0, "u_satellites": 0.0, "u_heterogeneity": 0.0, **lat}
        imgs, mask = twin_imaging.to_images(twin_imaging.make_patient(row, 20240601, twin, latent=base))
        v, m, names, _ = crop25d.resample_and_window(imgs, mask, prm)
        return crop25d.trait_readout(v, m, prm.spacing_mm, names)

    mid = read()
    assert read(u_pae=2.0)["pae"] > mid["pae"] + 0.01 > read(u_pae=-2.0)["pae"] + 0.01
    assert read(u_heterogeneity=2.0)["heterogeneity"] > 1.5 * read(u_heterogeneity=-2.0)["heterogeneity"]
    assert read(u_satellites=2.0)["nodules"] > read(u_satellites=-2.0)["nodules"]
    # a missing phase leaves its measurements undefined rather than reading a copy
    imgs, mask = twin_imaging.to_images(twin_imaging.make_patient(row, 20240601, twin))
    v, m, _, _ = crop25d.resample_and_window(imgs, mask, prm)
    r = crop25d.trait_readout(v, m, prm.spacing_mm, ["arterial", None, "portal"])
    assert np.isnan(r["pae"]) and np.isfinite(r["heterogeneity"])


def test_channels_say_what_they_hold():
    assert crop25d.channel_summary(["arterial", "plain", "portal"]) == "arterial, plain, portal"
    assert crop25d.channel_summary(["portal (copy)", "portal (copy)", "portal"]) == "portal × 3"
    # a one-phase study's volume: the copied channels are named after the phase they hold
    import SimpleITK as sitk

    a = np.zeros((20, 30, 30), np.float32)
    a[8:12, 10:20, 10:20] = 100
    img = sitk.GetImageFromArray(a)
    m = sitk.GetImageFromArray((a > 0).astype(np.uint8))
    _, _, names, _ = crop25d.resample_and_window({"portal": img}, m, P(image_size=16, cube_size=8))
    assert names == ["portal (copy)", "portal (copy)", "portal"]
    assert not any(n.startswith(("arterial", "plain")) for n in names)


def test_fixed_scale_gives_every_patient_one_pixel_size():
    # a plane whose value is its column index: the step between output columns is the pixel size
    plane = np.tile(np.arange(200, dtype=np.float32), (1, 200, 1))
    steps = []
    for box in ((90, 110, 90, 110), (60, 140, 50, 150)):  # a small and a large ROI
        roi = crop25d.extract_square(plane, box, margin_px=5, size=32)
        fixed = crop25d.extract_square(plane, box, margin_px=5, size=32, side_px=96)
        steps.append((np.diff(roi[0, 0]).mean(), np.diff(fixed[0, 0]).mean()))
        assert fixed[0, 16, 16] == pytest.approx((box[2] + box[3]) / 2 + 1.5, abs=1.6)  # centred on the box
    (roi_small, fixed_small), (roi_large, fixed_large) = steps
    assert roi_large > 3 * roi_small  # the paper's way: the pixel size follows the ROI
    assert fixed_small == pytest.approx(3.0) and fixed_large == pytest.approx(3.0)
