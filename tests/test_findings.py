"""The findings page's generated sentences."""
import pandas as pd

from hcc25d import findings


def _run_dir(tmp_path, n_training):
    d = tmp_path / "data"
    d.mkdir()
    cohorts = ["training"] * n_training + ["internal"] * 3 + ["external"] * 4
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(len(cohorts))], "cohort": cohorts}).to_csv(
        d / "manifest.csv", index=False)
    return tmp_path


def test_limits_state_the_training_cohort_size_and_point_to_the_larger_twin(tmp_path):
    run = _run_dir(tmp_path, 12)
    default = findings.limits(run, twin=True)
    size = [x for x in default if "training patients" in x]
    assert len(size) == 1 and "from 12 training patients" in size[0] and "RUN=training-x3" in size[0]
    scaled = [x for x in findings.limits(run, twin=True, training_scale=3) if "× 3" in x]
    assert len(scaled) == 1 and "(12 patients" in scaled[0] and "RUN=training-x3" not in scaled[0]
    # own data: no twin, no sentence about the twin's training cohort
    assert not [x for x in findings.limits(run, twin=False) if "training patients" in x or "× " in x]
    # a run whose data stage has not written its manifest says nothing about it rather than fail
    assert not [x for x in findings.limits(tmp_path / "nowhere", twin=True) if "training patients" in x]


def test_reproduction_summary_does_not_claim_table1_for_a_scaled_training_cohort():
    table = pd.DataFrame({"table": ["Table 1 (baseline characteristics)", "Table 5 (AUCs)"],
                          "numbers": [567, 12], "reproduced": [463, 3], "not computed": [0, 0]})
    default = findings.reproduction_summary(table, twin=True)
    assert "**466 of the paper's 579 numbers**" in default and "agrees by construction" in default
    scaled = findings.reproduction_summary(table, twin=True, training_scale=3)
    assert "agrees by construction" not in scaled and "× 3" in scaled and "463 of 567" in scaled
    assert "Of the 12 AUCs of Tables 3–5, 3 lie within" in scaled
    assert "Table 1" not in findings.reproduction_summary(table, twin=False)
