"""Ablation stage: which model the variants are compared against."""
from types import SimpleNamespace

import pandas as pd

from hcc25d import ablation, config


def _ctx(cnn_repeats, ablation_repeats):
    cfg = config.from_dict({"cnn": {"repeats": cnn_repeats}, "ablations": {"cnn_repeats": ablation_repeats}})
    full = pd.DataFrame({"patient_id": ["a"], "fold": [0], "backbone": ["litecnn"], "prob": [0.5]})
    return SimpleNamespace(cfg=cfg, full_preds=full, raw=None, fold_of={"a": 0}, backbone="litecnn", cache=None,
                           confounders=None, size=None, first_repeat=None)


def test_full_row_is_retrained_when_the_variants_cross_fit_fewer_times(monkeypatch):
    calls = []

    def fake_retrain(raw, variant, cfg, fold_of, backbone, *a, **k):
        calls.append((variant.key, ablation.ablation_repeats(cfg)))
        return pd.DataFrame({"prob": [0.1]})

    monkeypatch.setattr(ablation, "retrain_cnn", fake_retrain)
    same = _ctx(3, 3)
    assert ablation.full_reference(same) is same.full_preds and not calls
    inherit = _ctx(2, None)  # null: as often as the CNN stage
    assert ablation.ablation_repeats(inherit.cfg) == 2 and ablation.full_reference(inherit) is inherit.full_preds
    fewer = _ctx(3, 1)
    out = ablation.full_reference(fewer)
    assert calls == [("full", 1)] and out["prob"].tolist() == [0.1]
    # the CNN stage's first split alone is the same model set as one retrained cross-fitting: reused
    fewer.first_repeat = pd.DataFrame({"prob": [0.2]})
    assert ablation.full_reference(fewer) is fewer.first_repeat and len(calls) == 1
    two = _ctx(3, 2)  # two repeats: no stored equivalent, retrained
    two.first_repeat = fewer.first_repeat
    ablation.full_reference(two)
    assert calls[-1] == ("full", 2)


def test_retrained_variants_use_the_ablation_repeats(monkeypatch):
    from hcc25d import cnn

    seen = {}

    def fake_crossfit(bags, make, C, seed, **k):
        seen.update(repeats=C.repeats, loss=C.loss, fold_of=k["fold_of"])
        return "preds", None, None, None

    monkeypatch.setattr(cnn, "crossfit_predict", fake_crossfit)
    monkeypatch.setattr(cnn, "reference_shift", lambda bags, how: (bags, None))
    monkeypatch.setattr(ablation, "subset_bags", lambda bags, v, ch: bags)
    cfg = config.from_dict({"cnn": {"repeats": 3, "loss": "bag"}, "ablations": {"cnn_repeats": 1}})
    v = next(v for v in ablation.VARIANTS if v.key == "instance-loss")
    assert ablation.retrain_cnn(None, v, cfg, {"a": 0}, "litecnn", progress=False) == "preds"
    assert seen == {"repeats": 1, "loss": "instance", "fold_of": {"a": 0}}
