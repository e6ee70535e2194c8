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
