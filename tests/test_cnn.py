"""CNN stages: weights fallback, leakage-safe cross-fitting, training mechanics, Grad-CAM, 3D network."""
import numpy as np
import pandas as pd
import pytest
import torch

from hcc25d import cnn, cnn3d

PRM = {"epochs": 2, "batch_size": 16, "lr": 0.003, "patience": 3, "val_fraction": 0.25, "deterministic": True,
       "augment": {"flip": True, "rotate_deg": 10.0, "intensity": 0.1}}


def tiny_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 1))


def make_bags(n_train=24, n_int=8, n_ext=8, inst=3, size=16, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    rows, xs = [], []
    k = 0
    for cohort, n in (("training", n_train), ("internal", n_int), ("external", n_ext)):
        for i in range(n):
            y = i % 2
            pid = f"{cohort[:3]}{i:03d}"
            for j in range(inst):
                x = rng.normal(0.5, 0.1, (3, size, size)).astype(np.float32)
                x[0, 4:12, 4:12] += signal * y * 0.3
                xs.append(x)
                rows.append({"patient_id": pid, "bag": pid, "instance": j, "cohort": cohort, "label": y,
                             "view": "axial", "offset": j})
                k += 1
    return cnn.Bags(np.stack(xs).astype(np.float16), pd.DataFrame(rows))


def test_crossfit_never_predicts_a_patient_its_model_saw():
    bags = make_bags()
    preds, logs, final, meta = cnn.crossfit_predict(bags, tiny_model, PRM, seed=1, folds=3, progress=False)
    train = preds[preds["cohort"] == "training"]
    assert train["source"].str.startswith("fold").all()
    for pid, g in train.groupby("patient_id"):
        fold_tag = g["source"].iloc[0]
        assert pid not in meta["trained_on"][fold_tag], (pid, fold_tag)
        assert g["fold"].nunique() == 1
    # every training patient is predicted exactly by one fold model, and the folds partition them
    assert sorted(meta["fold"]) == sorted(train["patient_id"].unique())
    others = preds[preds["cohort"] != "training"]
    assert (others["source"] == "final").all()
    assert not set(others["patient_id"]) & set(meta["trained_on"]["final"])
    # the final model saw every training patient (its in-sample predictions are kept apart)
    assert set(meta["trained_on"]["final"]) == set(train["patient_id"])
    assert preds["prob"].between(0, 1).all() and train["prob_insample"].notna().all()
    assert set(logs["fit"]) == {"fold1", "fold2", "fold3", "final"}


def test_insample_mode_reproduces_papers_way():
    bags = make_bags()
    preds, _, _, meta = cnn.crossfit_predict(bags, tiny_model, PRM, seed=1, folds=3, prediction="insample", progress=False)
    train = preds[preds["cohort"] == "training"]
    assert (train["source"] == "final").all() and np.allclose(train["prob"], train["prob_insample"])
    assert list(meta["trained_on"]) == ["final"]


def test_training_is_deterministic_and_learns():
    bags = make_bags(signal=3.0)
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    prm = dict(PRM, epochs=6, lr=0.01)
    m1, log1 = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=3, progress=False)
    m2, log2 = cnn.train_model(tiny_model, bags.x, y, g, prm, seed=3, progress=False)
    assert np.allclose(cnn.predict(m1, bags.x), cnn.predict(m2, bags.x))
    assert cnn._auc(y, cnn.predict(m1, bags.x)) > 0.9
    assert {"epoch", "train_loss", "lr", "seconds", "images_per_s"} <= set(log1.columns)


def test_checkpoint_resume(tmp_path):
    bags = make_bags()
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    ck = tmp_path / "m.pt"
    full, log_full = cnn.train_model(tiny_model, bags.x, y, g, dict(PRM, epochs=3), seed=5, checkpoint=tmp_path / "full.pt", progress=False)
    # an interrupted run: 2 of 3 epochs, saved under the same fingerprint, then resumed
    cnn.train_model(tiny_model, bags.x, y, g, dict(PRM, epochs=3), seed=5, checkpoint=ck, progress=False)
    state = torch.load(ck, weights_only=False)
    state["epoch"] = 1
    state["log"] = state["log"][:2]
    torch.save(state, ck)
    resumed, log_res = cnn.train_model(tiny_model, bags.x, y, g, dict(PRM, epochs=3), seed=5, checkpoint=ck, progress=False)
    assert len(log_res) == 3 and log_res["epoch"].tolist() == [1, 2, 3]


def test_weights_fallback_is_explicit(monkeypatch):
    import torchvision

    def offline(*a, **k):
        if k.get("weights") is not None:
            raise OSError("no network")
        return orig(*a, **k)

    orig = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(cnn.WeightsUnavailable, match="on_missing_weights: random"):
        cnn.build_model("resnet18", "imagenet", "fail")
    model, info = cnn.build_model("resnet18", "imagenet", "random")
    assert info["used"] == "random" and info["note"].startswith("FALLBACK")
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1)
    _, info = cnn.build_model("resnet18", "none")
    assert info["used"] == "random"


def test_weights_from_path(tmp_path):
    m, _ = cnn.build_model("resnet18", "none")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    m2, info = cnn.build_model("resnet18", str(tmp_path / "w.pt"))
    assert info["used"] == str(tmp_path / "w.pt")
    assert torch.equal(m.state_dict()["conv1.weight"], m2.state_dict()["conv1.weight"])


@pytest.mark.parametrize("name", ["resnet18", "vgg19", "densenet121"])
def test_backbones_get_one_logit_heads(name):
    m, _ = cnn.build_model(name, "none")
    m.eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 1)
    assert cnn.target_layer(m) is not None


def test_gradcam_maps():
    m, _ = cnn.build_model("resnet18", "none")
    x = np.random.default_rng(0).random((2, 3, 64, 64)).astype(np.float32)
    maps = cnn.gradcam(m, x, [1, 0])
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_select_backbone_rule():
    t = pd.DataFrame({"backbone": ["a", "a", "b", "b"], "cohort": ["training", "internal"] * 2, "auc": [0.7, 0.9, 0.8, 0.6]})
    assert cnn.select_backbone(t, "cv")[0] == "b"   # training (out-of-fold) AUC decides, not internal
    assert cnn.select_backbone(t, "a")[0] == "a"
    with pytest.raises(ValueError):
        cnn.select_backbone(t, "vgg19")


def test_resnet3d_shapes():
    m = cnn3d.ResNet3D(3, width=4)
    assert m(torch.zeros(2, 3, 32, 32, 32)).shape == (2, 1)
    blocks = [mod for mod in m.modules() if type(mod).__name__ == "BasicBlock3d"]
    assert len(blocks) == 8  # ResNet-18 layout: 4 stages x 2 basic blocks


@pytest.mark.gpu
def test_gpu_training_step():
    bags = make_bags()
    y = bags.index["label"].to_numpy()
    g = bags.index["patient_id"].to_numpy()
    m, log = cnn.train_model(tiny_model, bags.x, y, g, dict(PRM, amp=True), seed=1, device="cuda", progress=False)
    assert np.isfinite(log["train_loss"]).all()
