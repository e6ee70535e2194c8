"""The findings page's generated sentences."""
import json

import numpy as np
import pandas as pd
import pytest

from hcc25d import findings, twin_imaging


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
    # the departure from the paper's input is said where the run made it, and only there
    assert not [x for x in default if "arterial excess" in x]
    assert len([x for x in findings.limits(run, twin=True, arterial_excess=True) if "arterial excess" in x]) == 1


def test_limits_say_a_twin_run_is_one_draw_and_name_its_seed(tmp_path):
    run = _run_dir(tmp_path, 12)
    draw = [x for x in findings.limits(run, twin=True) if "one draw" in x]
    assert len(draw) == 1 and "seed:" not in draw[0] and "tools/draws.py" in draw[0]
    (run / "provenance.json").write_text('{"seed": 4321}')
    draw = [x for x in findings.limits(run, twin=True) if "one draw" in x]
    assert len(draw) == 1 and "`seed: 4321`" in draw[0] and f"params/{run.name}.yaml" in draw[0]
    # own data: one cohort of real patients, no draws
    assert not [x for x in findings.limits(run, twin=False) if "draw" in x]


def test_reproduction_summary_does_not_claim_table1_for_a_scaled_training_cohort():
    table = pd.DataFrame({"table": ["Table 1 (baseline characteristics)", "Table 5 (AUCs)"],
                          "numbers": [567, 12], "reproduced": [463, 3], "not computed": [0, 0]})
    default = findings.reproduction_summary(table, twin=True)
    assert "**466 of the paper's 579 numbers**" in default and "agrees by construction" in default
    scaled = findings.reproduction_summary(table, twin=True, training_scale=3)
    assert "agrees by construction" not in scaled and "× 3" in scaled and "463 of 567" in scaled
    assert "Of the 12 AUCs of Tables 3–5, 3 lie within" in scaled
    assert "Table 1" not in findings.reproduction_summary(table, twin=False)


def _fusion_run(tmp_path, aucs, cv_aucs):
    import json

    (tmp_path / "cnn").mkdir(parents=True)
    (tmp_path / "signatures").mkdir()
    pd.DataFrame({"backbone": "net", "cohort": list(aucs), "auc": list(aucs.values())}).to_csv(
        tmp_path / "cnn" / "tab-patient-level.csv", index=False)
    (tmp_path / "cnn" / "stage_provenance.json").write_text(json.dumps({"selected_backbone": "net"}))
    rows = [{"model": m, "cohort": c, "auc": 0.6, "cv_auc": v} for m, v in cv_aucs.items()
            for c in ("training", "internal")]
    pd.DataFrame(rows).to_csv(tmp_path / "signatures" / "tab-table4.csv", index=False)
    return tmp_path


def test_fusion_input_summary_calls_out_a_low_training_row_and_near_chance_families(tmp_path):
    low = findings.fusion_input_summary(_fusion_run(tmp_path / "a", {"training": 0.56, "internal": 0.68,
                                                                     "external": 0.67},
                                                    {"LR": 0.51, "RF": 0.55}))
    assert "AUC 0.560 on them, against 0.680 internal and 0.670 external" in low
    assert "0.110 below the lower validation AUC" in low and "oof_diagnostics" in low
    assert "span 0.510–0.550: all within 0.1 of chance" in low
    same = findings.fusion_input_summary(_fusion_run(tmp_path / "b", {"training": 0.66, "internal": 0.68,
                                                                      "external": 0.63},
                                                     {"LR": 0.51, "RF": 0.71}))
    assert "agree within 0.05" in same and "below the lower" not in same
    assert "span 0.510–0.710." in same and "near-chance" not in same
    higher = findings.fusion_input_summary(_fusion_run(tmp_path / "c", {"training": 0.70, "internal": 0.68,
                                                                        "external": 0.59}, {"LR": 0.6}))
    assert "not more than 0.05 below the lower of them" in higher and "agree" not in higher
    assert "by -0.020 (internal) and -0.110 (external)" in higher
    # above one validation AUC by more than the margin, within it of the other: both differences are given
    mixed = findings.fusion_input_summary(_fusion_run(tmp_path / "e", {"training": 0.67, "internal": 0.76,
                                                                       "external": 0.72}, {"LR": 0.6}))
    assert "by +0.090 (internal) and +0.050 (external)" in mixed and "below the lower of them" in mixed
    # an in-sample run (no out-of-fold training row) or a run without the CNN stage: nothing to say
    assert findings.fusion_input_summary(_fusion_run(tmp_path / "d", {"internal": 0.7}, {"LR": 0.6})) == ""
    assert findings.fusion_input_summary(tmp_path / "nowhere") == ""


def test_fusion_input_summary_sets_the_families_validation_spread_beside_their_cv_spread(tmp_path):
    run = _fusion_run(tmp_path / "a", {"training": 0.66, "internal": 0.70, "external": 0.70},
                      {"LR": 0.63, "ExtraTrees": 0.635, "XGBoost": 0.62})
    t4 = pd.read_csv(run / "signatures" / "tab-table4.csv")
    ext = pd.DataFrame({"model": ["LR", "ExtraTrees", "XGBoost"], "cohort": "external",
                        "auc": [0.62, 0.66, 0.70], "cv_auc": [0.63, 0.635, 0.62]})
    t4.loc[t4["cohort"] == "internal", "auc"] = [0.78, 0.79, 0.77]
    pd.concat([t4, ext]).to_csv(run / "signatures" / "tab-table4.csv", index=False)
    text = findings.fusion_input_summary(run)
    assert "AUCs span 0.770–0.790 internal and 0.620–0.700 external." in text
    assert "within 0.015 of each other in cross-validation but 0.080 on the external patients" in text
    assert "on the internal patients" not in text and "fusion_spread.py" in text
    # families that agree on the validation cohorts as well: the spans alone
    ext["auc"] = [0.66, 0.67, 0.68]
    pd.concat([t4, ext]).to_csv(run / "signatures" / "tab-table4.csv", index=False)
    calm = findings.fusion_input_summary(run)
    assert "0.660–0.680 external." in calm and "fusion_spread" not in calm
    # a Table 4 without validation rows: nothing added
    t4[t4["cohort"] == "training"].to_csv(run / "signatures" / "tab-table4.csv", index=False)
    bare = findings.fusion_input_summary(run)
    assert "span 0.620–0.635." in bare and "validation cohorts the same" not in bare


def test_fusion_input_summary_calls_out_a_centre_shift_of_the_scores(tmp_path):
    run = _fusion_run(tmp_path / "a", {"training": 0.66, "internal": 0.70, "external": 0.70}, {"LR": 0.6})
    rng = np.random.default_rng(0)
    rows = [{"cohort": c, "prob": 1 / (1 + np.exp(-(rng.normal() + off)))}
            for c, off in (("training", 0.0), ("internal", 0.1), ("external", -1.5)) for _ in range(400)]
    pd.DataFrame(rows).to_csv(run / "cnn" / "instance_probs_selected.csv", index=False)
    (run / "evaluation").mkdir()
    pd.DataFrame({"signature": ["DL_2.5D"] * 3, "cohort": ["training", "internal", "external"],
                  "auc": [0.64, 0.75, 0.58]}).to_csv(run / "evaluation" / "tab-table5.csv", index=False)
    text = findings.fusion_input_summary(run)
    assert "Centre shift: the external patients' instance scores sit -1." in text
    assert "there DL_2.5D has AUC 0.580 and the CNN's mean score 0.700" in text
    assert "internal patients' instance scores" not in text  # 0.1 logit: below the note's threshold
    assert "falls more than 0.05 below the CNN's own score" in text
    below = float(text.split("on average (")[1].split(" %")[0])
    assert 85 <= below <= 98  # most external instances below the training median
    pd.DataFrame({"signature": ["DL_2.5D"] * 3, "cohort": ["training", "internal", "external"],
                  "auc": [0.64, 0.75, 0.69]}).to_csv(run / "evaluation" / "tab-table5.csv", index=False)
    kept = findings.fusion_input_summary(run)
    assert "Centre shift" in kept and "stays within 0.05 of the CNN's own score" in kept
    assert "harmonise_centres" not in kept  # the signatures stage's table is not there
    sig_dir = run / "signatures"
    sig_dir.mkdir(exist_ok=True)
    pd.DataFrame({"cohort": ["external", "internal"], "n": [91, 70], "DL_2.5D AUC (frozen)": [0.69, 0.75],
                  "DL_2.5D AUC (harmonised)": [0.74, 0.75], "CNN score AUC": [0.70, 0.70],
                  "centres moved": ["centre 2: logit mean -1.50, SD 0.80 → +0.00, 1.00", "—"]}).to_csv(
        sig_dir / "tab-centre-harmonisation.csv", index=False)
    (sig_dir / "stage_provenance.json").write_text('{"harmonise_centres": false}')
    both = findings.fusion_input_summary(run)
    assert "gives DL_2.5D an AUC of 0.690 frozen against 0.740 harmonised on the external patients" in both
    assert "internal 0.750" not in both and "use the frozen scores" in both
    (sig_dir / "stage_provenance.json").write_text('{"harmonise_centres": true}')
    assert "use the harmonised scores" in findings.fusion_input_summary(run)
    assert "other multi-instance fusion" not in both  # no table of the other fusion
    pd.DataFrame({"cohort": ["training (cross-validated)", "internal", "external"], "n": [160, 70, 91],
                  "AUC (fusion: paper, this run)": [0.63, 0.78, 0.69],
                  "AUC (fusion: summary)": [0.64, 0.80, 0.72]}).to_csv(sig_dir / "tab-fusion-alternative.csv",
                                                                    index=False)
    alt = findings.fusion_input_summary(run)
    assert ("(`signatures.fusion: summary`: the summary of each patient's instance logits, with no bin fitted on "
            "the training scores; not the paper's), the same family gives DL_2.5D an AUC of 0.720 on the "
            "external patients against this run's 0.690; 0.640 against 0.630 cross-validated") in alt
    assert "0.800 on the internal" not in alt  # the internal scores did not shift
    assert "arterial-timing" not in findings.fusion_input_summary(run)  # no ablation stage
    abl = run / "ablations"
    abl.mkdir()
    full_name, tim_name = "full: 2.5D, three views, three phases", "arterial-timing augmentation"
    pd.DataFrame({"variant": [full_name, full_name, tim_name], "factor": ["reference", "reference", "augmentation"],
                  "features": ["DL alone", "DL + radiomics", "DL alone"], "AUC internal": [0.7, 0.8, 0.69],
                  "AUC external": [0.61, 0.75, 0.68]}).to_csv(abl / "tab-ablations.csv", index=False)
    pd.DataFrame({"variant": [full_name, tim_name], "training": [0.6, 0.6], "internal": [0.7, 0.7],
                  "external": [0.64, 0.71]}).to_csv(abl / "tab-ablations-cnn-patient-mean.csv", index=False)
    tim = findings.fusion_input_summary(run)
    assert ("the DL features alone give an AUC of 0.680 against 0.610 on the external patients, and the CNN's "
            "mean score 0.710 against 0.640.") in tim
    assert "0.690 against" not in tim  # the internal cohort is not shifted
    assert "Over the models the ablation chapter retrains" not in tim  # two models are no spread
    seed_name = "full, retrained with another seed"
    t = pd.read_csv(abl / "tab-ablations.csv")
    t.loc[len(t)] = {"variant": seed_name, "factor": "training noise", "features": "DL alone", "AUC internal": 0.72,
                     "AUC external": 0.60}
    t.to_csv(abl / "tab-ablations.csv", index=False)
    c = pd.read_csv(abl / "tab-ablations-cnn-patient-mean.csv")
    c.loc[len(c)] = {"variant": seed_name, "training": 0.6, "internal": 0.7, "external": 0.69}
    c.to_csv(abl / "tab-ablations-cnn-patient-mean.csv", index=False)
    noisy = findings.fusion_input_summary(run)
    assert "the full model retrained with another seed alone gives 0.600 (CNN score 0.690)" in noisy
    # the fusion's gain against each retrained model's own CNN score: -0.03, -0.03 and -0.09
    assert ("the DL features alone differ from the same model's CNN mean score on the external patients by a "
            "median -0.030 (from -0.090 to -0.030; more than 0.05 below it for 1 of 3)") in noisy
    assert "on the internal patients by a median" not in noisy  # not a shifted cohort
    assert "another intensity reference" not in noisy  # no such row
    t.loc[len(t)] = {"variant": "vessel-normalised", "factor": "intensity reference", "features": "DL alone",
                     "AUC internal": 0.71, "AUC external": 0.74}
    t.to_csv(abl / "tab-ablations.csv", index=False)
    c.loc[len(c)] = {"variant": "vessel-normalised", "training": 0.6, "internal": 0.7, "external": 0.75}
    c.to_csv(abl / "tab-ablations-cnn-patient-mean.csv", index=False)
    (run / "cnn" / "stage_provenance.json").write_text(json.dumps({"selected_backbone": "net",
                                                                   "intensity_reference": "parenchyma"}))
    ref = findings.fusion_input_summary(run)
    assert ("Retrained with another intensity reference (the ablation chapter's rows, each one cross-fitting; this "
            "run's is `parenchyma`), the DL features alone give on the external patients *vessel-normalised* "
            "0.740, CNN score 0.750, against the full model's 0.610, CNN score 0.640.") in ref
    rows = [{"cohort": c, "prob": 0.4} for c in ("training", "internal", "external") for _ in range(5)]
    pd.DataFrame(rows).to_csv(run / "cnn" / "instance_probs_selected.csv", index=False)
    assert "Centre shift" not in findings.fusion_input_summary(run)


def test_instance_summary_says_which_views_the_cnn_loses_on(tmp_path):
    from hcc25d.cnn import LABEL_REFERENCE

    (tmp_path / "cnn").mkdir()
    pd.DataFrame({"cohort": ["training", "internal"], "litecnn": [0.63, 0.68], "histogram reference": [0.55, 0.6],
                  twin_imaging.SLOT_REFERENCE: [0.73, 0.74]}).to_csv(tmp_path / "cnn" / "tab-instance-reference.csv",
                                                                   index=False)
    assert "By view" not in findings.instance_summary(tmp_path)  # no per-slot table: no sentence
    slots = ["axial+0", "axial-1", "axial+1", "sagittal+0", "coronal+0"]

    def write(rows):
        pd.DataFrame([{"model": m, "cohort": c, **dict(zip(slots, v))} for m, c, v in rows]).to_csv(
            tmp_path / "cnn" / "tab-slot-auc-references.csv", index=False)

    write([("litecnn", "training", [0.64, 0.66, 0.68, 0.52, 0.54]),
           (LABEL_REFERENCE, "training", [0.66, 0.68, 0.70, 0.56, 0.58]),
           (twin_imaging.SLOT_REFERENCE, "training", [0.70, 0.73, 0.76, 0.72, 0.74]),
           ("litecnn", "internal", [0.9, 0.9, 0.9, 0.9, 0.9])])  # other cohorts are not read
    text = findings.instance_summary(tmp_path)
    assert "\n\nBy view (training cohort" in text  # its own paragraph
    assert ("By view (training cohort, mean instance AUC over the axial slots and over the sagittal and coronal "
            f"ones): litecnn 0.660 and 0.530; {LABEL_REFERENCE} 0.680 and 0.570; the slot reference 0.730 and "
            "0.730.") in text
    assert "loses most against the reference on the sagittal and coronal instances, which by the reference carry " \
           "about as much as the axial ones" in text
    # the reference reads less on the other views: the shortfall is named, without the 'as much' clause
    write([("litecnn", "training", [0.64, 0.66, 0.68, 0.52, 0.54]),
           (twin_imaging.SLOT_REFERENCE, "training", [0.70, 0.73, 0.76, 0.69, 0.71])])
    text = findings.instance_summary(tmp_path)
    assert "on the sagittal and coronal instances." in text and "carry about as much" not in text
    # the same distance on both views: nothing is named; a larger one on the axial slots is
    write([("litecnn", "training", [0.64, 0.66, 0.68, 0.61, 0.63]),
           (twin_imaging.SLOT_REFERENCE, "training", [0.70, 0.73, 0.76, 0.68, 0.70])])
    assert "loses most" not in findings.instance_summary(tmp_path)
    write([("litecnn", "training", [0.60, 0.62, 0.64, 0.66, 0.68]),
           (twin_imaging.SLOT_REFERENCE, "training", [0.70, 0.73, 0.76, 0.70, 0.72])])
    assert "loses most against the reference on the axial instances." in findings.instance_summary(tmp_path)


def test_instance_summary_sets_the_cnn_beside_its_instance_yardstick(tmp_path):
    (tmp_path / "cnn").mkdir()
    pd.DataFrame({"cohort": ["training", "internal", "external"], "litecnn": [0.63, 0.68, 0.65],
                  "litecnn, before size adjustment": [0.66, 0.67, 0.61],
                  "histogram reference": [0.55, 0.69, 0.59]}).to_csv(tmp_path / "cnn" / "tab-instance-reference.csv",
                                                                     index=False)
    assert findings.instance_summary(tmp_path).endswith("takes 0.030 from the training row.")  # no size table
    pd.DataFrame({"cohort": ["training", "internal", "external"], "AUC size": [0.63, 0.46, 0.46]}).to_csv(
        tmp_path / "cnn" / "tab-score-size-outcome.csv", index=False)
    text = findings.instance_summary(tmp_path)
    assert "Size alone (per patient) reaches AUC 0.630 training, 0.460 internal, 0.460 external" in text
    assert "0.630 training, 0.680 internal, 0.650 external" in text
    assert "reaches 0.550 training, 0.690 internal, 0.590 external" in text
    assert "beats it in training and external" in text
    assert "training AUC is 0.660" in text and "takes 0.030 from the training row" in text
    assert findings.instance_summary(tmp_path / "nowhere") == ""
    assert "instance-level reference" not in text
    # on the twin: the slot reference (the instance-level ceiling) and the share of its margin recovered
    t = pd.read_csv(tmp_path / "cnn" / "tab-instance-reference.csv")
    t[twin_imaging.SLOT_REFERENCE] = [0.75, 0.76, 0.81]
    t.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    text = findings.instance_summary(tmp_path)
    assert text.startswith("At the level of instances (Table 3; training out of fold) litecnn reaches")
    assert "reaches 0.750 training, 0.760 internal, 0.810 external, so litecnn recovers 0.52 training, " \
           "0.69 internal, 0.48 external of its margin over chance." in text
    assert "latent image score" not in text
    # the same network taught the latent image score: what the outcome labels cost, and which gap is larger
    from hcc25d.cnn import LABEL_REFERENCE

    t.insert(2, LABEL_REFERENCE, [0.64, 0.70, 0.66])  # before the CNN's own column would be found first
    t.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    text = findings.instance_summary(tmp_path)
    assert text.startswith("At the level of instances (Table 3; training out of fold) litecnn reaches AUC 0.630")
    assert "the same network on the same folds reaches 0.640 training, 0.700 internal, 0.660 external; " \
           "litecnn, taught the outcome, is 0.010 lower in training, 0.020 lower in internal, " \
           "0.010 lower in external." in text
    assert "(on average 0.107 of 0.120) remains when the network is told what to look for" in text
    t[LABEL_REFERENCE] = [0.75, 0.76, 0.64]
    t.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    text = findings.instance_summary(tmp_path)
    assert "0.120 lower in training, 0.080 lower in internal, 0.010 higher in external." in text
    assert "(on average 0.063 of 0.120) is what the outcome labels fail to teach." in text
    t[LABEL_REFERENCE] = [0.75, 0.68, 0.64]  # no difference on the internal cohort
    t.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    assert "0.120 lower in training, level in internal, 0.010 higher in external." in findings.instance_summary(tmp_path)
    assert "patients resampled" not in findings.instance_summary(tmp_path)  # no Table 3: no interval
    # Table 3's interval with whole patients resampled, for the CNN's rows only
    pd.DataFrame({"backbone": ["litecnn"] * 3 + ["other"], "cohort": ["training", "internal", "external", "training"],
                  "ci_low_patients": [0.55, 0.6, np.nan, 0.1], "ci_high_patients": [0.7, 0.75, np.nan, 0.2]}).to_csv(
        tmp_path / "cnn" / "tab-table3.csv", index=False)
    text = findings.instance_summary(tmp_path)
    assert ("reaches AUC 0.630 training, 0.680 internal, 0.650 external (95 % CI with whole patients resampled: "
            "0.550–0.700 training, 0.600–0.750 internal); a logistic regression") in text


def test_margin_share_per_cohort():
    from hcc25d import evaluation

    auc = pd.Series({"training": 0.6, "internal": 0.7, "external": 0.55})
    ref = pd.Series({"training": 0.7, "internal": 0.5, "external": 0.6})
    share = evaluation.margin_share(auc, ref)
    assert share["training"] == pytest.approx(0.5) and share["external"] == pytest.approx(0.5)
    assert np.isnan(share["internal"])  # a reference at chance has no margin to share


def test_limits_say_where_a_training_threshold_does_not_carry_over(tmp_path):
    run = _run_dir(tmp_path, 12)
    assert not [x for x in findings.limits(run, twin=True) if "thresholds chosen" in x]  # no table, no claim
    (run / "evaluation").mkdir()
    pd.DataFrame({"signature": ["S", "S", "S"], "cohort": ["training", "internal", "external"], "n": [50, 20, 30],
                  "recurrence rate": [0.6, 0.8, 0.5], "mean predicted risk": [0.5, 0.52, 0.2],
                  "flagged at the training threshold": [0.6, 0.7, 0.03], "threshold": [0.45] * 3,
                  "AUC": [0.7, 0.72, 0.71]}).to_csv(run / "evaluation" / "tab-threshold-transfer.csv", index=False)
    said = [x for x in findings.limits(run, twin=True) if "thresholds chosen" in x]
    assert len(said) == 1
    assert "On the external cohort, where 50 % of the patients had a recurrence, S's training threshold flags 3 %" in said[0]
    assert "mean predicted risk is 0.20, against 0.50 on the training cohort" in said[0]


def _ablation_run(tmp_path):
    (tmp_path / "ablations").mkdir(parents=True)
    cols = ["AUC internal", "AUC external", "DeLong P vs full (internal)", "DeLong P vs full (external)"]
    rows = [("reference", "full", [0.76, 0.70, np.nan, np.nan]), ("2.5D", "2D", [0.70, 0.71, 0.03, 0.8]),
            ("phases", "portal", [0.74, 0.66, 0.4, 0.2]), ("training noise", "seed", [0.74, 0.75, 0.6, 0.3])]
    t = pd.DataFrame([{"factor": f, "features": feat, "variant": v, **dict(zip(cols, vals))}
                      for f, v, vals in rows for feat in ("DL alone", "DL + radiomics")])
    t.loc[t["features"] == "DL + radiomics", "AUC internal"] = 0.99  # must not be read
    t.to_csv(tmp_path / "ablations" / "tab-ablations.csv", index=False)
    nc = pd.DataFrame({"variant": ["full", "2D"] * 2, "AUC internal": [0.76, 0.70, 0.80, 0.81],
                       "AUC external": [0.70, 0.71, 0.72, 0.70], "DeLong P vs full (internal)": [np.nan, 0.03, np.nan, 0.9],
                       "DeLong P vs full (external)": [np.nan, 0.8, np.nan, 0.7],
                       "twin": ["default (off centre)"] * 2 + ["negative control (central)"] * 2})
    nc.to_csv(tmp_path / "ablations" / "tab-negative-control.csv", index=False)
    return tmp_path


def test_ablation_effects_are_variant_minus_full_with_the_seed_noise_and_the_negative_control(tmp_path):
    e = findings.ablation_effects(_ablation_run(tmp_path))
    # the default twin's 2D row, then the negative-control twin's, then the other variants; the seed last
    assert list(dict.fromkeys(e["variant"])) == ["2D", "2D, negative control (central) twin", "portal", "seed"]
    d = e.set_index(["variant", "cohort"])
    assert d.loc[("2D", "internal"), "difference"] == pytest.approx(-0.06)
    assert d.loc[("2D", "internal"), "P"] == pytest.approx(0.03)
    assert d.loc[("2D, negative control (central) twin", "internal"), "difference"] == pytest.approx(0.01)
    assert d.loc[("2D, negative control (central) twin", "external"), "P"] == pytest.approx(0.7)
    assert d.loc[("portal", "external"), "difference"] == pytest.approx(-0.04)
    # training noise: the seed replicate's largest move over the validation cohorts (0.05 external)
    assert e["noise"].unique() == pytest.approx([0.05])
    assert e["seed replicate"].tolist() == [False] * 6 + [True] * 2
    assert findings.ablation_effects(tmp_path / "nowhere").empty


def test_findings_figures_draw_what_the_tables_hold(tmp_path):
    from hcc25d import plotting

    e = findings.ablation_effects(_ablation_run(tmp_path))
    fig = plotting.ablation_effect_plot(e)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "2D" and labels[-1] == "seed"
    filled = [ln for ln in ax.lines if ln.get_label() == "P < 0.05 (DeLong)"][0]
    assert filled.get_xdata().tolist() == pytest.approx([-0.06])  # only the internal 2D difference
    ceiling = pd.DataFrame({"signature": ["DL_2.5D", "DL_2.5D"], "cohort": ["internal", "external"],
                            "AUC": [0.7, 0.5], "CI low": [0.6, 0.4], "CI high": [0.8, 0.6],
                            "reference AUC": [0.8, 0.8], "margin over chance recovered": [2 / 3, 0.0]})
    fig = plotting.ceiling_plot(ceiling)
    assert [a.get_title() for a in fig.axes] == ["Internal validation", "External validation"]
    assert [t.get_text() for t in fig.axes[0].texts] == ["67 %"]
    assert fig.axes[0].get_xlim()[0] == pytest.approx(0.3)
    low = plotting.ceiling_plot(ceiling.assign(**{"CI low": [0.2, 0.4]}))
    assert low.axes[0].get_xlim()[0] < 0.2  # an interval reaching below the usual axis is drawn whole
    own = ceiling.assign(**{"reference AUC": np.nan, "margin over chance recovered": np.nan})
    fig = plotting.ceiling_plot(own)  # own data: no reference, no share
    assert not fig.axes[0].texts
    assert "reference AUC of the same data" not in [ln.get_label() for ln in fig.axes[0].lines]
    with_ref = [ln.get_label() for ln in plotting.ceiling_plot(ceiling).axes[0].lines]
    assert "reference AUC of the same data" in with_ref


def test_instance_reference_plot_draws_each_yardstick_the_table_has(tmp_path):
    from hcc25d import cnn, plotting

    (tmp_path / "cnn").mkdir()
    t = pd.DataFrame({"cohort": ["training", "internal"], "net": [0.62, 0.68], "net, before size adjustment":
                      [0.66, 0.67], "histogram reference": [0.55, 0.69]})
    t.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    table, name = findings.instance_references(tmp_path)
    assert name == "net" and list(table.index) == ["training", "internal"]
    ax = plotting.instance_reference_plot(table, name).axes[0]
    drawn = {ln.get_label(): ln.get_xdata().tolist() for ln in ax.lines if not ln.get_label().startswith("_")}
    assert drawn["net"] == pytest.approx([0.62, 0.68])  # rows top to bottom: training, internal
    assert drawn["net before the size adjustment"] == pytest.approx([0.66, 0.67])
    assert cnn.LABEL_REFERENCE not in drawn and twin_imaging.SLOT_REFERENCE not in drawn  # own data: absent
    t[twin_imaging.SLOT_REFERENCE] = [0.73, 0.74]
    t.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    ax = plotting.instance_reference_plot(*findings.instance_references(tmp_path)).axes[0]
    assert twin_imaging.SLOT_REFERENCE in [ln.get_label() for ln in ax.lines]
    assert ax.get_xlim()[0] <= 0.4
    low = t.assign(net=[0.31, 0.68])  # a model below the usual axis still shows
    low.to_csv(tmp_path / "cnn" / "tab-instance-reference.csv", index=False)
    ax = plotting.instance_reference_plot(*findings.instance_references(tmp_path)).axes[0]
    assert ax.get_xlim()[0] < 0.31
    assert findings.instance_references(tmp_path / "nowhere")[0].empty
