"""Run parameters: one YAML file per run, validated into a frozen, typed config object.

The schema is declared with pydantic (v2): every field has its type, its range or its choices, and a
``#:`` comment that documents it (``python -m hcc25d params --defaults`` prints them; the book's
*Parameters* page is generated from them). Every stage notebook starts with
``cfg = hcc25d.config.load(params_file, overrides)``. Unknown keys, wrong types, values out of range or
outside their choices, and combinations that cannot work (:func:`cross_field_problems`) are all
collected and reported together in one :class:`ConfigError` naming each field by its dotted path, so a
typo in a params file fails at load, before any stage runs.

Scalars are strict: ``"5"`` is not an integer, ``"yes"`` is not a boolean (YAML's ``true``/``false``
are); a float field accepts an integer. Lists in YAML become tuples.
"""
from __future__ import annotations

import inspect
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "Section",
    "KNOWN_BACKBONES",
    "DataCfg",
    "TwinCfg",
    "CohortCfg",
    "CropCfg",
    "RadiomicsCfg",
    "AugmentCfg",
    "TrainCfg",
    "CnnCfg",
    "Cnn3dCfg",
    "SignaturesCfg",
    "AblationsCfg",
    "ComputeCfg",
    "Params",
    "cross_field_problems",
    "from_dict",
    "load",
    "to_dict",
    "section_dict",
    "field_docs",
    "reference_rows",
    "defaults_yaml",
    "reference_markdown",
    "non_defaults",
]


class ConfigError(ValueError):
    """A params file (or override) is invalid; the message lists every problem found."""

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = problems or [message]


class Section(BaseModel):
    """A frozen params section: unknown keys refused, scalars strict, YAML lists read as tuples."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, validate_default=False)

    @field_validator("*", mode="before")
    @classmethod
    def _lists_as_tuples(cls, v):
        return tuple(v) if isinstance(v, list) else v


#: the slice-level backbones known without importing torchvision (this package's own network and the
#: paper's four); any other name is checked against torchvision's model registry.
KNOWN_BACKBONES = ("litecnn", "densenet121", "resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "vgg19")


# --------------------------------------------------------------------------------------------------
# Sections. Later stages add their own sections; each field has a default so a params file only
# states what differs from the defaults.
# --------------------------------------------------------------------------------------------------
class DataCfg(Section):
    #: ``twin``: generate the synthetic study twin; ``manifest``: read own data from a manifest CSV.
    source: Literal["twin", "manifest"] = "twin"
    #: path to the manifest CSV (own data), relative to the project root or absolute.
    manifest: Optional[str] = None
    #: the phases the study has (a manifest may then leave the other phase columns empty).
    phases: tuple[Literal["plain", "arterial", "portal"], ...] = ("plain", "arterial", "portal")
    #: label of the tumour in a multi-label mask (null: the mask must be binary).
    mask_label: Optional[int] = None
    #: replace patient ids by a salted hash in everything written under results/.
    pseudonymise: bool = False
    #: the salt of the pseudonyms (keep it secret, keep it fixed across runs).
    salt: str = ""


class TwinCfg(Section):
    """Imaging twin: grid and scanner profile per centre (lists: [centre 1, centre 2])."""

    #: in-plane matrix of centre 1 (centre 2 covers the same field of view with its own pixel size).
    matrix: int = Field(144, ge=16)
    #: in-plane pixel size (mm) per centre.
    spacing_xy: tuple[float, ...] = (0.8, 0.9)
    #: slice thickness (mm) per centre.
    slice_mm: tuple[float, ...] = (2.0, 2.5)
    #: cranio-caudal extent of the volume (mm).
    extent_z_mm: float = Field(100.0, gt=0)
    #: image noise SD (HU) per centre.
    noise_hu: tuple[float, ...] = (12.0, 18.0)
    #: scanner blur (Gaussian SD, mm) per centre.
    blur_mm: tuple[float, ...] = (0.6, 0.9)
    #: HU offset per centre (calibration difference).
    hu_offset: tuple[float, ...] = (0.0, 8.0)
    #: arterial-phase timing factor per centre (1 = centre 1's peak; < 1: later, less arterial contrast).
    arterial_timing: tuple[float, ...] = (1.0, 0.85)
    #: multiplies every effect size of the latent-risk model (0 = no imaging signal).
    signal_scale: float = Field(1.0, ge=0)
    #: where the arterial-phase traits sit along z: ``offcentre`` (default: peritumoral enhancement 4-6 mm
    #: and satellites 3-5 mm above/below the tumour's maximal cross-section) or ``central`` (the same
    #: traits on the maximal cross-section itself: the negative control, where 2.5D should gain nothing).
    signal_position: Literal["offcentre", "central"] = "offcentre"


class CohortCfg(Section):
    #: cohort specification (the paper's Table 1); ``default`` is the transcription shipped with the
    #: package (``hcc25d/data/table1_spec.yaml``).
    spec: str = "default"
    #: number of outcome-stratified patients kept for the imaging stages (``null`` = all); the cohort
    #: chapter always shows the full Table 1.
    n_imaging: Optional[int] = Field(None, ge=4)
    #: multiply the training cohort's counts in the specification by this factor (every cell of Table 1's
    #: training column; means and SDs unchanged; the validation cohorts keep their size, but as patients are
    #: numbered in order they are new draws from the same cells): how the method's AUCs grow with the number
    #: of training patients (``params/training-x3.yaml``). Twin runs only; above 1 the run's Table 1 no
    #: longer matches the paper's training column.
    training_scale: int = Field(1, ge=1)


class CropCfg(Section):
    """2.5D cropping (see :mod:`hcc25d.crop25d`)."""

    #: resampled voxel spacing (x, y, z) in mm.
    spacing_mm: tuple[float, ...] = (1.0, 1.0, 1.0)
    #: image interpolation for resampling (the mask always uses nearest neighbour).
    interpolation: Literal["linear", "bspline"] = "linear"
    #: CT window width and level (HU) mapped to [0, 1].
    window_width: float = Field(250.0, gt=0)
    #: CT window level (HU): the window is level ± width / 2.
    window_level: float = 50.0
    #: axial offsets (slices of the resampled grid) around the maximal-area slice.
    axial_offsets: tuple[int, ...] = (0, -1, 1, -2, 2, -4, 4)
    #: sagittal and coronal offsets around their maximal-area slices.
    sagittal_offsets: tuple[int, ...] = (0,)
    #: coronal offsets around the coronal maximal-area slice.
    coronal_offsets: tuple[int, ...] = (0,)
    #: context around the ROI's bounding box (mm, each side).
    margin_mm: float = Field(12.0, ge=0)
    #: output size (pixels) of each instance (224 in the paper and the gpu profile; 64 on a CPU).
    image_size: int = Field(64, ge=2)
    #: ``roi``: each crop spans the ROI's box plus ``margin_mm`` (the paper's way: a small tumour is
    #: magnified, a large one shrunk, so the millimetres per pixel follow the tumour's size); ``fixed``: every
    #: crop spans ``fov_mm`` around the box's centre, so a pixel is ``fov_mm / image_size`` mm for every
    #: patient and texture, noise and a nodule look the same size in every crop.
    scale: Literal["roi", "fixed"] = "roi"
    #: with ``scale: fixed``: the field of view of every crop (mm).
    fov_mm: float = Field(112.0, gt=0)
    #: phases as channels, in the paper's order.
    channels: tuple[Literal["plain", "arterial", "portal"], ...] = Field(("arterial", "plain", "portal"), min_length=1, max_length=3)
    #: ``central``: axial neighbours share one box (aligned, one scale); ``slice``: each slice's own ROI box.
    box: Literal["central", "slice"] = "central"
    #: ROI thinner than an offset: ``keep`` the slice, or ``clamp`` it to the ROI's last slice.
    thin_roi: Literal["keep", "clamp"] = "keep"
    #: several tumour components: ``largest`` only, or ``each`` as its own bag.
    components: Literal["largest", "each"] = "largest"
    #: with ``components: each``: the smallest component (voxels) that becomes a bag.
    min_component_voxels: int = Field(10, ge=1)
    #: 3D crops for the 3D baseline: cube edge (mm) and voxels per edge.
    cube_mm: float = Field(96.0, gt=0)
    #: voxels per edge of the 3D cube.
    cube_size: int = Field(48, ge=2)


with warnings.catch_warnings():  # the field `validate` shadows pydantic's deprecated classmethod: harmless
    warnings.filterwarnings("ignore", message='Field name "validate"')

    class _RadiomicsBase(Section):
        #: run the PyRadiomics-baseline and IBSI-phantom validations in the chapter.
        validate: bool = True


class RadiomicsCfg(_RadiomicsBase):
    """Radiomics features (see :mod:`hcc25d.radiomics`)."""

    #: PyRadiomics settings file (setting / imageType / featureClass).
    settings: str = "params/radiomics/ct_default.yaml"
    #: a failed patient-phase: ``stop`` the run, or ``continue`` and list what is missing.
    on_error: Literal["stop", "continue"] = "stop"
    #: context kept around the ROI before PyRadiomics resamples (mm).
    pad_mm: float = Field(10.0, ge=0)


class AugmentCfg(Section):
    #: random flips (2D square crops also transposed: the 8 symmetries of the square; 3D: 3 axes).
    flip: bool = True
    #: random in-plane rotation range (degrees, 2D only; 0 = off).
    rotate_deg: float = Field(0.0, ge=0, le=180)
    #: scanner blur: each instance smoothed in-plane by a Gaussian whose SD is drawn from [0, x] pixels of
    #: the crop (every channel the same; 2D only; 0 = off) — a softer reconstruction kernel or a wider slice,
    #: as another scanner gives it. Applied after the flips and rotation, before the noise.
    blur: float = Field(0.0, ge=0, le=4)
    #: additive Gaussian image noise, per-image SD drawn from [0, x] (window units; 0.04 ≈ 10 HU).
    noise: float = Field(0.0, ge=0)
    #: intensity jitter: scale 1 ± x, shift ± x/2 (window units). Off by default: the planted contrasts of
    #: the twin are 0.02–0.2 window units, so a jitter of that size would drown them.
    intensity: float = Field(0.0, ge=0, lt=1)
    #: arterial-phase timing: every arterial contrast to the liver parenchyma (the arterial channel about the
    #: parenchyma's level after the intensity reference, and the arterial-excess channel with it) is scaled by
    #: a factor drawn per instance from [1 − x, 1 + x] — a bolus caught earlier or later, as another centre's
    #: protocol gives it. Teaches the network that the size of the arterial enhancement is not the same on
    #: every scanner, while the pattern (which pixels enhance more than the liver) stays. 0 = off.
    timing: float = Field(0.0, ge=0, lt=1)


class TrainCfg(Section):
    """Training settings shared by the slice-level CNNs and the 3D baseline."""

    #: the fixed budget of epochs (every model trains for exactly this many unless ``val_fraction`` > 0).
    epochs: int = Field(10, ge=1)
    #: instances per optimiser step.
    batch_size: int = Field(16, ge=1)
    #: ``adamw`` or ``sgd`` (momentum 0.9).
    optimizer: Literal["adamw", "sgd"] = "adamw"
    #: peak learning rate (after the warm-up).
    lr: float = Field(0.001, gt=0)
    #: weight decay (decoupled for AdamW).
    weight_decay: float = Field(0.0001, ge=0)
    #: learning-rate schedule after the warm-up, stepped every batch.
    schedule: Literal["cosine", "step", "none"] = "cosine"
    #: epochs of linear learning-rate warm-up (from 0.1 × lr).
    warmup_epochs: float = Field(1.0, ge=0)
    #: ``balanced``: weight the positive class by n_negative / n_positive; ``none``.
    class_weight: Literal["balanced", "none"] = "balanced"
    #: dropout before the classification head.
    dropout: float = Field(0.2, ge=0, lt=1)
    #: exponential moving average of the weights (and batch-norm statistics) per optimiser step, with this
    #: decay (``min(ema, t / (t + 1))`` at step ``t``: the plain mean of the states so far until it reaches
    #: ``ema``, which averages over about ``1 / (1 - ema)`` steps); the averaged weights are the ones
    #: validated, kept and used. 0 = off: the weights of the last (or best) epoch.
    ema: float = Field(0.0, ge=0, lt=1)
    #: fraction of each model's training patients held out for early stopping on the validation *loss*
    #: (0 = no early stopping: the fixed budget of ``epochs``).
    val_fraction: float = Field(0.0, ge=0, lt=1)
    #: with ``val_fraction`` > 0: epochs without improvement of the validation loss before stopping.
    patience: int = Field(3, ge=1)
    #: cross-fitting folds: k models, each trained on k − 1 folds of the training patients.
    folds: int = Field(5, ge=2)
    #: with ``crossfit``: ``align`` puts every cross-fitted model's probabilities on one scale before they are
    #: pooled or averaged (each model's logits standardised by their mean and SD on its own held-out
    #: training fold, then given the models' mean mean and SD; no label used), so that a training patient's
    #: out-of-fold probability and a validation patient's mean are comparable across fold models; ``none``:
    #: as each model gives them.
    fold_scale: Literal["align", "none"] = "align"
    #: with ``crossfit``: repeat the cross-fitting on this many different fold splits and average, so that a
    #: training patient's out-of-fold score is the mean of several models (as a validation patient's is)
    #: instead of one model's; costs ``repeats`` × the training time.
    repeats: int = Field(1, ge=1)
    #: ``crossfit`` (leakage-safe: training patients out of fold, the others by the mean of the same fold
    #: models) or ``insample`` (the paper's way: one final model predicts its own training patients too).
    prediction: Literal["crossfit", "insample"] = "crossfit"
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    #: ``parenchyma``: shift each patient's phases so that the peritumoral parenchyma sits at the training
    #: cohort's median (removes scanner HU offsets and bolus-timing shifts of the liver); ``two-point``: also
    #: rescale about the parenchyma so that the tumour sits at the training cohort's median (undoes a later or
    #: earlier arterial phase's change of the tumour's enhancement against the liver, and with it each
    #: patient's own tumour–liver contrast); ``vessel``: first scale each patient's arterial enhancement
    #: over the plain phase by the training median's over the patient's own enhancement of the blood (a
    #: vessel ROI's HU per phase, the case table's ``vessel_hu_<phase>`` columns: radiology's normalisation
    #: to the aorta), then the parenchyma shift; ``none``.
    intensity_reference: Literal["parenchyma", "two-point", "vessel", "none"] = "parenchyma"
    #: add the *arterial excess* as a fourth input channel: each pixel's arterial value minus the arterial
    #: value that its plain and portal values usually go with (a table fitted on the training cohort's
    #: images, without labels; :class:`hcc25d.cnn.ArterialExcess`) — arterial enhancement that the other
    #: phases do not explain. Needs the three phases; this package's own networks only (torchvision
    #: backbones take three channels). Off = the paper's input, the three phases alone.
    arterial_excess: bool = False
    #: clinical variables the image models must not learn as a shortcut (e.g. ``[tumor_size]``, which the
    #: images show and the clinical signature already has): training instances are weighted so that each
    #: combination of outcome and these variables carries the same weight. Empty = the paper's way.
    #: The slice-level setting also weights the DL_2.5D classifiers of the signatures stage.
    deconfound: tuple[str, ...] = ()
    #: remove the part of the image score that follows the tumour's size: after cross-fitting, the
    #: training patients' out-of-fold scores (mean instance logit) are regressed on the log of the ROI's
    #: in-plane extent (measured on the mask) *and the outcome*; the size slope alone is then subtracted
    #: from every patient's instance logits (all cohorts, one slope fitted on training patients only). A
    #: network whose texture filters see a shrunk large tumour as "rougher" than a magnified small one scores
    #: by size even where size is not rewarded; this takes that out and keeps what goes with the outcome.
    #: Off = the paper's way.
    size_adjust: bool = False
    #: ``instance``: every instance carries its patient's label (the paper's way); ``bag``: the instances of
    #: a patient are scored together and the loss is taken on the patient's pooled score (multi-instance
    #: training: an instance that does not show the trait is not pushed towards the label). The network
    #: still scores each instance, so the multi-instance fusion downstream is unchanged. The 3D baseline
    #: has one cube per patient, where both are the same.
    loss: Literal["instance", "bag"] = "instance"
    #: with ``loss: bag``: how a patient's instance logits are pooled — ``lse`` (log-mean-exp: a smooth
    #: maximum, so one instance that shows the trait can carry the patient) or ``mean``.
    bag_pooling: Literal["lse", "mean"] = "lse"
    #: with ``loss: bag``: patients per optimiser step (all their instances go into the step).
    bag_batch: int = Field(16, ge=2)
    #: mixed precision on CUDA.
    amp: bool = True
    #: deterministic algorithms and seeded workers (bit-identical reruns on the same machine).
    deterministic: bool = True
    #: ``auto`` (CUDA when available) or ``cpu``.
    device: Literal["auto", "cpu"] = "auto"
    #: keep per-epoch checkpoints in results/<run>/.cache/ and resume an interrupted training.
    resume: bool = True


class CnnCfg(TrainCfg):
    """Slice-level models (see :mod:`hcc25d.cnn`), with the training settings they share with the 3D baseline."""

    #: ``litecnn`` (this package's light CNN, trained from scratch: the CPU default) or torchvision
    #: backbones (the paper's: densenet121, resnet50, resnet101, vgg19).
    backbones: tuple[str, ...] = Field(("litecnn",), min_length=1)
    #: channels of litecnn's first layer (ignored by torchvision backbones).
    width: int = Field(16, ge=1)
    #: ``imagenet`` (torchvision weights API), ``none`` (random initialisation) or a path to a state dict.
    weights: str = "none"
    #: ImageNet weights unavailable: ``fail``, or ``random`` initialisation (said loudly; not transfer learning).
    on_missing_weights: Literal["fail", "random"] = "fail"
    #: backbone for the multi-instance stage: ``cv`` = best out-of-fold training AUC (fixed rule), or a backbone name.
    selection: str = "cv"
    epochs: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)
    folds: int = Field(3, ge=2)
    repeats: int = Field(3, ge=1)
    lr: float = Field(0.002, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    warmup_epochs: float = Field(2.0, ge=0)
    #: ``bag`` (the CPU default): a patient's instance logits are pooled (``bag_pooling``) and the loss is
    #: the patient's, so instances that do not show a trait are not pushed towards the outcome; the network
    #: still scores every instance for the fusion. ``instance``: every instance carries its patient's label
    #: (the paper's way; the ``gpu`` profile).
    loss: Literal["instance", "bag"] = "bag"
    #: the CPU default: after cross-fitting, regress the training patients' out-of-fold scores on the log
    #: of the ROI's extent (from the mask) and the outcome, and subtract the size slope alone from every
    #: patient's instance logits in every cohort. ``false`` = the paper's scores (the ``gpu`` profile).
    size_adjust: bool = True
    #: the CPU default: the three phases plus their arterial excess (each pixel's arterial value minus the
    #: arterial value its plain and portal values usually go with; see the CNN chapter); ``false`` = the
    #: paper's three phases (the ``gpu`` profile, whose torchvision backbones take three channels).
    arterial_excess: bool = True
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    #: the slice-level networks' own seed (their initialisation, batches, augmentation and cross-fitting
    #: folds, in the CNN stage and in the ablations that retrain them); ``null`` = the run's ``seed``. Another
    #: value retrains the networks on the same patients and images: how much of a result is the noise of
    #: training alone (``tools/draws.py --set cnn.seed=N``).
    seed: Optional[int] = None

    @model_validator(mode="after")
    def _excess_needs_own_network(self):
        other = [b for b in self.backbones if b != "litecnn"]
        if self.arterial_excess and other:
            raise ValueError(f"cnn.arterial_excess adds a fourth input channel, which {other} do not take "
                             f"(torchvision backbones have three): set cnn.arterial_excess: false, or use litecnn")
        return self


class Cnn3dCfg(TrainCfg):
    """The 3D baseline (see :mod:`hcc25d.cnn3d`), with the training settings it shares with the slice-level models."""

    #: channels of the first stage (64 = ResNet-18's widths).
    width: int = Field(16, ge=1)
    folds: int = Field(3, ge=2)
    #: adjust the 3D score for the tumour's size as ``cnn.size_adjust`` does (the CPU default, so that
    #: DL_2.5D and DL_3D are compared on equal terms; ``false`` in the ``gpu`` profile).
    size_adjust: bool = True
    #: the arterial-excess channel as ``cnn.arterial_excess`` (the CPU default, so that DL_2.5D and DL_3D
    #: see the same input; ``false`` in the ``gpu`` profile).
    arterial_excess: bool = True
    augment: AugmentCfg = Field(default_factory=AugmentCfg)


class SignaturesCfg(Section):
    """MIL fusion, selection and signatures (see :mod:`hcc25d.mil`, :mod:`hcc25d.signatures`)."""

    #: cross-validation of the grid searches (training cohort only): ``cnn`` = the slice-level CNN's
    #: cross-fitting folds (so a cross-validated training AUC is out of sample for the whole chain), or
    #: ``stratified``: ``cv_folds`` stratified folds of their own (the paper's 5-fold CV).
    cv: Literal["cnn", "stratified"] = "cnn"
    #: with ``cv: stratified``: the number of folds.
    cv_folds: int = Field(5, ge=2)
    #: class weighting of all five families (sample weights passed to the classifier's fit): ``balanced``
    #: or ``none``.
    class_weight: Literal["balanced", "none"] = "balanced"
    #: univariate filter: keep features with P below this.
    p_threshold: float = Field(0.05, gt=0, le=1)
    #: correlation pruning: drop a feature with |r| above this with a kept one.
    corr_threshold: float = Field(0.9, gt=0, le=1)
    #: the multi-instance fusion of DL_2.5D (and of the ablation rows): ``paper`` = the likelihood histogram and
    #: the bag of words of the instance probabilities, with bins and thresholds fitted on the training scores;
    #: ``summary`` = the mean, SD, minimum, quartiles and maximum of each patient's instance logits
    #: (:class:`hcc25d.mil.LogitSummary`): no bin for a centre's shifted scores to fall outside of, so a linear
    #: family keeps the order of a centre whose scores are all shifted alike.
    fusion: Literal["paper", "summary"] = "paper"
    #: the radiomics half of DL_2.5D: ``always`` (the paper's: the multi-instance features and the radiomics
    #: features enter the selection together) or ``cv``: every family's grid search also tries the pipeline
    #: without the radiomics features, and the training cross-validation decides, as for any other
    #: hyperparameter (Table 4's best parameters say which it kept). The ablation rows report the DL features
    #: alone and with the radiomics features either way.
    radiomics: Literal["always", "cv"] = "always"
    #: likelihood-histogram bins (``fusion: paper``).
    n_bins: int = Field(10, ge=2)
    #: bag-of-words vocabulary size (k-means words over the instance probabilities).
    n_words: int = Field(8, ge=2)
    #: model families (lr, rf, et, xgb, lgbm).
    models: tuple[Literal["lr", "rf", "et", "xgb", "lgbm"], ...] = Field(("lr", "rf", "et", "xgb", "lgbm"), min_length=1)
    #: per-family parameter grids overriding the defaults, e.g. {rf: {max_depth: [3, 5]}}.
    grids: dict = Field(default_factory=dict)
    #: take the tumour's size out of the radiomics features of DL_2.5D before the screening, as
    #: ``cnn.size_adjust`` does for the CNN's score: each feature is regressed on the log of the ROI's extent
    #: and the outcome on the training patients (inside every cross-validation fold) and the size slope is
    #: subtracted. Many radiomics features are surrogates of the tumour's volume, and where large tumours
    #: recur more often in the training cohort only, the screening picks them as a shortcut. Off = the
    #: paper's way.
    size_adjust: bool = True
    #: DL_2.5D model: ``cv`` = best mean CV AUC (fixed rule), or a family (``rf`` = the paper's choice).
    dl25d_model: str = "cv"
    #: map the CNN's instance scores of every centre without training patients onto the training patients'
    #: score scale before the fusion (one affine map of the logits per centre: its mean and SD made equal
    #: to the training out-of-fold ones; no label used; :func:`hcc25d.mil.harmonise_centres`). It needs a
    #: batch of the new centre's patients and is fitted on them (transductive), so a validation with it on is
    #: no longer of a model frozen before it met the centre. Off (the default): strict external validation;
    #: the signatures chapter shows DL_2.5D's AUC both ways.
    harmonise_centres: bool = False
    #: clinical screening thresholds (univariable, then multivariable; the paper's Table 2 analysis).
    clinical_p_uni: float = Field(0.05, gt=0, le=1)
    #: multivariable threshold of the clinical screening.
    clinical_p_multi: float = Field(0.05, gt=0, le=1)


class AblationsCfg(Section):
    """The ablation stage (see :mod:`hcc25d.ablation`): each variant retrains the slice-level CNN."""

    #: run the ablation stage at all.
    enabled: bool = True
    #: the variants beside the full model: ``2d`` (central axial slice), ``axial`` (no sagittal/coronal
    #: view), ``arterial`` and ``portal`` (one phase), ``no-excess`` (the three phases without the
    #: ``cnn.arterial_excess`` channel), ``no-reference`` (no intensity reference),
    #: ``two-point`` (the intensity reference of the tumour as well as the parenchyma), ``vessel`` (the
    #: arterial enhancement normalised to a vessel ROI's; needs the case table's ``vessel_hu_<phase>``),
    #: ``parenchyma`` (the shift alone, where ``cnn.intensity_reference`` is another), ``timing`` (the
    #: arterial-timing augmentation, ``cnn.augment.timing``, at ± 0.3), ``seed``
    #: (the full model retrained with another seed: the noise of training alone), ``instance-loss`` (every
    #: instance trained on its patient's label, the paper's way, where ``cnn.loss`` is ``bag``),
    #: ``no-size-adjust`` (the full model's scores without ``cnn.size_adjust``, and the radiomics features
    #: without ``signatures.size_adjust``: no retraining).
    variants: tuple[Literal["2d", "axial", "arterial", "portal", "no-excess", "no-reference", "two-point",
                             "vessel", "parenchyma", "timing", "instance-loss", "no-size-adjust", "seed"],
                    ...] = (
        "2d", "axial", "arterial", "portal", "no-excess", "no-reference", "two-point", "timing",
        "instance-loss", "no-size-adjust", "seed")
    #: cross-fitting repeats of each retrained variant (``null`` = ``cnn.repeats``). Fewer than the CNN
    #: stage's keeps the stage within a CPU budget; the full row is then retrained the same way, so every
    #: row differs from it in one factor only (its AUCs are those of a single cross-fitting).
    cnn_repeats: Optional[int] = Field(1, ge=1)
    #: also regenerate the twin with its signal on the central slice and compare 2.5D with 2D there
    #: (twin runs only).
    negative_control: bool = True
    #: also train the full model's network on each planted trait instead of the outcome (twin runs only):
    #: what it can see with a clean label (three models, and three more on the negative-control twin when it
    #: runs: its two moved traits, and the peritumoral enhancement again with the two-point reference).
    trait_probe: bool = True
    #: keep each retrained model's checkpoint (``cnn.resume``) after its variant is done, so that a rerun of
    #: the stage (after an edit of the chapter, say) reuses the finished models instead of retraining them.
    #: A finished model's checkpoint holds its weights: a few hundred kB for the CPU network, about 0.5 GB
    #: for a VGG19 at 224 px; ``false`` (the gpu profile) deletes a variant's checkpoints once its
    #: predictions are in, so the stage needs room for one variant's models at a time.
    keep_checkpoints: bool = True


class ComputeCfg(Section):
    #: worker processes for per-patient work (-1 = all cores; 0 is not allowed).
    n_jobs: int = Field(2, ge=-1)
    #: ``loky`` (processes on this machine), ``threading``, ``sequential``, ``dask`` (a Dask cluster: see
    #: ``scheduler``) or ``ray`` (joblib's ray backend, registered by the user).
    backend: Literal["loky", "threading", "dask", "ray", "sequential"] = "loky"
    #: with ``backend: dask``: ``local`` (a LocalCluster of ``n_jobs`` single-threaded process workers) or
    #: the address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786`` (a SLURM cluster started
    #: with dask-jobqueue; ``results/`` must be on a filesystem the workers share).
    scheduler: str = "local"
    #: show progress bars.
    progress: bool = True


class Params(Section):
    #: run name: results go to ``results/<run>/``.
    run: str = "synthetic"
    #: master seed: every random draw of the run derives from it.
    seed: int = 20240601
    #: a sentence describing this run (shown in the book).
    description: str = ""
    data: DataCfg = Field(default_factory=DataCfg)
    cohort: CohortCfg = Field(default_factory=CohortCfg)
    twin: TwinCfg = Field(default_factory=TwinCfg)
    crop: CropCfg = Field(default_factory=CropCfg)
    radiomics: RadiomicsCfg = Field(default_factory=RadiomicsCfg)
    cnn: CnnCfg = Field(default_factory=CnnCfg)
    cnn3d: Cnn3dCfg = Field(default_factory=Cnn3dCfg)
    signatures: SignaturesCfg = Field(default_factory=SignaturesCfg)
    ablations: AblationsCfg = Field(default_factory=AblationsCfg)
    compute: ComputeCfg = Field(default_factory=ComputeCfg)

    def cnn_seed(self) -> int:
        """The seed the slice-level networks train with: ``cnn.seed``, or the run's ``seed``."""
        return self.seed if self.cnn.seed is None else int(self.cnn.seed)




#: the params sections each helper method of :class:`Params` reads (a stage that calls ``cfg.<method>()`` has
#: them in its key).
METHOD_SECTIONS = {"cnn_seed": ("cnn", "seed")}


# --------------------------------------------------------------------------------------------------
_SECTIONS = {name: f.annotation for name, f in Params.model_fields.items()}


def _model_at(loc: tuple) -> Optional[type]:
    cls: Any = Params
    for part in loc:
        f = getattr(cls, "model_fields", {}).get(part)
        if f is None:
            return None
        cls = f.annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "params"


def _bound(ctx: dict) -> str:
    for k, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if k in ctx:
            return f"{sym} {ctx[k]}"
    return ""


def _translate(exc: ValidationError) -> list[str]:
    """pydantic's errors as one line each: the dotted path, what is wrong, the value given."""
    out = []
    for e in exc.errors(include_url=False):
        where, t, v, ctx = _loc(e["loc"]), e["type"], e.get("input"), e.get("ctx") or {}
        if t == "extra_forbidden":
            parent = _model_at(tuple(e["loc"][:-1]))
            allowed = ", ".join(sorted(parent.model_fields)) if parent else ""
            out.append(f"{where}: unknown key (allowed here: {allowed})")
        elif t in ("int_type", "int_from_float"):
            out.append(f"{where}: expected an integer, got {v!r}")
        elif t == "bool_type":
            out.append(f"{where}: expected true or false, got {v!r}")
        elif t in ("float_type", "finite_number"):
            hint = ""
            try:
                float(v)
                hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(v, str) else ""
            except (TypeError, ValueError):
                pass
            out.append(f"{where}: expected a number, got {v!r}{hint}")
        elif t == "string_type":
            out.append(f"{where}: expected a string, got {v!r}")
        elif t in ("tuple_type", "list_type"):
            out.append(f"{where}: expected a list, got {v!r}")
        elif t in ("dict_type", "model_type", "model_attributes_type"):
            out.append(f"{where}: expected a section (mapping), got {v!r}")
        elif t == "literal_error":
            out.append(f"{where}: {v!r} is not one of {ctx.get('expected', '')}")
        elif t in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            out.append(f"{where}: must be {_bound(ctx)}, got {v!r}")
        elif t == "too_short":
            out.append(f"{where}: needs at least {ctx.get('min_length')} item(s)")
        elif t == "too_long":
            out.append(f"{where}: allows at most {ctx.get('max_length')} item(s)")
        else:
            out.append(f"{where}: {e['msg']} (got {v!r})")
    return out


def _torchvision_models() -> set:
    try:
        import torchvision

        return set(torchvision.models.list_models(module=torchvision.models))
    except Exception:  # torchvision missing: the CNN stage will say so
        return set()


def cross_field_problems(d: dict) -> list[str]:
    """Combinations of values that cannot work, checked on the merged params (defaults + file) even
    when some fields are invalid themselves, so that every problem is reported in one go."""
    errors: list[str] = []

    def sec(name):
        v = d.get(name)
        return v if isinstance(v, dict) else {}

    data, cnn, sig, abl, comp = sec("data"), sec("cnn"), sec("signatures"), sec("ablations"), sec("compute")
    scale = sec("cohort").get("training_scale")
    if data.get("source") == "manifest" and isinstance(scale, int) and scale != 1:
        errors.append("cohort.training_scale: only for the synthetic twin (data.source: twin); own data has the "
                      "patients it has")
    if data.get("source") == "manifest" and not data.get("manifest"):
        errors.append("data.manifest: required when data.source is manifest (the path to your manifest CSV)")
    if data.get("pseudonymise") is True and not str(data.get("salt") or "").strip():
        errors.append("data.salt: required when data.pseudonymise is true (a secret string, kept fixed "
                      "across runs; without it the pseudonyms are a plain hash anyone can recompute)")
    if isinstance(data.get("phases"), (list, tuple)) and not data.get("phases"):
        errors.append("data.phases: name at least one phase (plain, arterial, portal)")
    backbones = cnn.get("backbones")
    if isinstance(backbones, (list, tuple)) and all(isinstance(b, str) for b in backbones):
        unknown = [b for b in backbones if b not in KNOWN_BACKBONES]
        if unknown:
            registry = _torchvision_models()
            unknown = [b for b in unknown if b not in registry]
            if unknown:
                errors.append(f"cnn.backbones: unknown backbone(s) {', '.join(map(repr, unknown))} (litecnn or "
                              f"a torchvision classification model, e.g. densenet121, resnet50)")
        sel = cnn.get("selection")
        if isinstance(sel, str) and sel != "cv" and sel not in backbones:
            errors.append(f"cnn.selection: {sel!r} is neither 'cv' nor one of cnn.backbones "
                          f"({', '.join(backbones)})")
    models = sig.get("models")
    dl = sig.get("dl25d_model")
    if isinstance(models, (list, tuple)) and isinstance(dl, str) and dl != "cv" and dl not in models:
        errors.append(f"signatures.dl25d_model: {dl!r} is neither 'cv' nor one of signatures.models "
                      f"({', '.join(map(str, models))})")
    grids = sig.get("grids")
    if isinstance(grids, dict) and isinstance(models, (list, tuple)):
        stray = [k for k in grids if k not in ("lr", "rf", "et", "xgb", "lgbm")]
        if stray:
            errors.append(f"signatures.grids: unknown family {', '.join(map(repr, stray))} "
                          f"(lr, rf, et, xgb, lgbm)")
    phases = data.get("phases")
    channels = sec("crop").get("channels")
    for sec_name, train in (("cnn", cnn), ("cnn3d", sec("cnn3d"))):
        if train.get("arterial_excess") is not True:
            continue
        for what, have in (("data.phases", phases), ("crop.channels", channels)):
            if isinstance(have, (list, tuple)) and not {"plain", "arterial", "portal"} <= set(have):
                errors.append(f"{sec_name}.arterial_excess: the arterial excess is made of the plain, arterial "
                              f"and portal phases, and {what} lists {list(have)}: set "
                              f"{sec_name}.arterial_excess: false")
    variants = abl.get("variants")
    if isinstance(phases, (list, tuple)) and isinstance(variants, (list, tuple)) and abl.get("enabled", True):
        for ph in ("arterial", "portal"):
            if ph in variants and ph not in phases:
                errors.append(f"ablations.variants: {ph!r} (one phase) needs the {ph} phase, which "
                              f"data.phases does not list")
    if comp.get("n_jobs") == 0:
        errors.append("compute.n_jobs: must be ≥ 1 or -1 (all cores), got 0")
    return errors


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    cur[keys[-1]] = value


def from_dict(mapping: dict, overrides: Optional[dict] = None, source: str = "params") -> Params:
    """Validate a mapping (as read from YAML) into :class:`Params`.

    ``overrides`` maps dotted keys (``"compute.n_jobs"``) to values and is applied first.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of sections, got {type(mapping).__name__}")
    mapping = _deepcopy(mapping)
    for k, v in (overrides or {}).items():
        _set_dotted(mapping, k, v)
    errors: list[str] = []
    params = None
    try:
        params = Params.model_validate(mapping)
    except ValidationError as exc:
        errors += _translate(exc)
    errors += [e for e in cross_field_problems(_merge(to_dict(Params()), mapping))
               if not any(e.split(":")[0] == x.split(":")[0] for x in errors)]
    if errors:
        raise ConfigError(f"{source}: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors), errors)
    return params


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load(path: str | Path, overrides: Optional[dict] = None) -> Params:
    """Read and validate a params YAML file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return from_dict(mapping, overrides, source=str(path))


def to_dict(params: Any) -> Any:
    """The config as plain Python (lists, dicts) for JSON / YAML / hashing."""
    if isinstance(params, BaseModel):
        return {name: to_dict(getattr(params, name)) for name in type(params).model_fields}
    if isinstance(params, (list, tuple)):
        return [to_dict(v) for v in params]
    if isinstance(params, dict):
        return {k: to_dict(v) for k, v in params.items()}
    return params


def section_dict(params: Params, names: typing.Iterable[str]) -> dict:
    """The named top-level sections/fields of ``params`` as plain Python (for stage hashing)."""
    d = to_dict(params)
    return {n: d[n] for n in names if n in d}


# --------------------------------------------------------------------------------------------------
# documentation from the schema
# --------------------------------------------------------------------------------------------------
def _comments(cls: type) -> dict:
    """``{field: comment}`` from the ``#:`` lines right above each field in the class's source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, buf = {}, []
    for ln in lines[1:]:
        s = ln.strip()
        if s.startswith("#:"):
            buf.append(s[2:].strip())
            continue
        if ":" in s and not s.startswith(("#", '"', "'", "@", "def ")):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                if buf:
                    out[name] = " ".join(buf)
                elif name in out:
                    pass
        if not s.startswith("#:"):
            buf = [] if s and not s.startswith("#") else buf
    return out


def field_docs(cls: type = Params) -> dict:
    """``{field: comment}`` of a section, comments inherited along the class hierarchy."""
    docs: dict = {}
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and issubclass(klass, BaseModel) and klass not in (BaseModel, Section):
            docs.update(_comments(klass))
    return docs


def _type_text(ann) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_text(a) for a in inner) + " or null"
    if origin is tuple:
        return f"list of {_type_text(args[0]) if args else 'values'}"
    if origin is Literal:
        return "text"
    return {int: "integer", float: "number", bool: "true/false", str: "text", dict: "mapping"}.get(
        ann, getattr(ann, "__name__", str(ann)))


def _constraint_text(f) -> str:
    parts = [_type_text(f.annotation)]
    for m in f.metadata:
        for k, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "min items"),
                       ("max_length", "max items")):
            if getattr(m, k, None) is not None:
                parts.append(f"{sym} {getattr(m, k)}")
    ann = f.annotation
    args = typing.get_args(ann)
    lits = [a for a in ([ann] + list(args)) if typing.get_origin(a) is Literal]
    if lits:
        parts.append("one of " + ", ".join(map(str, typing.get_args(lits[0]))))
    return "; ".join(parts)


def reference_rows(cls: type = Params, prefix: str = "") -> list[dict]:
    """One row per field (dotted name, default, allowed values, documentation), sections expanded."""
    rows = []
    docs = field_docs(cls)
    defaults = cls()
    for name, f in cls.model_fields.items():
        val = getattr(defaults, name)
        key = f"{prefix}{name}"
        if isinstance(val, BaseModel):
            rows += reference_rows(type(val), key + ".")
            continue
        rows.append({"parameter": key, "default": yaml.safe_dump(to_dict(val), default_flow_style=True,
                                                                 width=1000).strip().removesuffix("...").strip(),
                     "allowed": _constraint_text(f), "meaning": docs.get(name, "")})
    return rows


def defaults_yaml(cls: type = Params, indent: int = 0) -> str:
    """The full default params as YAML, each field preceded by its documentation as a comment."""
    import textwrap

    docs = field_docs(cls)
    defaults = cls()
    out = []
    pad = " " * indent
    for name, f in cls.model_fields.items():
        val = getattr(defaults, name)
        doc = docs.get(name, "")
        extra = _constraint_text(f)
        text = doc + (f" [{extra}]" if extra else "")
        for ln in textwrap.wrap(text, 100 - indent - 2) if text else []:
            out.append(f"{pad}# {ln}")
        if isinstance(val, BaseModel):
            out.append(f"{pad}{name}:")
            out.append(defaults_yaml(type(val), indent + 2))
        else:
            v = yaml.safe_dump(to_dict(val), default_flow_style=True, width=1000).strip().removesuffix("...").strip()
            out.append(f"{pad}{name}: {v}")
    return "\n".join(out)


def _markdown_roles(text: str) -> str:
    """Docstring markup as Markdown: a Sphinx role (``:func:`x```, ``:mod:`~a.b```) and an RST literal
    (double backticks) become inline code, since the book's Markdown pages do not resolve roles."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def reference_markdown() -> str:
    """The *Parameters* reference page of the book: every field of every section, generated from the
    schema (default, allowed values, meaning)."""
    rows = reference_rows()
    out = ["# Parameters", "",
           "Every parameter of a params file, generated from the package's schema (`hcc25d.config`): its",
           "default, the values it accepts and what it does. A params file states only what differs from the",
           "defaults; `python -m hcc25d params --defaults` prints the same as a commented YAML file, and",
           "`python -m hcc25d check --params FILE` validates a file against it. Lists are written `[a, b]`.",
           ""]
    section = None
    for r in rows:
        sec = r["parameter"].split(".")[0] if "." in r["parameter"] else "(top level)"
        if sec != section:
            section = sec
            lines = ((type(getattr(Params(), sec)).__doc__ or "").strip().splitlines()
                     if sec != "(top level)" else [])
            doc = lines[0] if lines and not lines[0].startswith(("A frozen params section", "Usage docs")) else ""
            out += ["", f"## `{sec}`" if sec != "(top level)" else "## Top level", ""]
            if doc:
                out += [_markdown_roles(doc), ""]
            out += ["| parameter | default | allowed | meaning |", "|---|---|---|---|"]
        cell = lambda t: str(t).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out.append(f"| `{r['parameter']}` | `{cell(r['default'])}` | {cell(r['allowed'])} | {_markdown_roles(cell(r['meaning']))} |")
    return "\n".join(out) + "\n"


def non_defaults(params: Params) -> list[dict]:
    """The parameters of a run that differ from the defaults: ``[{parameter, value, default}]``."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "grids":
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    base = dict(flat(to_dict(Params())))
    return [{"parameter": k, "value": v, "default": base.get(k)} for k, v in flat(to_dict(params))
            if base.get(k) != v]
