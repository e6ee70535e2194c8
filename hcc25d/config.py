"""Run parameters: one YAML file per run, validated into a frozen config object.

Every stage notebook starts with ``cfg = hcc25d.config.load(params_file, overrides)``. Unknown keys,
wrong types and values outside a field's allowed choices are all collected and reported together in
one :class:`ConfigError` that names each field, so a typo in a params file fails before any work.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = [
    "ConfigError",
    "Params",
    "load",
    "from_dict",
    "to_dict",
    "section_dict",
]


class ConfigError(ValueError):
    """A params file (or override) is invalid; the message lists every problem found."""


def _choices(*values: str, default: Any) -> Any:
    return field(default=default, metadata={"choices": values})


# --------------------------------------------------------------------------------------------------
# Sections. Later stages add their own sections; each field has a default so a params file only
# states what differs from the defaults.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataCfg:
    #: ``twin``: generate the synthetic study twin; ``manifest``: read own data from a manifest CSV.
    source: str = _choices("twin", "manifest", default="twin")
    #: path to the manifest CSV (own data), relative to the project root or absolute.
    manifest: Optional[str] = None
    #: the phases the study has (a manifest may then leave the other phase columns empty).
    phases: tuple[str, ...] = ("plain", "arterial", "portal")
    #: label of the tumour in a multi-label mask (null: the mask must be binary).
    mask_label: Optional[int] = None
    #: replace patient ids by a salted hash in everything written under results/.
    pseudonymise: bool = False
    #: the salt of the pseudonyms (keep it secret, keep it fixed across runs).
    salt: str = ""


@dataclass(frozen=True)
class TwinCfg:
    """Imaging twin: grid and scanner profile per centre (lists: [centre 1, centre 2])."""

    #: in-plane matrix of centre 1 (centre 2 covers the same field of view with its own pixel size).
    matrix: int = 144
    #: in-plane pixel size (mm) per centre.
    spacing_xy: tuple[float, ...] = (0.8, 0.9)
    #: slice thickness (mm) per centre.
    slice_mm: tuple[float, ...] = (2.0, 2.5)
    #: cranio-caudal extent of the volume (mm).
    extent_z_mm: float = 100.0
    #: image noise SD (HU) per centre.
    noise_hu: tuple[float, ...] = (12.0, 18.0)
    #: scanner blur (Gaussian SD, mm) per centre.
    blur_mm: tuple[float, ...] = (0.6, 0.9)
    #: HU offset per centre (calibration difference).
    hu_offset: tuple[float, ...] = (0.0, 8.0)
    #: arterial-phase timing factor per centre (1 = centre 1's peak; < 1: later, less arterial contrast).
    arterial_timing: tuple[float, ...] = (1.0, 0.85)
    #: multiplies every effect size of the latent-risk model (0 = no imaging signal).
    signal_scale: float = 1.0
    #: where the arterial-phase traits sit along z: ``offcentre`` (default: peritumoral enhancement 4-6 mm
    #: and satellites 3-5 mm above/below the tumour's maximal cross-section) or ``central`` (the same
    #: traits on the maximal cross-section itself: the negative control, where 2.5D should gain nothing).
    signal_position: str = _choices("offcentre", "central", default="offcentre")


@dataclass(frozen=True)
class CohortCfg:
    #: cohort specification (the paper's Table 1); ``default`` is the transcription shipped with the
    #: package (``hcc25d/data/table1_spec.yaml``).
    spec: str = "default"
    #: number of outcome-stratified patients kept for the imaging stages (``null`` = all); the cohort
    #: chapter always shows the full Table 1.
    n_imaging: Optional[int] = None


@dataclass(frozen=True)
class CropCfg:
    """2.5D cropping (see :mod:`hcc25d.crop25d`)."""

    #: resampled voxel spacing (x, y, z) in mm.
    spacing_mm: tuple[float, ...] = (1.0, 1.0, 1.0)
    #: image interpolation for resampling (the mask always uses nearest neighbour).
    interpolation: str = _choices("linear", "bspline", default="linear")
    #: CT window width and level (HU) mapped to [0, 1].
    window_width: float = 250.0
    window_level: float = 50.0
    #: axial offsets (slices of the resampled grid) around the maximal-area slice.
    axial_offsets: tuple[int, ...] = (0, -1, 1, -2, 2, -4, 4)
    #: sagittal and coronal offsets around their maximal-area slices.
    sagittal_offsets: tuple[int, ...] = (0,)
    coronal_offsets: tuple[int, ...] = (0,)
    #: context around the ROI's bounding box (mm, each side).
    margin_mm: float = 12.0
    #: output size (pixels) of each instance (224 in the paper and the gpu profile; 64 on a CPU).
    image_size: int = 64
    #: phases as channels, in the paper's order.
    channels: tuple[str, ...] = ("arterial", "plain", "portal")
    #: ``central``: axial neighbours share one box (aligned, one scale); ``slice``: each slice's own ROI box.
    box: str = _choices("central", "slice", default="central")
    #: ROI thinner than an offset: ``keep`` the slice, or ``clamp`` it to the ROI's last slice.
    thin_roi: str = _choices("keep", "clamp", default="keep")
    #: several tumour components: ``largest`` only, or ``each`` as its own bag.
    components: str = _choices("largest", "each", default="largest")
    min_component_voxels: int = 10
    #: 3D crops for the 3D baseline: cube edge (mm) and voxels per edge.
    cube_mm: float = 96.0
    cube_size: int = 48


@dataclass(frozen=True)
class RadiomicsCfg:
    """Radiomics features (see :mod:`hcc25d.radiomics`)."""

    #: PyRadiomics settings file (setting / imageType / featureClass).
    settings: str = "params/radiomics/ct_default.yaml"
    #: a failed patient-phase: ``stop`` the run, or ``continue`` and list what is missing.
    on_error: str = _choices("stop", "continue", default="stop")
    #: context kept around the ROI before PyRadiomics resamples (mm).
    pad_mm: float = 10.0
    #: run the PyRadiomics-baseline and IBSI-phantom validations in the chapter.
    validate: bool = True


@dataclass(frozen=True)
class AugmentCfg:
    #: random flips (2D square crops also transposed: the 8 symmetries of the square; 3D: 3 axes).
    flip: bool = True
    #: random in-plane rotation range (degrees, 2D only; 0 = off).
    rotate_deg: float = 0.0
    #: additive Gaussian image noise, per-image SD drawn from [0, x] (window units; 0.04 ≈ 10 HU).
    noise: float = 0.0
    #: intensity jitter: scale 1 ± x, shift ± x/2 (window units). Off by default: the planted contrasts of
    #: the twin are 0.02–0.2 window units, so a jitter of that size would drown them.
    intensity: float = 0.0


@dataclass(frozen=True)
class TrainCfg:
    """Training settings shared by the slice-level CNNs and the 3D baseline."""

    #: the fixed budget of epochs (every model trains for exactly this many unless ``val_fraction`` > 0).
    epochs: int = 10
    batch_size: int = 16
    optimizer: str = _choices("adamw", "sgd", default="adamw")
    lr: float = 0.001
    weight_decay: float = 0.0001
    #: learning-rate schedule after the warm-up, stepped every batch.
    schedule: str = _choices("cosine", "step", "none", default="cosine")
    #: epochs of linear learning-rate warm-up (from 0.1 × lr).
    warmup_epochs: float = 1.0
    #: ``balanced``: weight the positive class by n_negative / n_positive; ``none``.
    class_weight: str = _choices("balanced", "none", default="balanced")
    dropout: float = 0.2
    #: fraction of each model's training patients held out for early stopping on the validation *loss*
    #: (0 = no early stopping: the fixed budget of ``epochs``).
    val_fraction: float = 0.0
    #: with ``val_fraction`` > 0: epochs without improvement of the validation loss before stopping.
    patience: int = 3
    #: cross-fitting folds: k models, each trained on k − 1 folds of the training patients.
    folds: int = 5
    #: ``crossfit`` (leakage-safe: training patients out of fold, the others by the mean of the same fold
    #: models) or ``insample`` (the paper's way: one final model predicts its own training patients too).
    prediction: str = _choices("crossfit", "insample", default="crossfit")
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    #: ``parenchyma``: shift each patient's phases so that the peritumoral parenchyma sits at the training
    #: cohort's median (removes scanner HU offsets and bolus-timing shifts of the liver); ``none``.
    intensity_reference: str = _choices("parenchyma", "none", default="parenchyma")
    #: clinical variables the image models must not learn as a shortcut (e.g. ``[tumor_size]``, which the
    #: images show and the clinical signature already has): training instances are weighted so that each
    #: combination of outcome and these variables carries the same weight. Empty = the paper's way.
    #: The slice-level setting also weights the DL_2.5D classifiers of the signatures stage.
    deconfound: tuple[str, ...] = ()
    #: mixed precision on CUDA.
    amp: bool = True
    deterministic: bool = True
    #: ``auto`` (CUDA when available) or ``cpu``.
    device: str = _choices("auto", "cpu", default="auto")
    #: keep per-epoch checkpoints in results/<run>/.cache/ and resume an interrupted training.
    resume: bool = True


@dataclass(frozen=True)
class CnnCfg(TrainCfg):
    """Slice-level models (see :mod:`hcc25d.cnn`); training settings as :class:`TrainCfg`."""

    #: ``litecnn`` (this package's light CNN, trained from scratch: the CPU default) or torchvision
    #: backbones (the paper's: densenet121, resnet50, resnet101, vgg19).
    backbones: tuple[str, ...] = ("litecnn",)
    #: channels of litecnn's first layer (ignored by torchvision backbones).
    width: int = 16
    #: ``imagenet`` (torchvision weights API), ``none`` (random initialisation) or a path to a state dict.
    weights: str = "none"
    #: ImageNet weights unavailable: ``fail``, or ``random`` initialisation (said loudly; not transfer learning).
    on_missing_weights: str = _choices("fail", "random", default="fail")
    #: backbone for the multi-instance stage: ``cv`` = best out-of-fold training AUC (fixed rule), or a backbone name.
    selection: str = "cv"
    epochs: int = 20
    batch_size: int = 32
    folds: int = 3
    lr: float = 0.002
    weight_decay: float = 0.01
    dropout: float = 0.3
    warmup_epochs: float = 2.0
    augment: AugmentCfg = field(default_factory=AugmentCfg)


@dataclass(frozen=True)
class Cnn3dCfg(TrainCfg):
    """The 3D baseline (see :mod:`hcc25d.cnn3d`); training settings as :class:`TrainCfg`."""

    #: channels of the first stage (64 = ResNet-18's widths).
    width: int = 16
    folds: int = 3
    augment: AugmentCfg = field(default_factory=AugmentCfg)


@dataclass(frozen=True)
class SignaturesCfg:
    """MIL fusion, selection and signatures (see :mod:`hcc25d.mil`, :mod:`hcc25d.signatures`)."""

    #: cross-validation of the grid searches (training cohort only): ``cnn`` = the slice-level CNN's
    #: cross-fitting folds (so a cross-validated training AUC is out of sample for the whole chain), or
    #: ``stratified``: ``cv_folds`` stratified folds of their own (the paper's 5-fold CV).
    cv: str = _choices("cnn", "stratified", default="cnn")
    cv_folds: int = 5
    #: class weighting of all five families (sample weights passed to the classifier's fit): ``balanced``
    #: or ``none``.
    class_weight: str = _choices("balanced", "none", default="balanced")
    #: univariate filter: keep features with P below this.
    p_threshold: float = 0.05
    #: correlation pruning: drop a feature with |r| above this with a kept one.
    corr_threshold: float = 0.9
    #: likelihood-histogram bins and bag-of-words vocabulary size.
    n_bins: int = 10
    n_words: int = 8
    #: model families (lr, rf, et, xgb, lgbm).
    models: tuple[str, ...] = ("lr", "rf", "et", "xgb", "lgbm")
    #: per-family parameter grids overriding the defaults, e.g. {rf: {max_depth: [3, 5]}}.
    grids: dict = field(default_factory=dict)
    #: DL_2.5D model: ``cv`` = best mean CV AUC (fixed rule), or a family (``rf`` = the paper's choice).
    dl25d_model: str = "cv"
    #: clinical screening thresholds (univariable, then multivariable; the paper's Table 2 analysis).
    clinical_p_uni: float = 0.05
    clinical_p_multi: float = 0.05


@dataclass(frozen=True)
class AblationsCfg:
    """The ablation stage (see :mod:`hcc25d.ablation`): each variant retrains the slice-level CNN."""

    #: run the ablation stage at all.
    enabled: bool = True
    #: the variants beside the full model: ``2d`` (central axial slice), ``axial`` (no sagittal/coronal
    #: view), ``arterial`` and ``portal`` (one phase), ``no-reference`` (no intensity reference), ``seed``
    #: (the full model retrained with another seed: the noise of training alone).
    variants: tuple[str, ...] = ("2d", "axial", "arterial", "portal", "no-reference", "seed")
    #: also regenerate the twin with its signal on the central slice and compare 2.5D with 2D there
    #: (twin runs only).
    negative_control: bool = True


@dataclass(frozen=True)
class ComputeCfg:
    #: worker processes for per-patient work (-1 = all cores).
    n_jobs: int = 2
    #: joblib backend: ``loky`` (processes), ``threading``, ``dask`` or ``ray`` (needs those installed).
    backend: str = _choices("loky", "threading", "dask", "ray", "sequential", default="loky")
    #: show progress bars.
    progress: bool = True


@dataclass(frozen=True)
class Params:
    #: run name: results go to ``results/<run>/``.
    run: str = "synthetic"
    #: master seed: every random draw of the run derives from it.
    seed: int = 20240601
    #: a sentence describing this run (shown in the book).
    description: str = ""
    data: DataCfg = field(default_factory=DataCfg)
    cohort: CohortCfg = field(default_factory=CohortCfg)
    twin: TwinCfg = field(default_factory=TwinCfg)
    crop: CropCfg = field(default_factory=CropCfg)
    radiomics: RadiomicsCfg = field(default_factory=RadiomicsCfg)
    cnn: CnnCfg = field(default_factory=CnnCfg)
    cnn3d: Cnn3dCfg = field(default_factory=Cnn3dCfg)
    signatures: SignaturesCfg = field(default_factory=SignaturesCfg)
    ablations: AblationsCfg = field(default_factory=AblationsCfg)
    compute: ComputeCfg = field(default_factory=ComputeCfg)


# --------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(arg)}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the (lightly converted) value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        sub: list[str] = []
        out = _coerce(value, inner[0], where, sub)
        if sub:
            errors.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return out
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            errors.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
            return value
        return tuple(_coerce(v, arg, f"{where}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {value!r}")
            return value
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a section (mapping), got {value!r}")
            return tp()
        return _build(tp, value, where, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, mapping: dict, where: str, errors: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in mapping.items():
        loc = f"{where}.{key}" if where else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            errors.append(f"{loc}: unknown key (allowed here: {allowed})")
            continue
        val = _coerce(value, hints[key], loc, errors)
        choices = fields[key].metadata.get("choices")
        if choices and val not in choices:
            errors.append(f"{loc}: {val!r} is not one of {', '.join(map(repr, choices))}")
        kwargs[key] = val
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        errors.append(f"{where or 'params'}: {exc}")
        return cls()


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
    params = _build(Params, mapping, "", errors)
    if not errors:
        errors += _cross_field_problems(params)
    if errors:
        raise ConfigError(f"{source}: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    return params


def _cross_field_problems(p: Params) -> list[str]:
    """Combinations of individually valid values that cannot work."""
    errors = []
    if p.data.source == "manifest" and not p.data.manifest:
        errors.append("data.manifest: required when data.source is manifest (the path to your manifest CSV)")
    if p.data.pseudonymise and not str(p.data.salt).strip():
        errors.append("data.salt: required when data.pseudonymise is true (a secret string, kept fixed "
                      "across runs; without it the pseudonyms are a plain hash anyone can recompute)")
    if not p.data.phases:
        errors.append("data.phases: name at least one phase (plain, arterial, portal)")
    return errors


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
    if dataclasses.is_dataclass(params):
        return {f.name: to_dict(getattr(params, f.name)) for f in dataclasses.fields(params)}
    if isinstance(params, (list, tuple)):
        return [to_dict(v) for v in params]
    if isinstance(params, dict):
        return {k: to_dict(v) for k, v in params.items()}
    return params


def section_dict(params: Params, names: typing.Iterable[str]) -> dict:
    """The named top-level sections/fields of ``params`` as plain Python (for stage hashing)."""
    d = to_dict(params)
    return {n: d[n] for n in names if n in d}
