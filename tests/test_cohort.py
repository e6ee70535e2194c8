"""Cohort specification and the statistics of Tables 1 and 2."""
import copy

import numpy as np
import pytest
import yaml

from hcc25d import cohort, paper, twin_clinical


@pytest.fixture(scope="module")
def spec():
    return cohort.load_spec()


@pytest.fixture(scope="module")
def patients(spec):
    return twin_clinical.generate_clinical(spec, 20240601)


def raw_spec():
    return yaml.safe_load(cohort.DEFAULT_SPEC.read_text())


def test_default_spec_sizes(spec):
    assert {c: spec.n(c) for c in cohort.COHORTS} == {"training": 162, "internal": 70, "external": 91}
    assert spec.n_total == 323
    assert len(spec.categorical) == 20 and list(spec.continuous) == ["TBIL"]


def test_training_scale_multiplies_the_training_counts_only(spec):
    big = cohort.load_spec("default", 3)
    assert {c: (big.n(c, 0), big.n(c, 1)) for c in cohort.COHORTS} == {
        "training": (171, 315), "internal": (14, 56), "external": (38, 53)}
    for var, d in spec.categorical.items():
        for o in (0, 1):
            assert big.categorical[var]["counts"]["training"][o] == [3 * k for k in d["counts"]["training"][o]]
            for c in ("internal", "external"):
                assert big.categorical[var]["counts"][c][o] == d["counts"][c][o]
    assert big.continuous == spec.continuous and spec.n("training") == 162  # the original is untouched
    # the scaled specification is itself valid, and the twin draws exactly its counts
    patients = twin_clinical.generate_clinical(big, 20240601)
    assert (patients["cohort"].value_counts().to_dict()
            == {"training": 486, "external": 91, "internal": 70})
    t1 = cohort.table1(patients, big).set_index(["variable", "level", "cohort"])
    assert int(t1.loc[("mvi", "Yes", "training"), "n1"]) == 3 * spec.categorical["mvi"]["counts"]["training"][1][1]
    # percentages stay the paper's
    assert float(t1.loc[("mvi", "Yes", "training"), "pct1"]) == pytest.approx(
        100 * spec.categorical["mvi"]["counts"]["training"][1][1] / 105, abs=0.01)
    for bad in (0, 1.5, True):
        with pytest.raises(cohort.CohortSpecError, match="training_scale"):
            cohort.scale_training(spec, bad)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["categorical"].__setitem__("shoe_size", copy.deepcopy(s["categorical"]["age"])), "shoe_size: unknown variable"),
    (lambda s: s["categorical"]["age"]["counts"]["training"].__setitem__(0, [-1, 58]), "counts must be integers >= 0"),
    (lambda s: s["categorical"]["mvi"]["counts"]["internal"].__setitem__(1, [20, 30]), "add up to 50, but cohort internal has 56"),
    (lambda s: s["cohorts"].pop("external"), "expected exactly training, internal, external"),
    (lambda s: s["continuous"]["TBIL"]["stats"]["training"].__setitem__(0, [19.15]), "expected [mean, sd]"),
])
def test_bad_spec_is_reported_by_field(tmp_path, mutate, message):
    s = raw_spec()
    mutate(s)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(s))
    with pytest.raises(cohort.CohortSpecError) as err:
        cohort.load_spec(p)
    assert message in str(err.value)


def test_all_problems_reported_together(tmp_path):
    s = raw_spec()
    s["categorical"]["age"]["counts"]["training"][0] = [-1, 58]
    s["categorical"]["mvi"]["counts"]["internal"][1] = [20, 30]
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(s))
    with pytest.raises(cohort.CohortSpecError, match="2 problem"):
        cohort.load_spec(p)


def test_table1_matches_paper_counts_percentages_and_p(spec, patients):
    t1 = cohort.table1(patients, spec)
    comp = paper.compare_table1(t1, spec)
    cat = comp[~comp["item"].str.startswith("TBIL (µmol/L) P")]
    assert cat["match"].all(), cat[~cat["match"].astype(bool)]
    # 20 categorical P values per cohort, each equal to the paper's at 3 decimals
    pv = comp[comp["item"].str.endswith(" P") & ~comp["item"].str.startswith("TBIL")]
    assert len(pv) == 60 and pv["match"].all()


def test_chi2_uses_continuity_correction():
    # Table 1, training, MVI: 40/17 vs 49/56 -> paper P = 0.007 (0.004 without Yates' correction)
    assert round(cohort.categorical_test(np.array([[40, 49], [17, 56]])), 3) == 0.007


def test_continuous_test_switches_on_normality():
    rng = np.random.default_rng(0)
    p, test = cohort.continuous_test(rng.normal(0, 1, 60), rng.normal(0, 1, 60))
    assert test == "t-test"
    p, test = cohort.continuous_test(rng.lognormal(0, 1.5, 60), rng.lognormal(0, 1.5, 60))
    assert test == "Mann-Whitney U"


def test_table2_paper_columns_match_all_univariable_rows(spec, patients):
    t2 = cohort.table2(patients, spec)
    comp = paper.compare_table2(t2, spec)
    uni = comp[comp["table"] == "Table 2 univariable"]
    assert len(uni) == 21 * 4
    assert uni["match"].all(), uni[~uni["match"]]


def test_table2_selects_paper_variables_and_logistic_is_larger(spec, patients):
    t2 = cohort.table2(patients, spec).set_index("variable")
    assert set(t2.index[t2["selected"]]) == {"tumor_size", "mvi", "differentiation", "ki67"}
    # the logistic odds ratio is further from 1 than exp(beta) of the linear-probability model
    for v in ("tumor_size", "mvi", "differentiation", "ki67"):
        assert t2.loc[v, "or_logit"] > t2.loc[v, "or_paper"] > 1


def test_paper_example_rows(spec, patients):
    t2 = cohort.table2(patients, spec).set_index("variable")
    d = t2.loc["differentiation"]
    assert abs(round(d.or_paper, 3) - 1.263) <= 1e-9
    assert abs(round(d.lo_paper, 3) - 1.117) <= 0.001 + 1e-9 and abs(round(d.hi_paper, 3) - 1.426) <= 0.001 + 1e-9
    a = t2.loc["afp"]
    assert (round(a.or_paper, 3), round(a.p_paper, 3)) == (1.149, 0.082)


def test_format_p():
    assert cohort.format_p(0.0004) == "<0.001"
    assert cohort.format_p(0.0456) == "0.046"


def test_in_cohort_order_puts_the_book_order_first():
    from hcc25d.cohort import in_cohort_order

    assert in_cohort_order(["external", "training", "external", "internal"]) == ["training", "internal", "external"]
    assert in_cohort_order(["centre B", "external", "training"]) == ["training", "external", "centre B"]
    assert in_cohort_order([]) == []
