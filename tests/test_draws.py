"""The helpers of tools/draws.py: a draw changes the seed and the run's name only, one draw's row is read from
its Table 5 and Table 3, and the summary counts the draws that meet each bar."""
import numpy as np
import pandas as pd
import pytest
import yaml

from hcc25d import config
from hcc25d.io import PROJECT_ROOT
from tools import draws


def _base():
    return yaml.safe_load((PROJECT_ROOT / "params" / "synthetic.yaml").read_text())


def test_draw_params_changes_seed_and_run_only():
    base = _base()
    d = draws.draw_params(base, 7)
    assert d["seed"] == 7 and d["run"] == f"{base['run']}-seed7"
    assert {k: v for k, v in d.items() if k not in ("seed", "run", "description")} == \
        {k: v for k, v in base.items() if k not in ("seed", "run", "description")}
    d["cnn"]["epochs"] = 1  # a deep copy: the base is untouched
    assert base["cnn"].get("epochs") != 1
    config.from_dict(d)  # a valid params mapping
    with pytest.raises(ValueError, match="twin"):
        draws.draw_params({**base, "data": {"source": "manifest", "manifest": "m.csv"}}, 7)


def _fake_run(root, name, aucs, refs, inst):
    rows = []
    for c, ref in refs.items():
        for sig, a in aucs[c].items():
            rows.append({"cohort": c, "auc": a, "signature": sig, "reference AUC (image only)": ref})
    (root / name / "evaluation").mkdir(parents=True)
    (root / name / "cnn").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / name / "evaluation" / "tab-table5.csv", index=False)
    pd.DataFrame([
        {"backbone": "litecnn", "cohort": "training (in-sample)", "auc": 0.9, "ci_low_patients": 0.8,
         "ci_high_patients": 0.95},
        {"backbone": "litecnn", "cohort": "training", "auc": inst, "ci_low_patients": inst - 0.06,
         "ci_high_patients": inst + 0.06},
        {"backbone": "litecnn", "cohort": "internal", "auc": 0.7, "ci_low_patients": 0.6, "ci_high_patients": 0.8},
    ]).to_csv(root / name / "cnn" / "tab-table3.csv", index=False)
    return root / name


def test_draw_summary_and_bars(tmp_path):
    refs = {"training": 0.8, "internal": 0.8, "external": 0.9}
    sig = lambda dl, cl, co: {"DL_2.5D": dl, "Clinical": cl, "Combined": co}  # noqa: E731
    a = _fake_run(tmp_path, "a", {"training": sig(0.6, 0.6, 0.65), "internal": sig(0.74, 0.6, 0.7),
                                  "external": sig(0.78, 0.6, 0.7)}, refs, 0.66)
    b = _fake_run(tmp_path, "b", {"training": sig(0.6, 0.6, 0.65), "internal": sig(0.68, 0.6, 0.58),
                                  "external": sig(0.8, 0.6, 0.7)}, refs, 0.62)
    (a / "signatures").mkdir()
    pd.DataFrame({"cohort": ["external", "internal"], "DL_2.5D AUC (harmonised)": [0.75, 0.74],
                  "CNN score AUC": [0.77, 0.73]}).to_csv(a / "signatures" / "tab-centre-harmonisation.csv",
                                                         index=False)
    from hcc25d.cnn import LABEL_REFERENCE
    from hcc25d.twin_imaging import SLOT_REFERENCE

    pd.DataFrame({"cohort": ["training", "internal"], "litecnn": [0.66, 0.7], LABEL_REFERENCE: [0.68, 0.72],
                  SLOT_REFERENCE: [0.76, 0.8]}).to_csv(a / "cnn" / "tab-instance-reference.csv", index=False)
    ra, rb = draws.draw_summary(a), draws.draw_summary(b)
    assert ra["CNN score external"] == 0.77 and ra["DL_2.5D harmonised internal"] == 0.74
    # the instance AUC's yardsticks on the training cohort, and the CNN's share of the ceiling's margin
    assert ra["instance reference training"] == 0.76 and ra["instance latent-taught training"] == 0.68
    assert ra["instance share training"] == pytest.approx(0.16 / 0.26)
    assert "instance reference training" not in rb and "instance share training" not in rb
    assert "CNN score external" not in rb  # a run without the table: the columns are left out
    # share = (AUC - 0.5) / (reference - 0.5): internal 0.24 / 0.3, external 0.28 / 0.4
    assert ra["DL_2.5D share internal"] == pytest.approx(0.8)
    assert ra["DL_2.5D share external"] == pytest.approx(0.7)
    assert ra["meets share bar"] and ra["meets instance bar"] and ra["meets Combined >= Clinical"]
    assert ra["instance ci_low training"] == pytest.approx(0.60)
    # b: internal share 0.6 meets the bar exactly; Combined below Clinical internally; instance 0.62 < 0.65
    assert rb["DL_2.5D share internal"] == pytest.approx(0.6) and rb["meets share bar"]
    assert rb["Combined - Clinical internal"] == pytest.approx(-0.02)
    assert not rb["meets Combined >= Clinical"] and not rb["meets instance bar"]
    s = draws.summarise(pd.DataFrame([ra, rb]))
    assert s.loc["instance AUC training", "mean"] == pytest.approx(0.64)
    assert s.loc["instance AUC training", "sd"] == pytest.approx(np.std([0.66, 0.62], ddof=1))
    assert s.loc["meets share bar", "met"] == 2 and s.loc["meets instance bar", "met"] == 1
    assert s.loc["meets Combined >= Clinical", "met"] == 1 and s.loc["meets Combined >= Clinical", "draws"] == 2
    fig = draws.draws_figure(pd.DataFrame([ra, rb]), highlight="a")
    assert len(fig.axes) == 3 and "2 draws" in fig._suptitle.get_text() and "ringed: a" in fig._suptitle.get_text()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["CNN", "taught the\nlatent score", "slot\nreference"]
    from matplotlib.collections import PathCollection

    dots = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    # one column of dots per yardstick, both draws, each with a black ring around run a's dot
    assert [len(d.get_offsets()) for d in dots] == [2, 1, 2, 1, 2, 1]
    assert np.allclose(dots[1].get_offsets(), dots[0].get_offsets()[:1])
    assert tuple(dots[1].get_edgecolors()[0][:3]) == (0, 0, 0) and dots[1].get_facecolors().size == 0
    fig = draws.draws_figure(pd.DataFrame([rb]))  # draws without the yardsticks: the CNN alone
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["CNN"]


def test_draw_summary_needs_one_out_of_fold_row(tmp_path):
    refs = {"training": 0.8, "internal": 0.8, "external": 0.9}
    s = {"DL_2.5D": 0.7, "Clinical": 0.6, "Combined": 0.7}
    r = _fake_run(tmp_path, "c", {c: s for c in refs}, refs, 0.6)
    t3 = pd.read_csv(r / "cnn" / "tab-table3.csv")
    t3[t3["cohort"] != "training"].to_csv(r / "cnn" / "tab-table3.csv", index=False)
    with pytest.raises(ValueError, match="out-of-fold"):
        draws.draw_summary(r)


def test_share_is_nan_where_the_reference_is_at_chance(tmp_path):
    refs = {"training": 0.8, "internal": 0.5, "external": 0.9}
    s = {"DL_2.5D": 0.7, "Clinical": 0.6, "Combined": 0.7}
    row = draws.draw_summary(_fake_run(tmp_path, "d", {c: s for c in refs}, refs, 0.7))
    # no margin over chance to recover internally: no share, and the bar is not met
    assert np.isnan(row["DL_2.5D share internal"]) and row["DL_2.5D share external"] == pytest.approx(0.5)
    assert not row["meets share bar"] and draws.finished(tmp_path / "d") and not draws.finished(tmp_path / "e")


def test_variant_sets_only_what_it_names():
    assert draws.parse_sets(["cnn.augment.timing=0.3", "signatures.harmonise_centres=true"]) == \
        {"cnn.augment.timing": 0.3, "signatures.harmonise_centres": True}
    with pytest.raises(ValueError, match="only crop, cnn, signatures settings"):
        draws.parse_sets(["twin.signal_scale=2"])  # the twin is the draw's: a variant cannot change it
    with pytest.raises(ValueError, match="key=value"):
        draws.parse_sets(["cnn.epochs"])
    d = draws.draw_params(_base(), 7)
    v = draws.variant_params(d, {"cnn.augment.timing": 0.3}, "timing")
    assert v["run"] == f"{d['run']}-timing" and v["cnn"]["augment"]["timing"] == 0.3
    assert {k: x for k, x in v.items() if k not in ("cnn", "run", "description")} == \
        {k: x for k, x in d.items() if k not in ("cnn", "run", "description")}
    assert {k: x for k, x in v["cnn"].items() if k != "augment"} == \
        {k: x for k, x in d["cnn"].items() if k != "augment"}
    assert "augment" not in d["cnn"]  # the draw's params are untouched
    assert config.from_dict(v).cnn.augment.timing == 0.3
    with pytest.raises(ValueError, match="not a section"):
        draws.variant_params(d, {"cnn.backbones.x": 1}, "t")  # a list, not a section


def test_paired_differences():
    base = pd.DataFrame({"run": ["a", "b", "c"], "DL_2.5D external": [0.6, 0.7, 0.8],
                         "meets share bar": [True, False, True]})
    var = pd.DataFrame({"run": ["a-t", "b-t", "c-t"], "DL_2.5D external": [0.7, 0.7, 0.9],
                        "meets share bar": [True, True, True]})
    diff, s = draws.paired(base, var)
    assert np.allclose(diff["DL_2.5D external"], [0.1, 0.0, 0.1])
    assert list(diff.index) == ["a", "b", "c"]
    assert np.isclose(s.loc["DL_2.5D external", "mean"], 0.2 / 3)
    assert np.isclose(s.loc["DL_2.5D external", "se"], np.std([0.1, 0, 0.1], ddof=1) / np.sqrt(3))
    assert "meets share bar" not in s.index  # booleans are not differenced


def test_a_variant_reruns_the_stages_its_settings_reach():
    # the runner's own stage keys decide: a CNN setting reruns the CNN stage onward, not the 3D baseline
    assert draws.variant_stages({"cnn.augment.timing": 0.3}) == ["cnn", "signatures", "evaluation"]
    assert draws.variant_stages({"signatures.harmonise_centres": True}) == ["signatures", "evaluation"]
    # a cropping setting reaches the images stage's per-slot trait tables, the crops and all that reads them;
    # not the radiomics, which read only the images (the draw's own, drawn again bit for bit)
    crop = draws.variant_stages({"crop.scale": "fixed"})
    assert crop == ["data", "crop25d", "cnn", "cnn3d", "signatures", "evaluation"]
    assert draws.parse_sets(["crop.scale=fixed"]) == {"crop.scale": "fixed"}
    v = draws.variant_params(draws.draw_params(_base(), 7), {"crop.scale": "fixed"}, "fixed")
    assert config.from_dict(v).crop.scale == "fixed"
