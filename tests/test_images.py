"""Image reading: one anatomical orientation (LPS) whatever the file's direction cosines."""
import numpy as np
import pytest
import SimpleITK as sitk

from hcc25d import config, crop25d, images


def _flip_to_ras(img):
    """The same volume stored the way RAS-writing tools store it: x and y reversed, direction (-1, -1, 1),
    the origin at the voxel that is now first — every voxel keeps its physical position and value."""
    a = sitk.GetArrayFromImage(img)[:, ::-1, ::-1]
    out = sitk.GetImageFromArray(np.ascontiguousarray(a))
    out.SetSpacing(img.GetSpacing())
    nx, ny = img.GetSize()[0] - 1, img.GetSize()[1] - 1
    out.SetOrigin(img.TransformIndexToPhysicalPoint((nx, ny, 0)))
    out.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return out


def test_flipped_direction_gives_identical_instances(examples, tmp_path):
    d = examples / "lung1_ct"
    img = images.read_image(d / "lung1_image.nrrd")
    lab = images.read_image(d / "lung1_label.nrrd", kind="mask")
    for name, im in (("ras_image.nii.gz", _flip_to_ras(img)), ("ras_mask.nii.gz", _flip_to_ras(lab))):
        sitk.WriteImage(im, str(tmp_path / name))
    raw = sitk.ReadImage(str(tmp_path / "ras_image.nii.gz"))
    assert np.allclose(raw.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))  # stored as RAS-style
    img2 = images.read_image(tmp_path / "ras_image.nii.gz")
    lab2 = images.read_image(tmp_path / "ras_mask.nii.gz", kind="mask")
    assert np.allclose(img2.GetDirection(), np.eye(3).ravel())
    assert np.allclose(img2.GetOrigin(), img.GetOrigin()) and np.allclose(img2.GetSpacing(), img.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(img2), sitk.GetArrayFromImage(img))
    prm = config.CropCfg(channels=("portal", "portal", "portal"), image_size=32, cube_size=16)
    out = []
    for im, m in ((img, lab), (img2, lab2)):
        vol, mm, _, _ = crop25d.resample_and_window({"portal": im}, sitk.Cast(m > 0, sitk.sitkUInt8), prm)
        out.append(crop25d.crop_arrays(vol, mm, prm, prm.spacing_mm)[0])
    assert np.array_equal(out[0][0], out[1][0])  # the 2.5D instances
    assert out[0][1] == out[1][1] and np.array_equal(out[0][2], out[1][2])  # index rows and 3D cube
    # reading without reorientation keeps the file's layout (the images really were mirrored)
    as_stored = images.read_image(tmp_path / "ras_image.nii.gz", orient=False)
    assert not np.array_equal(sitk.GetArrayFromImage(as_stored), sitk.GetArrayFromImage(img))


def test_oblique_direction_is_resampled_to_lps():
    a = np.zeros((20, 40, 40), np.int16)
    a[8:12, 15:25, 15:25] = 100
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.0, 1.0, 2.0))
    t = np.radians(10)
    img.SetDirection((np.cos(t), -np.sin(t), 0, np.sin(t), np.cos(t), 0, 0, 0, 1))
    assert not images.is_axis_aligned(img.GetDirection())
    out = images.to_lps(img)
    assert np.allclose(out.GetDirection(), np.eye(3).ravel())
    # the bright block stays where it was in space
    centre = img.TransformContinuousIndexToPhysicalPoint((19.5, 19.5, 9.5))
    idx = out.TransformPhysicalPointToIndex(centre)
    assert sitk.GetArrayFromImage(out)[idx[2], idx[1], idx[0]] > 50
    m = images.to_lps(sitk.Cast(img > 50, sitk.sitkUInt8), kind="mask")
    assert set(np.unique(sitk.GetArrayFromImage(m))) <= {0, 1}


@pytest.mark.parametrize("direction,aligned", [((1, 0, 0, 0, 1, 0, 0, 0, 1), True),
                                               ((0, 1, 0, -1, 0, 0, 0, 0, 1), True),
                                               ((0.9, 0.1, 0, -0.1, 0.9, 0, 0, 0, 1), False)])
def test_axis_alignment(direction, aligned):
    assert images.is_axis_aligned(direction) is aligned
