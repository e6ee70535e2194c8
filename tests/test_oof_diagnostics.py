"""The helpers of tools/oof_diagnostics.py: permuted outcomes stay within the training cohort and within a
patient, pooling moves only the internal cohort, histogram features are fractions per phase."""
import numpy as np

from tests.test_cnn import make_bags
from tools import oof_diagnostics as od


def test_permuted_labels_stay_per_patient_and_in_training():
    bags = make_bags(n_train=40, n_int=8, n_ext=8, inst=3)
    perm = od.permute_training_labels(bags, seed=3)
    before, after = bags.patients().set_index("patient_id"), perm.patients().set_index("patient_id")
    tr = before["cohort"] == "training"
    # the same labels, moved between training patients; the validation cohorts untouched
    assert sorted(after.loc[tr, "label"]) == sorted(before.loc[tr, "label"])
    assert not (after.loc[tr, "label"] == before.loc[tr, "label"]).all()
    assert (after.loc[~tr, "label"] == before.loc[~tr, "label"]).all()
    # every instance of a patient carries the patient's one label
    assert perm.index.groupby("patient_id")["label"].nunique().max() == 1
    assert perm.x is bags.x and len(perm.index) == len(bags.index)


def test_pool_cohorts_moves_internal_only():
    bags = make_bags(n_train=10, n_int=6, n_ext=4)
    pooled = od.pool_cohorts(bags).patients()["cohort"].value_counts()
    assert pooled["training"] == 16 and pooled["external"] == 4 and "internal" not in pooled


def test_histogram_features_are_fractions_per_phase():
    bags = make_bags(n_train=6, n_int=2, n_ext=2, inst=3, size=16)
    F = od.histogram_features(bags, lo=0.0, hi=1.0, bins=8)
    assert F.shape == (10, 3 * 8)
    sums = F.to_numpy().reshape(10, 3, 8).sum(axis=2)
    # intensities ~ N(0.5, 0.1): nearly all pixels fall inside [0, 1]; the planted square lifts channel 0
    assert np.all(sums > 0.95) and np.all(sums <= 1.0 + 1e-9)
    s = od.patient_scores(bags.index.assign(prob=0.6)).loc[bags.patients()["patient_id"]]
    assert np.allclose(s["score"], np.log(0.6 / 0.4))


def test_view_subset_keeps_only_those_views():
    import pandas as pd
    import pytest

    bags = make_bags(n_train=6, n_int=2, n_ext=2, inst=3, size=16)
    views = np.array(["axial", "sagittal", "coronal"])[np.arange(len(bags.index)) % 3]
    bags = od.crop25d.Bags(bags.x, bags.index.assign(view=views), bags.channels)
    sub = od.view_subset(bags, ["sagittal", "coronal"])
    assert len(sub.index) == 2 * len(bags.index) // 3 and set(sub.index["view"]) == {"sagittal", "coronal"}
    assert np.array_equal(sub.x, bags.x[views != "axial"]) and sub.index.index.equals(pd.RangeIndex(len(sub.index)))
    with pytest.raises(ValueError, match="no instance"):
        od.view_subset(bags, ["oblique"])
    prob = np.where(bags.index["label"] == 1, 0.8, 0.2)
    got = od.view_auc(bags.index.assign(prob=prob), ["sagittal"])
    assert got == {"training": 1.0, "internal": 1.0, "external": 1.0}
