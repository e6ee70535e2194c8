"""The helpers of tools/tta_screen.py: the eight poses are the square's symmetries, test-time augmentation
averages the poses' logits, and the scoring switch always restores the package's own predict."""
import numpy as np
import pytest

from tools import tta_screen as ts


def test_dihedral_poses_are_the_eight_symmetries():
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    poses = ts.dihedral_poses(x)
    assert len(poses) == 8 and all(p.shape == x.shape and p.flags.c_contiguous for p in poses)
    assert len({p.tobytes() for p in poses}) == 8  # all distinct
    # every pose moves whole pixels (the same values), keeps channels apart, and includes the identity
    assert all(np.array_equal(np.sort(p[:, 1].ravel()), np.sort(x[:, 1].ravel())) for p in poses)
    assert np.array_equal(poses[0], x)
    flips = [x[..., ::-1, :], x[..., :, ::-1], x[..., ::-1, ::-1], np.swapaxes(x, 2, 3)]
    assert all(any(np.array_equal(f, p) for p in poses) for f in flips)


def test_tta_averages_the_poses_logits(monkeypatch):
    x = np.random.default_rng(0).normal(size=(4, 1, 6, 6)).astype(np.float32)

    def fake_predict(model, xb, batch_size=128, device="cpu", dims=2, amp=False):
        # a "network" that reads the top-left pixel: its logit changes with the pose
        return 1 / (1 + np.exp(-np.asarray(xb)[:, 0, 0, 0]))

    monkeypatch.setattr(ts, "PLAIN_PREDICT", fake_predict)
    got = ts.predict_tta(None, x)
    corners = np.stack([x[:, 0, 0, 0], x[:, 0, 0, -1], x[:, 0, -1, 0], x[:, 0, -1, -1]])
    # the eight poses put each corner at the top left twice: the mean logit is the corners' mean
    assert np.allclose(ts.cnn._logit(got), corners.mean(axis=0), atol=1e-5)
    assert np.allclose(ts.predict_tta(None, x, dims=3), fake_predict(None, x))  # 3D: no poses


def test_scoring_switch_restores_predict():
    plain = ts.cnn.predict
    with pytest.raises(RuntimeError):
        with ts.scoring(True):
            assert ts.cnn.predict is ts.predict_tta
            raise RuntimeError
    assert ts.cnn.predict is plain
