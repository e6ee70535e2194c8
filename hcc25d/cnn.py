"""Slice-level (instance-level) transfer learning on the 2.5D instances, with leakage-safe predictions.

Only numpy, torch and torchvision are needed here (the stage can run on a GPU machine without
SimpleITK or PyRadiomics).

* Backbones: the CPU default ``litecnn`` (:class:`LiteCNN`, a four-layer network of about 60 k
  parameters made to train from scratch on ~1,500 instances) or any torchvision classification model by
  name — the paper's ``densenet121``, ``resnet50``, ``resnet101``, ``vgg19`` — with a new one-logit head.
* Weights: ``imagenet`` (torchvision's weights API; used when cached or downloadable), ``none`` (random
  initialisation), or a path to a state dict. When ImageNet weights are unavailable,
  ``on_missing_weights: fail`` stops, ``random`` continues from random initialisation and says so (the
  result is then *not* transfer learning; :func:`build_model` returns that fact for provenance).
* Training: instance label = patient label; the eight flips/transpositions of the square (which keep
  every intensity), optional image noise, intensity jitter off by default (it is as large as the planted
  contrast); class weighting; AdamW or SGD with a linear warm-up then cosine decay, stepped every batch;
  a fixed budget of epochs (no early stopping on a noisy validation AUC, unless ``val_fraction`` > 0);
  mixed precision on CUDA; deterministic mode; per-epoch checkpoints with resume.
* Intensity reference: each patient's phases can be shifted so that their peritumoral parenchyma sits
  where the training cohort's does (:func:`reference_shift`), which removes a scanner's HU offset and a
  contrast bolus that reaches the liver earlier or later.
* Arterial excess (:class:`ArterialExcess`, ``arterial_excess``): a fourth input channel, each pixel's
  arterial value minus what its plain and portal values predict (a label-free table fitted on the training
  cohort), so that arterial-only enhancement is given to the network instead of left for it to discover.
* Predictions for the multi-instance stage, from **one model set**: training patients are predicted by
  **cross-fitting** (k patient-level folds; no model predicts a patient it was trained on), internal and
  external patients by the mean of the same k fold models — so all cohorts' probabilities come from the
  same models and lie on the same scale. ``prediction: insample`` reproduces the paper's way (one final
  model trained on all training patients predicts everyone, its own training patients included).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .cohort import in_cohort_order
from .config import TrainCfg, to_dict
from .crop25d import Bags
from .stats import auc

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WeightsUnavailable",
    "set_determinism",
    "LiteCNN",
    "OWN_MODELS",
    "build_model",
    "target_layer",
    "reference_shift",
    "vessel_gain",
    "ArterialExcess",
    "add_arterial_excess",
    "timing_reference",
    "prepare_input",
    "input_shift",
    "patient_folds",
    "predict",
    "pool_logits",
    "pool_probabilities",
    "train_model",
    "crossfit_predict",
    "fold_scales",
    "align_scale",
    "size_adjust",
    "undo_size_adjust",
    "latent_label_reference",
    "LABEL_REFERENCE",
    "score_size_outcome",
    "deconfounding_weights",
    "ensemble",
    "torch_device",
    "gradcam",
    "select_backbone",
    "weights_info",
    "no_imagenet_warning",
    "model_factory",
    "train_backbones",
    "gradcam_panels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be loaded (and ``on_missing_weights`` is ``fail``)."""


def set_determinism(seed: int, deterministic: bool = True) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
def _imagenet_weights(name: str):
    """The torchvision weights enum member for ``name`` (DEFAULT) or None if the model has none."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def _replace_head(model, name: str, dropout: float):
    import torch.nn as nn

    head = lambda n_in: nn.Sequential(nn.Dropout(dropout), nn.Linear(n_in, 1))  # noqa: E731
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        model.fc = head(model.fc.in_features)
    elif hasattr(model, "classifier"):
        cl = model.classifier
        if isinstance(cl, nn.Linear):
            model.classifier = head(cl.in_features)
        elif isinstance(cl, nn.Sequential):
            idx = max(i for i, m in enumerate(cl) if isinstance(m, nn.Linear))
            cl[idx] = nn.Linear(cl[idx].in_features, 1)
        else:  # pragma: no cover
            raise ValueError(f"do not know how to replace the head of {name}")
    elif hasattr(model, "heads"):  # vision transformers
        model.heads = head(model.heads[-1].in_features)
    else:  # pragma: no cover
        raise ValueError(f"do not know how to replace the head of {name}")
    return model


def _cbr(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LiteCNN(nn.Module):
    """The CPU default network (about 60 k parameters at ``width`` 16), for training from scratch: a
    strided 3×3 stem, three 3×3 convolution layers with batch normalisation (two 2× max-poolings between
    them), then global average *and* global max pooling (the mean brightness and texture of the crop, and
    its strongest local feature: a small enhancing nodule) into one logit. ``width`` channels in the
    stem, 2× and 4× after.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, dropout: float = 0.3):
        super().__init__()
        w = int(width)
        self.features = nn.Sequential(_cbr(in_channels, w, 2), _cbr(w, 2 * w), nn.MaxPool2d(2),
                                      _cbr(2 * w, 4 * w), nn.MaxPool2d(2), _cbr(4 * w, 4 * w))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * w, 1)

    def forward(self, x):
        f = self.features(x)
        return self.fc(self.dropout(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)))


#: networks of this package (not torchvision's): name → factory(width, dropout)
OWN_MODELS = {"litecnn": lambda width, dropout, in_channels=3: LiteCNN(in_channels, width, dropout)}


#: ImageNet weights this process found neither cached nor downloadable ((weights, hub dir) → why): a
#: stage builds one network per fold model, and an offline machine would otherwise try each time
_UNAVAILABLE: dict = {}


def build_model(name: str, weights: str = "imagenet", on_missing_weights: str = "fail", dropout: float = 0.2,
                download_timeout: float = 15.0, width: int = 16, in_channels: int = 3):
    """A torchvision backbone with a one-logit head, or one of :data:`OWN_MODELS`. Returns ``(model,
    info)`` where ``info`` says which weights were really used (``imagenet``, ``random``, or the path) and
    why. The package's own networks have no ImageNet weights: they are always trained from scratch
    (``weights`` must then be ``none`` or a path)."""
    import torch
    import torchvision

    info = {"backbone": name, "requested": weights, "used": None, "note": ""}
    if name not in OWN_MODELS and in_channels != 3:
        raise ValueError(f"{name} takes three input channels, not {in_channels}: the arterial-excess channel "
                         f"(cnn.arterial_excess) is for this package's own networks ({sorted(OWN_MODELS)}); "
                         f"set cnn.arterial_excess: false for torchvision backbones")
    if name in OWN_MODELS:
        model = OWN_MODELS[name](width, dropout, in_channels)
        if weights in ("none", None, ""):
            info.update(used="random", note=f"{name} (width {width}): trained from scratch by design")
            return model, info
        if weights == "imagenet":
            raise ValueError(f"{name} is this package's own network and has no ImageNet weights: set "
                             f"cnn.weights: none (or a torchvision backbone for transfer learning)")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        info.update(used=str(weights), note=f"state dict from {weights}; missing {len(missing)}, "
                                            f"unexpected {len(unexpected)} keys")
        return model, info
    if weights == "imagenet":
        w = _imagenet_weights(name)
        key = (str(w), torch.hub.get_dir())
        if w is None:
            msg = f"torchvision has no ImageNet weights for {name}"
        elif key in _UNAVAILABLE:  # tried once in this process: not again for every fold model
            msg = _UNAVAILABLE[key]
        else:
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(download_timeout)
            # torchvision initialises the network before it fetches the weights: a failed fetch has drawn
            # from the random stream, and the fallback below must start where it would have without it
            rng = torch.random.get_rng_state()
            try:
                # torchvision's weights API: loads from the hub cache, downloads when it can; the hub's
                # "Downloading: ..." line goes to stdout, i.e. into the book: said in the note instead
                with contextlib.redirect_stdout(io.StringIO()) as said:
                    model = torchvision.models.get_model(name, weights=w)
                fetched = ", downloaded to the hub cache" if "Downloading" in said.getvalue() else ""
                info.update(used="imagenet", note=f"{w} ({w.url.rsplit('/', 1)[-1]}{fetched})")
                return _replace_head(model, name, dropout), info
            except Exception as exc:  # no network, no cache
                msg = (f"ImageNet weights {w} for {name} are neither in the torch hub cache "
                       f"({torch.hub.get_dir()}/checkpoints) nor downloadable: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:160] if str(exc) else ''}")
                _UNAVAILABLE[key] = msg
                torch.random.set_rng_state(rng)
            finally:
                socket.setdefaulttimeout(old)
        if on_missing_weights == "fail":
            raise WeightsUnavailable(msg + " — set cnn.on_missing_weights: random to train from random "
                                           "initialisation instead (then it is not transfer learning)")
        model = torchvision.models.get_model(name, weights=None)
        info.update(used="random", note="FALLBACK: " + msg)
        return _replace_head(model, name, dropout), info
    model = torchvision.models.get_model(name, weights=None)
    model = _replace_head(model, name, dropout)
    if weights in ("none", None, ""):
        info.update(used="random", note="random initialisation requested (weights: none)")
        return model, info
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    info.update(used=str(weights), note=f"state dict from {weights}; missing {len(missing)}, unexpected {len(unexpected)} keys")
    return model, info


def target_layer(model):
    """The layer Grad-CAM looks at: the last convolutional block of the backbone."""
    import torch.nn as nn

    if hasattr(model, "layer4"):
        return model.layer4[-1]
    if type(model).__name__ == "LiteCNN":
        return model.features[-1]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return convs[-1]


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
#: ``intensity_reference: two-point``: a phase whose tumour stands less than this far from the parenchyma
#: (window units; 0.02 = 5 HU at the default window), in the patient or in the training cohort, is only
#: shifted, not rescaled; and the range the rescaling factor is held to.
TWO_POINT_MIN_CONTRAST = 0.02
TWO_POINT_GAIN_RANGE = (0.5, 2.0)
#: ``intensity_reference: vessel``: a patient whose vessel ROI enhances by less than this in the arterial
#: phase (HU over the plain phase) is not rescaled; the factor is held to :data:`TWO_POINT_GAIN_RANGE`.
VESSEL_MIN_ENHANCEMENT_HU = 20.0


def _with_levels(idx: pd.DataFrame, target) -> pd.DataFrame:
    """The index with ``lvl_<phase>``: where each instance's parenchyma sits after the reference — the
    training target of every phase (``target``), or, with no reference (``None``), the patient's own
    ``ref_<phase>`` (NaN where it was not measured). What :func:`timing_reference` scales about."""
    cols = [c for c in idx.columns if c.startswith("ref_")]
    out = idx.copy()
    for j, c in enumerate(cols):
        out["lvl_" + c[4:]] = idx[c].astype(float) if target is None else float(target[j])
    return out


def vessel_gain(pats: pd.DataFrame, train) -> pd.Series:
    """Each patient's factor for the arterial enhancement (``intensity_reference: vessel``): the training
    patients' median vessel enhancement (``ves_arterial − ves_plain``, HU) over the patient's own, held to
    :data:`TWO_POINT_GAIN_RANGE`; 1 where it was not measured or is below
    :data:`VESSEL_MIN_ENHANCEMENT_HU`. ``pats``: one row per patient with the ``ves_`` columns."""
    need = ["ves_plain", "ves_arterial"]
    if not set(need) <= set(pats.columns):
        raise ValueError("cnn.intensity_reference: vessel needs each patient's vessel ROI readings on the plain "
                         "and arterial phases (the case table's vessel_hu_plain and vessel_hu_arterial columns, "
                         "which the twin writes and a manifest may give): add them, or use parenchyma")
    own = pats["ves_arterial"].astype(float) - pats["ves_plain"].astype(float)
    ok = own >= VESSEL_MIN_ENHANCEMENT_HU
    if not (ok & np.asarray(train, bool)).any():
        raise ValueError("cnn.intensity_reference: vessel: no training patient has a vessel enhancement of at "
                         f"least {VESSEL_MIN_ENHANCEMENT_HU:g} HU, so there is no level to scale to")
    typical = float(own[ok & np.asarray(train, bool)].median())
    return (typical / own).where(ok, 1.0).clip(*TWO_POINT_GAIN_RANGE).fillna(1.0).rename("arterial")


def _vessel_gain(bags: Bags, pats: pd.DataFrame, ref: pd.DataFrame, train, channels):
    """The arterial channel rescaled by :func:`vessel_gain` about the plain phase (or about the patient's
    arterial parenchyma level where plain is not a channel); returns the bags, the parenchyma levels as
    they then are, and the factors (one column per channel, 1 but for the arterial one)."""
    gain = pd.DataFrame(1.0, index=pats.index, columns=channels)
    if "arterial" not in channels:
        return bags, ref, gain
    g = vessel_gain(pats, train)
    gain["arterial"] = g
    a = channels.index("arterial")
    rows = g.reindex(bags.index["patient_id"]).to_numpy(np.float32)
    rows = rows.reshape((-1,) + (1,) * (bags.x.ndim - 2))
    x = bags.x.copy()
    ref = ref.copy()
    if "plain" in channels:
        p = channels.index("plain")
        pivot = bags.x[:, p].astype(np.float32)
        ref["arterial"] = ref["plain"] + g * (ref["arterial"] - ref["plain"])
    else:
        pivot = ref["arterial"].reindex(bags.index["patient_id"]).to_numpy(np.float32)
        pivot = np.nan_to_num(pivot).reshape(rows.shape)
    x[:, a] = (pivot + rows * (bags.x[:, a].astype(np.float32) - pivot)).astype(x.dtype)
    return Bags(x, bags.index, bags.channels), ref, gain


def reference_shift(bags: Bags, method: str = "parenchyma") -> tuple[Bags, pd.DataFrame]:
    """Reference each patient's channels to the training cohort's levels.

    ``parenchyma``: shift each channel so that the patient's peritumoral parenchyma sits at the training
    cohort's level. The cropping stage measured every patient's parenchyma per phase (``ref_<phase>``
    columns of the index, window units; see :func:`hcc25d.crop25d.parenchyma_reference`). The target of
    each phase is the median over the *training* patients (so nothing is fitted on the validation
    cohorts); every patient's channel is moved by ``target − ref``. A scanner's HU offset or a contrast
    bolus that reaches the liver earlier or later then no longer moves the whole image, while the tumour's
    and the peritumoral contrast *relative to the liver* stays.

    ``two-point``: also rescale each channel about the parenchyma so that the patient's tumour
    (``tum_<phase>``, :func:`hcc25d.crop25d.tumour_reference`) sits at the training cohort's median tumour
    level too: ``x' = L + g (x − l)`` with ``g = (T − L) / (t − l)`` (``l``, ``t``: the patient's parenchyma
    and tumour; ``L``, ``T``: their training medians), ``g`` held to :data:`TWO_POINT_GAIN_RANGE` and 1 where
    either contrast is below :data:`TWO_POINT_MIN_CONTRAST` or the two differ in sign. A later arterial
    phase lowers the tumour's enhancement *against the liver*, which a shift cannot undo; the rescaling
    does, and scales every contrast to the liver (a peritumoral enhancement too) by the same factor. It
    also removes each patient's own tumour–liver contrast: use it where that contrast differs between
    scanners by protocol, not where it is a finding.

    ``vessel``: first rescale each patient's arterial enhancement by the enhancement of the blood, then
    the parenchyma shift. ``g = E / e``, ``e`` the patient's arterial minus plain HU in a vessel ROI (the
    aorta; the case table's ``vessel_hu_<phase>`` columns, index ``ves_<phase>``), ``E`` its median over the
    training patients; the arterial channel becomes ``plain + g (arterial − plain)`` voxel by voxel (about
    the patient's own arterial parenchyma level where the plain phase is not a channel), ``g`` held to
    :data:`TWO_POINT_GAIN_RANGE` and 1 where ``e`` is missing or below
    :data:`VESSEL_MIN_ENHANCEMENT_HU`. A bolus caught later or earlier, or a smaller dose, scales the
    enhancement of the blood and, to first order, of everything it feeds (the tumour, an arterial
    peritumoral enhancement, satellites), which a shift cannot undo and the two-point reference undoes only
    by removing the patient's own tumour contrast. Radiology's normalisation to the aorta; it needs a vessel
    ROI per patient and phase.

    ``none`` returns the bags' arrays unchanged. Every method adds ``lvl_<phase>`` to the index: the
    parenchyma's level after the reference (what ``augment.timing`` scales about). Returns
    ``(bags, shifts)``, ``shifts`` one row per patient with each channel's shift of the parenchyma (window
    units); for ``two-point`` its ``attrs["gain"]`` holds each patient's factor per channel.
    """
    idx = bags.index
    cols = [c for c in idx.columns if c.startswith("ref_")]  # one per channel, in channel order
    channels = [c[4:] for c in cols]
    pats = idx.drop_duplicates("patient_id").set_index("patient_id")
    if method == "none":
        return (Bags(bags.x, _with_levels(idx, None), bags.channels),
                pd.DataFrame(0.0, index=pats.index, columns=channels))
    if method not in ("parenchyma", "two-point", "vessel"):
        raise ValueError(f"intensity_reference must be parenchyma, two-point, vessel or none, not {method!r}")
    if len(cols) != bags.x.shape[1]:
        raise ValueError(f"cnn.intensity_reference: {method} needs the cropping stage's ref_<phase> "
                         f"columns, one per channel (found {cols}): rerun the crop25d stage, or set it to none")
    ref = pats[cols].astype(float)
    ref.columns = channels
    train = pats["cohort"] == "training"
    if method == "vessel":
        bags, ref, vgain = _vessel_gain(bags, pats, ref, train, channels)
    target = ref[train].median()
    shifts = (target - ref).fillna(0.0)
    gain = pd.DataFrame(1.0, index=pats.index, columns=channels)
    if method == "two-point":
        tcols = [f"tum_{c}" for c in channels]
        if not set(tcols) <= set(idx.columns):
            raise ValueError("cnn.intensity_reference: two-point needs the cropping stage's tum_<phase> columns "
                             "(the tumour's level per phase): rerun the crop25d stage, or use parenchyma")
        tum = pats[tcols].astype(float)
        tum.columns = channels
        own, typical = tum - ref, tum[train].median() - target
        g = typical / own
        ok = (own.abs() >= TWO_POINT_MIN_CONTRAST) & (typical.abs() >= TWO_POINT_MIN_CONTRAST) & (g > 0)
        gain = g.where(ok, 1.0).clip(*TWO_POINT_GAIN_RANGE).fillna(1.0)
    shape = (len(idx), len(channels)) + (1,) * (bags.x.ndim - 2)
    k = gain.reindex(idx["patient_id"]).to_numpy(np.float32).reshape(shape)
    lvl = ref.fillna(target).reindex(idx["patient_id"]).to_numpy(np.float32).reshape(shape)
    # x' = L + g (x - l): with g = 1 exactly the parenchyma shift x + (L - l)
    x = (target.to_numpy(np.float32).reshape((1, -1) + (1,) * (bags.x.ndim - 2))
         + k * (bags.x.astype(np.float32) - lvl)).astype(np.float16)
    if method in ("parenchyma", "vessel"):  # the shift alone, as before: x + (L - l)
        per_row = shifts.reindex(idx["patient_id"]).to_numpy(np.float32).reshape(shape)
        x = (bags.x.astype(np.float32) + per_row).astype(np.float16)
    shifts.attrs["gain"] = vgain if method == "vessel" else gain
    return Bags(x, _with_levels(idx, target.reindex(channels).to_numpy(float)), bags.channels), shifts


#: the arterial-excess channel: in-plane smoothing (pixels) and gain (see :class:`ArterialExcess`)
EXCESS_SMOOTH_PX = 1.0
EXCESS_SCALE = 2.0


class ArterialExcess:
    """The *arterial excess*: each pixel's arterial value minus the arterial value that its plain and portal
    values predict — enhancement in the arterial phase that the other two phases do not explain.

    Radiologists read the arterial phase *against* the others (arterial hyper-enhancement, wash-out); a
    network that sees the three phases as channels can learn that comparison, but from about a hundred
    patients' outcomes it mostly does not (the CNN chapter shows which traits it reads). This transform
    gives it the comparison ready-made, as a fourth channel; the three phases stay as they are.

    ``fit`` learns, on the given arrays only and without any label, the mean arterial value in each cell of
    a ``bins`` × ``bins`` grid of (plain, portal) values (window units, [0, 1]; every channel first smoothed
    in-plane with a Gaussian of ``smooth_px`` pixels, which averages the image noise); cells with fewer than
    ``min_count`` pixels take the value of the nearest cell that has enough. Tissue by tissue, the table is
    what the arterial phase usually looks like where the plain and portal phases look like this: liver,
    tumour, vessels and fat each sit in their own cells. ``transform`` appends ``scale`` × (smoothed arterial
    − table value) + 0.5 as the last channel. Works for 2D instances (N, C, H, W) and 3D cubes (N, C, D, H, W);
    smoothing is in-plane only (the last two axes).
    """

    def __init__(self, channels: Sequence[str], bins: int = 40, smooth_px: float = EXCESS_SMOOTH_PX,
                 min_count: int = 20, scale: float = EXCESS_SCALE):
        self.channels = list(channels)
        missing = [c for c in ("arterial", "plain", "portal") if c not in self.channels]
        if missing:
            raise ValueError(f"the arterial excess needs the arterial, plain and portal phases as channels; "
                             f"{missing} missing from {self.channels} (set cnn.arterial_excess: false)")
        self.bins, self.smooth_px, self.min_count, self.scale = int(bins), float(smooth_px), int(min_count), float(scale)

    def _parts(self, x: np.ndarray):
        from scipy import ndimage

        sigma = (0,) * (x.ndim - 3) + (self.smooth_px, self.smooth_px)  # per channel: (N, [D,] H, W)
        a, pl, po = (ndimage.gaussian_filter(x[:, self.channels.index(c)].astype(np.float32), sigma)
                     for c in ("arterial", "plain", "portal"))
        cell = lambda v: np.clip((v * self.bins).astype(np.int64), 0, self.bins - 1)  # noqa: E731
        return a, cell(pl), cell(po)

    def fit(self, x: np.ndarray, chunk: int = 256) -> "ArterialExcess":
        from scipy import ndimage

        sums = np.zeros((self.bins, self.bins))
        counts = np.zeros((self.bins, self.bins))
        for i in range(0, len(x), chunk):
            a, i_pl, i_po = self._parts(x[i:i + chunk])
            np.add.at(sums, (i_pl.ravel(), i_po.ravel()), a.ravel())
            np.add.at(counts, (i_pl.ravel(), i_po.ravel()), 1)
        ok = counts >= self.min_count
        if not ok.any():
            raise ValueError("the arterial excess cannot be fitted: no (plain, portal) cell has "
                             f"{self.min_count} pixels")
        table = np.where(ok, sums / np.maximum(counts, 1), np.nan)
        nearest = ndimage.distance_transform_edt(~ok, return_distances=False, return_indices=True)
        self.table_ = table[tuple(nearest)].astype(np.float32)
        self.counts_ = counts
        return self

    def transform(self, x: np.ndarray, chunk: int = 256) -> np.ndarray:
        if not hasattr(self, "table_"):
            raise RuntimeError("ArterialExcess: call fit first")
        out = np.empty((x.shape[0], x.shape[1] + 1) + x.shape[2:], dtype=x.dtype)
        for i in range(0, len(x), chunk):
            a, i_pl, i_po = self._parts(x[i:i + chunk])
            out[i:i + chunk, :-1] = x[i:i + chunk]
            out[i:i + chunk, -1] = self.scale * (a - self.table_[i_pl, i_po]) + 0.5
        return out


def add_arterial_excess(bags: Bags, channels: Sequence[str], fit_cohort: str = "training",
                        **kwargs) -> tuple[Bags, ArterialExcess]:
    """Append the :class:`ArterialExcess` channel to every instance; the table is fitted on the
    ``fit_cohort`` patients' instances only (no labels are used). Returns ``(bags, fitted transform)``."""
    train = (bags.index["cohort"] == fit_cohort).to_numpy()
    if not train.any():
        raise ValueError(f"the arterial excess is fitted on the {fit_cohort} cohort, which has no instances")
    ae = ArterialExcess(channels, **kwargs).fit(bags.x[train])
    return Bags(ae.transform(bags.x), bags.index, tuple(bags.channels or channels) + ("excess",)), ae


def prepare_input(raw: Bags, C, channels, reference: Optional[str] = None):
    """The networks' input from the cropped instances (or cubes) ``raw``: the intensity reference
    (:func:`reference_shift`, ``C.intensity_reference`` unless ``reference`` is given), then, with
    ``C.arterial_excess``, the arterial-excess channel (:func:`add_arterial_excess`). One place for the
    CNN and 3D chapters, the ablations, the diagnostics and the benchmarks, so that they feed their networks
    the same way. ``C``: a :class:`hcc25d.config.TrainCfg` section. Returns ``(bags, shifts, excess)``;
    ``excess`` is the fitted :class:`ArterialExcess`, or None when it is off."""
    bags, shifts = reference_shift(raw, reference or C.intensity_reference)
    excess = None
    if C.arterial_excess:
        bags, excess = add_arterial_excess(bags, channels)
    return bags, shifts, excess


def input_shift(bags: Bags, channels: Sequence[str]) -> pd.DataFrame:
    """How each cohort's network input differs from the training cohort's, per channel: the mean over the
    whole crop and over its central half in every axis (where the tumour sits), minus the training cohort's
    (window units). Rows: cohorts; columns: ``(region, channel)``. A validation cohort far from 0 in a channel
    the network reads is shifted at the input — a centre effect the intensity reference did not remove."""
    x = bags.x
    sp = x.shape[2:]
    mid = tuple(slice(n // 4, n - n // 4) for n in sp)
    axes = tuple(range(2, x.ndim))
    whole = np.concatenate([x[i:i + 256].astype(np.float32).mean(axis=axes) for i in range(0, len(x), 256)])
    centre = np.concatenate([x[(slice(i, i + 256), slice(None)) + mid].astype(np.float32).mean(axis=axes)
                             for i in range(0, len(x), 256)])
    names = list(channels)[: x.shape[1]] + [f"channel {k}" for k in range(len(channels), x.shape[1])]
    cohort = bags.index["cohort"].to_numpy()
    cols = pd.MultiIndex.from_product([["whole crop", "centre"], names], names=["region", "channel"])
    t = pd.DataFrame(np.hstack([whole, centre]), columns=cols).groupby(cohort, sort=False).mean()
    if "training" in t.index:
        t = t - t.loc["training"]
    order = [c for c in ("training", "internal", "external") if c in t.index]
    return t.loc[order + [c for c in t.index if c not in order]]


def patient_folds(patients: pd.DataFrame, k: int, seed: int) -> list[np.ndarray]:
    """k stratified folds of patient ids (by label)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    ids = patients["patient_id"].to_numpy()
    return [ids[test] for _, test in skf.split(ids, patients["label"].to_numpy())]


def _val_split(patients: pd.DataFrame, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    if fraction <= 0 or len(patients) < 10:
        return patients["patient_id"].to_numpy(), np.array([], dtype=object)
    tr, va = train_test_split(patients["patient_id"].to_numpy(), test_size=fraction, random_state=seed,
                              stratify=patients["label"].to_numpy())
    return tr, va


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def timing_reference(bags: Bags):
    """What ``augment.timing`` needs of ``bags``: ``(arterial channel indices, arterial-excess channel index
    or None, each instance's arterial parenchyma level)``, or None where no channel is arterial (a
    portal-only model: nothing to scale). The level is the index's ``lvl_arterial`` (set by
    :func:`reference_shift`), else the patient's own ``ref_arterial``."""
    art = [i for i, c in enumerate(bags.channels) if c == "arterial"]
    if not art:
        if not bags.channels:
            raise ValueError("augment.timing needs the name of every input channel (Bags.channels), "
                             "to find the arterial phase")
        return None
    col = next((c for c in ("lvl_arterial", "ref_arterial") if c in bags.index), None)
    if col is None:
        raise ValueError("augment.timing needs the arterial parenchyma's level (the cropping stage's "
                         "ref_arterial column): rerun the crop25d stage, or set augment.timing: 0")
    level = bags.index[col].to_numpy(float)
    if np.isnan(level).any():  # an unmeasured parenchyma: about the training cohort's median level
        level = np.where(np.isnan(level), np.nanmedian(level), level)
    excess = bags.channels.index("excess") if "excess" in bags.channels else None
    return art, excess, level.astype(np.float32)


def _blur_each(xb, sd):
    """Each image of a (B, C, H, W) batch smoothed in-plane by a Gaussian of its own SD ``sd[i]`` (pixels;
    one per image, every channel alike; an SD below 0.05 pixel leaves the image as it is). Separable,
    reflected at the borders, with a radius of 4 SD of the batch's largest; each kernel sums to one, so a
    flat region keeps its value and only edges, texture and small nodules soften."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = xb.shape
    sd = torch.as_tensor(sd, dtype=xb.dtype).reshape(b).to(xb.device)
    top = float(sd.max()) if b else 0.0
    if top < 0.05:
        return xb
    r = max(1, int(math.ceil(4 * top)))
    t = torch.arange(-r, r + 1, dtype=xb.dtype, device=xb.device)
    k = torch.exp(-0.5 * (t.view(1, -1) / sd.clamp(min=0.05).view(-1, 1)) ** 2)
    k = torch.where(sd.view(-1, 1) < 0.05, (t == 0).to(xb.dtype).view(1, -1), k)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B·C, K): one kernel per image, every channel
    y = xb.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def _smooth_inplane(d, px: float):
    """Gaussian smoothing of a (N, [D,] H, W) tensor in the last two axes (``px`` pixels, radius 4 SD),
    as :class:`ArterialExcess` smooths its inputs."""
    import torch
    import torch.nn.functional as F

    r = max(1, int(4 * px + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=d.dtype, device=d.device) / px) ** 2)
    k = k / k.sum()
    shape = d.shape
    h = d.reshape(-1, 1, shape[-2], shape[-1])
    h = F.conv2d(F.pad(h, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    h = F.conv2d(F.pad(h, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return h.reshape(shape)


def _augment(xb, gen, prm, dims: int = 2, timing=None):
    """Random flips (and, for square 2D crops, transposition: together the 8 symmetries of the square),
    small rotations (2D), scanner blur (2D), additive image noise and intensity jitter on a batch tensor
    (same device).

    Flips and transpositions keep every pixel's value, so the intensity cue (a few hundredths of the
    window) survives; ``blur`` smooths each instance in-plane with a Gaussian of its own SD, drawn from
    [0, blur] pixels (:func:`_blur_each`: a softer scanner; every channel alike, so the arterial-excess
    channel is blurred as the phases it is computed from); ``noise`` adds Gaussian noise of a per-image SD drawn from [0, noise] (a noisier
    scanner); ``intensity`` (scale 1 ± x, shift ± x/2) is off by default because it is as large as the
    contrast a model has to find.

    ``timing`` (with ``prm.timing`` > 0): ``(arterial channels, excess channel or None, the batch's
    arterial parenchyma levels)`` (:func:`timing_reference`). Each instance's arterial channel becomes
    ``level + t (x − level)``, ``t`` drawn from [1 − timing, 1 + timing]: every arterial contrast to the
    liver scaled, the liver itself where it was; the arterial-excess channel moves with it by exactly what
    :class:`ArterialExcess` would give for the scaled arterial phase (its plain and portal inputs are
    unchanged). Applied first, before any other augmentation.
    """
    import torch
    import torch.nn.functional as F

    b = xb.shape[0]
    dev = xb.device
    tim = float(getattr(prm, "timing", 0.0))
    if tim > 0 and timing is not None:
        art, ex, level = timing
        t = (1 + (torch.rand(b, generator=gen) * 2 - 1) * tim).to(dev, xb.dtype)
        shape = (b,) + (1,) * dims
        lv = torch.as_tensor(np.asarray(level, np.float32)).to(dev, xb.dtype).view(shape)
        tv = t.view(shape)
        d = xb[:, art[0]] - lv  # the arterial contrast to the liver, before scaling
        for a in art:
            xb[:, a] = lv + tv * (xb[:, a] - lv)
        if ex is not None:
            xb[:, ex] = xb[:, ex] + EXCESS_SCALE * (tv - 1) * _smooth_inplane(d, EXCESS_SMOOTH_PX)
    if prm.flip:
        for ax in range(2, 2 + dims):
            m = torch.rand(b, generator=gen) < 0.5
            if m.any():
                xb[m.to(dev)] = xb[m.to(dev)].flip(ax)
        if dims == 2 and xb.shape[-1] == xb.shape[-2]:
            m = torch.rand(b, generator=gen) < 0.5
            if m.any():
                xb[m.to(dev)] = xb[m.to(dev)].transpose(2, 3)
    deg = float(prm.rotate_deg)
    if deg > 0 and dims == 2:
        ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(deg)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta.to(dev, xb.dtype), list(xb.shape), align_corners=False)
        xb = F.grid_sample(xb, grid, mode="bilinear", padding_mode="border", align_corners=False)
    blur = float(getattr(prm, "blur", 0.0))
    if blur > 0 and dims == 2:
        xb = _blur_each(xb, torch.rand(b, generator=gen) * blur)
    noise = float(prm.noise)
    if noise > 0:
        shape = (b,) + (1,) * (xb.dim() - 1)
        sd = torch.rand(shape, generator=gen) * noise
        xb = xb + (sd * torch.randn(tuple(xb.shape), generator=gen)).to(dev, xb.dtype)
    jit = float(prm.intensity)
    if jit > 0:
        shape = (b,) + (1,) * (xb.dim() - 1)
        scale = 1 + (torch.rand(shape, generator=gen) * 2 - 1) * jit
        shift = (torch.rand(shape, generator=gen) * 2 - 1) * jit / 2
        xb = xb * scale.to(dev) + shift.to(dev)
    return xb


def _normalise(xb, dims: int = 2):
    import torch

    if dims != 2 or xb.shape[1] != 3:
        return (xb - 0.5) / 0.25
    mean = torch.tensor(IMAGENET_MEAN, device=xb.device, dtype=xb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=xb.device, dtype=xb.dtype).view(1, 3, 1, 1)
    return (xb - mean) / std


def predict(model, x: np.ndarray, batch_size: int = 128, device: str = "cpu", dims: int = 2, amp: bool = False) -> np.ndarray:
    """Probabilities for the arrays ``x`` (N, C, ...) with the model in evaluation mode."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.asarray(x[i:i + batch_size], np.float32)).to(device)
            if dims == 2:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.startswith("cuda")):
                logits = model(_normalise(xb, dims)).float().squeeze(1)
            out.append(torch.sigmoid(logits).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _architecture_hash(model) -> str:
    """The network's parameter names and shapes and the source of the module that defines it: a checkpoint
    of another architecture is never resumed (its state dict would not load, or would mean something else)."""
    import inspect

    h = hashlib.sha1(repr([(k, tuple(v.shape)) for k, v in model.state_dict().items()]).encode())
    try:
        h.update(Path(inspect.getsourcefile(type(model))).read_bytes())
    except (TypeError, OSError):  # a class defined interactively: its parameters alone
        pass
    return h.hexdigest()


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Learning-rate multiplier per optimiser step: linear warm-up from 0.1 over ``warmup_steps``, then
    ``cosine`` decay to 0, ``step`` (÷10 at 1/3 and 2/3 of the steps) or constant (``none``)."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if kind == "step":
            return 0.1 ** int(min(t, 0.999) * 3)
        return 1.0
    return f


def pool_logits(logits, counts: Sequence[int], pooling: str = "lse"):
    """One logit per bag from its instances' logits (a torch vector, bags consecutive, ``counts`` long):
    ``lse`` = log-mean-exp (a smooth maximum that equals the common value when all agree), ``mean``."""
    import torch

    parts = torch.split(logits, list(counts))
    if pooling == "lse":
        return torch.stack([torch.logsumexp(p, 0) - math.log(len(p)) for p in parts])
    if pooling == "mean":
        return torch.stack([p.mean() for p in parts])
    raise ValueError(f"bag_pooling must be 'lse' or 'mean', not {pooling!r}")


def pool_probabilities(prob: np.ndarray, groups: np.ndarray, pooling: str = "lse") -> np.ndarray:
    """:func:`pool_logits` on instance probabilities, one value per group (sorted by group), as a probability."""
    import torch

    order = np.argsort(np.asarray(groups, dtype=str), kind="stable")
    g = np.asarray(groups, dtype=str)[order]
    counts = np.unique(g, return_counts=True)[1]
    pooled = pool_logits(torch.from_numpy(_logit(np.asarray(prob)[order])), counts, pooling)
    return torch.sigmoid(pooled).numpy()


def _state_copy(model) -> dict:
    """A detached copy of a model's parameters and buffers (on the model's device)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ema_update(ema_state: dict, model, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * current`` for every floating-point parameter and buffer; other
    buffers (batch-norm's batch counter) are copied."""
    import torch

    with torch.no_grad():
        for k, v in model.state_dict().items():
            e = ema_state[k]
            if e.is_floating_point():
                e.mul_(decay).add_(v.detach(), alpha=1.0 - decay)
            else:
                e.copy_(v)


def train_model(make_model: Callable, x: np.ndarray, y: np.ndarray, groups: np.ndarray, prm: TrainCfg, seed: int,
                device: str = "cpu", dims: int = 2, checkpoint: Optional[Path] = None, desc: str = "train",
                progress: bool = True, val_ids=None, weights: Optional[np.ndarray] = None, timing=None):
    """Train one model for a fixed budget of ``epochs`` (or, with ``val_ids``, stop early on them).

    ``x``: (N, C, ...) arrays; ``y``: instance labels; ``groups``: patient id per instance. The learning
    rate warms up linearly over ``warmup_epochs`` and then follows ``schedule``, stepped after every batch.
    With ``val_ids`` (patients drawn from the training patients) the weights of the epoch with the lowest
    validation loss are kept and training stops after ``patience`` epochs without improvement — the loss,
    not the AUC, because on a few dozen patients the AUC jumps by chance from epoch to epoch. With ``prm.ema``
    > 0 an exponential moving average of the weights is kept per optimiser step, and it is the averaged model
    that is validated, kept and returned.

    ``weights``: a loss weight per instance (see :func:`deconfounding_weights`); they replace the class
    weighting, which they include. ``timing``: with ``prm.augment.timing`` > 0, the arterial channels and
    every instance's parenchyma level (:func:`timing_reference`; without it the timing augmentation is off).

    ``prm.loss == "bag"``: each step takes ``bag_batch`` patients with all their instances; the instance
    logits of a patient are pooled (:func:`pool_logits`) and the loss is the patient's (class weighting by
    patients; a patient's weight is its first instance's). The validation loss is then the patients' too.

    Returns ``(model, log)`` where ``log`` has one row per epoch (train loss, validation loss and AUC when
    there is a validation split, lr, optimiser steps so far, seconds, images per second). A checkpoint is
    written after every epoch; an existing checkpoint with the same fingerprint is resumed.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    set_determinism(seed, prm.deterministic)
    model = make_model().to(device)
    if dims == 2:  # NHWC: about a fifth faster for small convolutions on a CPU, and the layout AMP prefers
        model = model.to(memory_format=torch.channels_last)
    amp = bool(prm.amp) and device.startswith("cuda")
    val_mask = np.isin(groups, list(val_ids)) if val_ids is not None and len(val_ids) else np.zeros(len(y), bool)
    tr_idx, va_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    y = np.asarray(y, np.float32)
    bag_mode = prm.loss == "bag"
    if bag_mode:  # the units of a step are patients: their rows, in a fixed order
        units = pd.unique(groups[tr_idx])
        where = pd.Series(tr_idx).groupby(groups[tr_idx]).indices
        unit_rows = [tr_idx[where[g]] for g in units]
        y_unit = np.array([y[r[0]] for r in unit_rows], np.float32)
        n_pos, n_neg = y_unit.sum(), len(y_unit) - y_unit.sum()
    else:
        n_pos, n_neg = y[tr_idx].sum(), len(tr_idx) - y[tr_idx].sum()
    pos_weight = torch.tensor([n_neg / max(n_pos, 1)], device=device) if prm.class_weight == "balanced" else None
    w_all = None
    if weights is not None:
        w_all = torch.from_numpy(np.asarray(weights, np.float32))
        pos_weight = None
    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = float(prm.lr), float(prm.weight_decay)
    if prm.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    epochs = int(prm.epochs)
    bs = int(prm.bag_batch) if bag_mode else int(prm.batch_size)
    n_units = len(unit_rows) if bag_mode else len(tr_idx)
    steps_per_epoch = sum(1 for i in range(0, n_units, bs) if n_units - i >= 2)
    total_steps = steps_per_epoch * epochs
    warmup = min(total_steps, int(round(float(prm.warmup_epochs) * steps_per_epoch)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(prm.schedule, total_steps, warmup))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gen = torch.Generator().manual_seed(seed)
    log, best, best_state, start, bad_epochs, steps = [], -np.inf, None, 0, 0, 0
    ema_decay = float(getattr(prm, "ema", 0.0) or 0.0)
    ema_state = _state_copy(model) if ema_decay > 0 else None
    data_hash = hashlib.sha1(np.ascontiguousarray(x).view(np.uint8)).hexdigest()
    code_hash = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()  # a changed training loop retrains
    arch_hash = _architecture_hash(model)  # so does a changed network (its parameters or its module's code)
    fp = _fingerprint(to_dict(prm), seed, len(tr_idx), len(va_idx), float(y.sum()), desc, data_hash, code_hash,
                      arch_hash,
                      sorted(map(str, set(groups[va_idx]))),
                      None if weights is None else hashlib.sha1(np.asarray(weights, np.float64).tobytes()).hexdigest())
    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=False)
        if ck.get("fingerprint") == fp and ck.get("finished"):  # the model this training returned
            model.load_state_dict(ck["model"])
            return model, pd.DataFrame(ck["log"])
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            log, best, bad_epochs, start = ck["log"], ck["best"], ck["bad_epochs"], ck["epoch"] + 1
            best_state, steps = ck["best_state"], ck["steps"]
            ema_state = ck.get("ema_state", ema_state)
            gen.set_state(ck["gen"])
            torch.set_rng_state(ck["torch_rng"])
    aug = prm.augment
    patience = int(prm.patience)
    bar = tqdm(range(start, epochs), desc=desc, disable=not progress, file=sys.stderr, ncols=100, mininterval=1.0)
    for epoch in bar:
        if len(va_idx) and patience and bad_epochs >= patience:
            break
        t0 = time.perf_counter()
        model.train()
        if bag_mode:
            perm = torch.randperm(n_units, generator=gen).numpy()
        else:
            perm = tr_idx[torch.randperm(len(tr_idx), generator=gen).numpy()]
        losses = []
        for i in range(0, len(perm), bs):
            if bag_mode:
                ub = perm[i:i + bs]
                b = np.concatenate([unit_rows[u] for u in ub])
                counts = [len(unit_rows[u]) for u in ub]
                target, first = y_unit[ub], np.array([unit_rows[u][0] for u in ub])
            else:
                b = np.sort(perm[i:i + bs])
                target, first = y[b], b
            if len(first) < 2:
                continue
            xb = torch.from_numpy(np.asarray(x[b], np.float32)).to(device)
            yb = torch.from_numpy(np.ascontiguousarray(target)).to(device)
            xb = _augment(xb, gen, aug, dims, None if timing is None else (timing[0], timing[1], timing[2][b]))
            if dims == 2:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                logits = model(_normalise(xb, dims)).float().squeeze(1)
                if bag_mode:
                    logits = pool_logits(logits, counts, prm.bag_pooling)
                wb = None if w_all is None else w_all[first].to(device)
                loss = F.binary_cross_entropy_with_logits(logits, yb, pos_weight=pos_weight, weight=wb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            steps += 1
            if ema_state is not None:
                _ema_update(ema_state, model, min(ema_decay, steps / (steps + 1.0)))
            losses.append(float(loss.detach()))
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "lr": opt.param_groups[0]["lr"], "steps": steps}
        live = None
        if ema_state is not None:  # validate and keep the averaged weights; train on from the live ones
            live = _state_copy(model)
            model.load_state_dict(ema_state)
        if len(va_idx):
            pv = predict(model, x[va_idx], device=device, dims=dims, amp=amp)
            yv = y[va_idx]
            if bag_mode:  # one loss per validation patient, in pool_probabilities' (sorted) order
                pv = pool_probabilities(pv, groups[va_idx], prm.bag_pooling)
                yv = pd.Series(yv).groupby(groups[va_idx], sort=True).first().to_numpy()
            eps = 1e-6
            row["val_loss"] = float(-np.mean(yv * np.log(pv + eps) + (1 - yv) * np.log(1 - pv + eps)))
            row["val_auc"] = auc(yv, pv) if np.isin(yv, (0.0, 1.0)).all() else float("nan")  # soft target
            score = -row["val_loss"]
        else:
            score = epoch  # fixed budget: keep the last epoch
        row["seconds"] = time.perf_counter() - t0
        row["images_per_s"] = len(tr_idx) / max(row["seconds"], 1e-9)
        log.append(row)
        if score > best:
            best, bad_epochs = score, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if live is not None:
            model.load_state_dict(live)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", steps=steps)
        if checkpoint is not None and epoch < epochs - 1:  # after the last epoch: the finished one below
            _save_checkpoint(checkpoint, desc, {
                "fingerprint": fp, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch, "steps": steps,
                "log": log, "best": best, "bad_epochs": bad_epochs, "best_state": best_state,
                "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "ema_state": ema_state})
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    if checkpoint is not None:  # a finished model keeps only what it returns: its weights and its log
        _save_checkpoint(checkpoint, desc, {"fingerprint": fp, "finished": True, "model": model.state_dict(),
                                            "log": log})
    return model, pd.DataFrame(log)


def _tensor_bytes(obj) -> int:
    """The bytes of all tensors in a (nested) checkpoint dict."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class CheckpointSpace(OSError):
    """Not enough free disk space for a training checkpoint."""


def _save_checkpoint(path: Path, desc: str, ck: dict) -> None:
    """Write ``ck`` to ``path`` through a temporary file, after checking that the disk can hold it: a full
    disk would otherwise end hours of training with a message about a zip archive's position."""
    import shutil

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    need = _tensor_bytes(ck) + (64 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise CheckpointSpace(
            f"not enough disk space for the checkpoint of {desc}: it needs about {need / 1e9:.1f} GB and "
            f"{free / 1e9:.1f} GB are free on {path.parent}. Free space there, or set cnn.resume: false "
            f"(no checkpoints: an interrupted training starts again; the ablation stage's own checkpoints "
            f"are kept or not by ablations.keep_checkpoints)")
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, path)


def checkpoint_path(cache_dir: Path, name: str, tag: str) -> Path:
    """Where :func:`crossfit_predict` keeps the checkpoint of model ``tag`` of the set ``name``: one file
    per model, named after it; a name like "litecnn [axial 2.5D: no sagittal/coronal view]" becomes
    neither folders nor characters some file systems refuse."""
    return Path(cache_dir) / f"{re.sub(r'[^0-9A-Za-z_.+-]+', '_', name)}-{tag}.pt"


def remove_checkpoints(cache_dir: Optional[Path], name: str) -> int:
    """Delete the checkpoints of every model of the set ``name`` (:func:`checkpoint_path`); returns how
    many."""
    if cache_dir is None or not Path(cache_dir).exists():
        return 0
    stem = checkpoint_path(cache_dir, name, "").name[:-len("-.pt")]
    mine = re.compile(re.escape(stem) + r"-(?:final|(?:rep\d+-)?fold\d+)\.pt")  # not another set's
    files = [p for p in Path(cache_dir).iterdir() if mine.fullmatch(p.name)]
    for p in files:
        p.unlink()
    return len(files)


#: offset between the seeds of two cross-fitting repeats (their fold splits and their models' seeds)
REPEAT_SEED = 104729


def model_bar(n_models: int, desc: str, show: bool = True):
    """A progress bar (stderr) over the ``n_models`` models a set trains, for stages that train many: the
    bar's postfix names the model last finished (``fold2``, ``rep3-fold1``)."""
    from tqdm import tqdm

    return tqdm(total=n_models, desc=desc, disable=not show, file=sys.stderr, ncols=100, mininterval=1.0,
                unit="model")


def crossfit_predict(bags: Bags, make_model: Callable, prm: TrainCfg, seed: int, folds: int = 5,
                     prediction: str = "crossfit", device: str = "cpu", dims: int = 2,
                     cache_dir: Optional[Path] = None, name: str = "model", progress: bool | str = True,
                     fold_of: Optional[dict] = None, confounders: Optional[pd.DataFrame] = None,
                     verbose: bool = True, size: Optional[pd.Series] = None,
                     target: Optional[pd.Series] = None):
    """Leakage-safe probabilities for every instance (or cube) of ``bags`` from one set of models.

    ``prediction="crossfit"``: ``folds`` models, each trained on all training patients but one fold.
    Every training patient is predicted by the model that did not see it (out of fold); every internal
    and external patient by the **mean of the same fold models** (``prob``), and by each of them
    (``prob_fold<k>``). One model set for all cohorts: a fold model's probabilities of a validation
    patient are on exactly the scale of its out-of-fold probabilities, so the multi-instance stage, whose
    bins, vocabulary and thresholds are fitted on the training patients' out-of-fold probabilities, builds
    a validation patient's features from each fold model in turn and averages what the fused model says
    (:func:`hcc25d.signatures.heldout_views`). The plain mean is narrower than a single model's spread
    where the fold models disagree, which is why it is not fed to fitted steps. ``prob_insample`` is, for a training patient, the mean of the fold
    models that *were* trained on it (what an in-sample report shows). ``fold_of`` (patient → fold index)
    fixes the folds, e.g. to those of another run; by default they are stratified by label from ``seed``.

    ``prm.repeats`` = R > 1 repeats the cross-fitting on R different fold splits (the first is ``fold_of``,
    the others are drawn from ``seed``): a training patient's probability is then the mean of the R models
    that did not see it, and ``prob_fold<k>`` the mean of the R fold-*k* models, so both remain the mean of
    R models of the same kind. One cross-fitting leaves each training patient's score to a single model
    trained on a third of the patients fewer, whose noise is that of its training subset (a second seed on
    the same subset barely changes it); averaging over different subsets is what narrows it. ``fold``
    (and hence the fusion's cross-validation) stays the first split's; ``meta["repeat_folds"]`` lists all,
    and ``meta["first_repeat"]`` holds the predictions of the first split alone (what ``repeats: 1`` gives,
    with the same models: the ablations compare their single cross-fittings with it).

    ``prm.fold_scale="align"`` (the default) puts every model's probabilities on the set's common scale
    (:func:`fold_scales` measured on each model's own held-out training fold, :func:`align_scale`) before
    anything is pooled or averaged, so that which model scored a patient does not move the patient's rank;
    ``meta["fold_scale"]`` holds the scales.

    ``prediction="insample"`` (the paper's way): one model trained on all training patients predicts
    everyone, its own training patients included.

    With ``val_fraction`` > 0 every model stops early on a split of its own training patients.
    ``confounders`` (one row per patient, e.g. its tumour size): each model's training instances are
    weighted by :func:`deconfounding_weights`, computed on that model's own training patients.
    Returns ``(predictions, logs, models, meta)``: ``models`` maps ``fold<k>`` (or ``final``) to the
    trained model; ``meta`` holds each training patient's fold and, per model, the patients it was trained
    on (fit + early-stopping validation) — the record the leakage test checks against the data each model
    actually received.

    With ``prm.size_adjust`` the probabilities are adjusted for the ROI's size (:func:`size_adjust`;
    ``size``: each patient's ROI extent in mm, required then) and ``meta["size_adjust"]`` holds the slope.

    ``target`` (patient → a value in [0, 1]): what every model learns in place of the outcome (a soft
    label in the loss; :func:`latent_label_reference`). Everything else stays the outcome's: the folds
    (stratified by it, so the same as without ``target``), the ``label`` column and the size adjustment.

    ``progress``: ``True``, a bar over each model's epochs; ``"models"``, one bar over the set's models
    (what a stage that trains many shows); ``False``, none. Bars go to stderr.
    """
    if prm.size_adjust and size is None:
        raise ValueError("size_adjust is on: pass each patient's ROI extent (crop25d.roi_extent_mm) as size")
    pats = bags.patients()
    train = pats[pats["cohort"] == "training"].reset_index(drop=True)
    y = bags.index["label"].to_numpy()
    groups = bags.index["patient_id"].to_numpy()
    if target is not None:
        t = pd.Series(target, dtype=float)
        t.index = t.index.astype(str)
        y = t.reindex(pd.Series(groups).astype(str)).to_numpy(float)
        y_train = y[bags.rows(train["patient_id"])]
        if not np.isfinite(y_train).all() or (y_train < 0).any() or (y_train > 1).any():
            raise ValueError("target: every training patient needs a value in [0, 1]")
        if confounders is not None and confounders.shape[1]:
            raise ValueError("target: the deconfounding weights are for the outcome; pass no confounders")
    pred = np.full(len(bags.index), np.nan)
    insample = np.full(len(bags.index), np.nan)
    source = np.array([""] * len(bags.index), dtype=object)
    logs, trained_on, models = [], {}, {}
    vf = float(prm.val_fraction)
    tref = timing_reference(bags) if float(prm.augment.timing) > 0 else None

    bar = {}

    def start_bar(n_models):
        bar["b"] = model_bar(n_models, name, progress == "models")

    def fit(train_ids, tag, s):
        rows = bags.rows(train_ids)
        tr_pats = train[train["patient_id"].isin(set(train_ids))]
        _, val_ids = _val_split(tr_pats, vf, s)
        trained_on[tag] = sorted(map(str, train_ids))
        ck = checkpoint_path(cache_dir, name, tag) if cache_dir is not None else None
        w = None
        if confounders is not None and confounders.shape[1]:
            w = deconfounding_weights(y[rows], confounders.reindex(groups[rows]))
        model, log = train_model(make_model, bags.x[rows], y[rows], groups[rows], prm, s, device=device, dims=dims,
                                 checkpoint=ck, desc=f"{name} {tag}", progress=progress is True, val_ids=val_ids,
                                 weights=w, timing=None if tref is None else (tref[0], tref[1], tref[2][rows]))
        if verbose:
            _log_steps(name, tag, log, len(rows))
        logs.append(log.assign(model=name, fit=tag))
        models[tag] = model
        bar["b"].set_postfix_str(tag, refresh=False)
        bar["b"].update(1)
        return model

    others = bags.rows(pats.loc[pats["cohort"] != "training", "patient_id"])
    if prediction == "crossfit":
        if fold_of is None:
            fold_of = {pid: f for f, held in enumerate(patient_folds(train, folds, seed)) for pid in held}
        fold_of = {str(k): int(v) for k, v in fold_of.items()}
        missing = sorted(set(train["patient_id"]) - set(fold_of))
        if missing:
            raise ValueError(f"fold_of has no fold for training patient(s) {missing[:5]}")
        k = max(fold_of.values()) + 1
        n_rep = int(prm.repeats)
        splits = [fold_of] + [{pid: f for f, held in enumerate(patient_folds(train, k, seed + REPEAT_SEED * r))
                               for pid in held} for r in range(1, n_rep)]
        fitted = []  # per model: (repeat, fold, held rows, seen rows, its probabilities of held/others/seen)
        start_bar(k * n_rep)
        for r, split in enumerate(splits):
            for f in range(k):
                held = np.array([p for p in train["patient_id"] if split[p] == f], dtype=object)
                tag = f"fold{f + 1}" if r == 0 else f"rep{r + 1}-fold{f + 1}"
                model = fit(np.setdiff1d(train["patient_id"], held), tag, seed + 101 * (f + 1) + REPEAT_SEED * r)
                h_rows = bags.rows(held)
                seen = bags.rows(np.setdiff1d(train["patient_id"], held))
                if r == 0:
                    source[h_rows] = f"fold{f + 1}"
                fitted.append((r, f, tag, h_rows, seen, *(predict(model, bags.x[i], device=device, dims=dims)
                                                         for i in (h_rows, others, seen))))
        scale = fold_scales([(t, ph) for _, _, t, _, _, ph, _, _ in fitted])

        def accumulate(reps):
            per_fold = np.zeros((k, len(bags.index)))
            oof_sum = np.zeros(len(bags.index))
            ins_sum, ins_n = np.zeros(len(bags.index)), np.zeros(len(bags.index))
            sub = scale[scale["repeat"].isin(reps)]  # the set whose mean scale the models are given
            for r, f, tag, h_rows, seen, ph, po, ps in fitted:
                if r not in reps:
                    continue
                a = (lambda p: align_scale(p, scale.loc[tag], sub)) if prm.fold_scale == "align" else (lambda p: p)
                oof_sum[h_rows] += a(ph)
                per_fold[f, others] += a(po)
                ins_sum[seen] += a(ps)
                ins_n[seen] += 1
            return oof_sum, per_fold, ins_sum, ins_n

        scale["repeat"] = [r for r, *_ in fitted]
        oof_sum, per_fold, ins_sum, ins_n = accumulate(set(range(n_rep)))
        if n_rep > 1:  # what a single cross-fitting gives (the ablations compare with it)
            first = accumulate({0})
        rows = bags.rows(train["patient_id"])
        assignment = {p: fold_of[p] for p in train["patient_id"]}

        source0 = source.copy()  # training rows: the fold of the first split

        def combine(oof_s, pf, i_sum, i_n, n):
            pr, ins, pf = np.full(len(bags.index), np.nan), np.full(len(bags.index), np.nan), pf / n
            pr[rows] = oof_s[rows] / n
            pf[:, rows] = np.nan
            pr[others] = pf[:, others].mean(axis=0)
            ins[rows] = i_sum[rows] / np.maximum(i_n[rows], 1)
            src = source0.copy()
            src[others] = f"mean of {k} fold models" + (f" × {n} repeats" if n > 1 else "")
            if n > 1:
                src[rows] = f"out of fold in {n} repeats"
            return pr, ins, src, pf

        pred, insample, source, per_fold = combine(oof_sum, per_fold, ins_sum, ins_n, n_rep)
    elif prediction == "insample":
        start_bar(1)
        final = fit(train["patient_id"].to_numpy(), "final", seed)
        pred[:] = predict(final, bags.x, device=device, dims=dims)
        source[:] = "final"
        rows = bags.rows(train["patient_id"])
        insample[rows] = pred[rows]
        assignment = {}
    else:
        raise ValueError(f"prediction must be 'crossfit' or 'insample', not {prediction!r}")
    bar["b"].close()

    def table(pr, ins, src, pf):
        out = bags.index.drop(columns=[c for c in bags.index if c.startswith("lvl_")])
        out["prob"] = pr
        out["prob_insample"] = ins  # in-sample, for comparison only
        out["source"] = src
        out["fold"] = out["patient_id"].map(assignment)
        if pf is not None:  # each fold model's own probabilities of the internal/external instances
            for f in range(k):
                out[f"prob_fold{f + 1}"] = pf[f]
        return size_adjust(out, size) if prm.size_adjust else (out, None)

    out, adj = table(pred, insample, source, per_fold if prediction == "crossfit" else None)
    meta = {"fold": assignment, "trained_on": trained_on}
    if prediction == "crossfit":
        meta["fold_scale"] = scale
    if adj is not None:
        meta["size_adjust"] = adj
        if verbose:
            print(f"{name}: size slope {adj['slope']:+.3f} logit per ln(ROI extent in mm), "
                  f"{adj['n_training']} training patients")
    if prediction == "crossfit" and n_rep > 1:
        meta["repeat_folds"] = [{p: sp[p] for p in train["patient_id"]} for sp in splits]
        meta["first_repeat"] = table(*combine(*first, 1))[0]
    return out, pd.concat(logs, ignore_index=True), models, meta


def fold_scales(held: list) -> pd.DataFrame:
    """Each cross-fitted model's logit scale on the training patients it did not see.

    ``held``: ``[(tag, probabilities of that model's held-out training instances), ...]``. Returns one row
    per model (index ``tag``): ``mu`` and ``sd`` of its logits there, and ``n`` instances. No label is
    used, and no validation patient: the folds are stratified by outcome, so every held-out fold has the
    same case mix and a difference between the models' ``mu``/``sd`` is a difference of scale, not of
    patients.
    """
    rows = []
    for tag, p in held:
        lg = _logit(p)
        rows.append({"tag": tag, "mu": float(np.mean(lg)), "sd": float(max(np.std(lg), 1e-6)), "n": int(len(lg))})
    return pd.DataFrame(rows).set_index("tag")


def align_scale(p, own: pd.Series, target: pd.DataFrame) -> np.ndarray:
    """Probabilities ``p`` of one model put on the common scale of a model set (``fold_scale: align``):
    its logits standardised by its own held-out ``mu``/``sd`` (a row of :func:`fold_scales`), then given
    the set's mean ``mu`` and mean ``sd`` (``target``: the set's rows). The order of one model's
    probabilities is unchanged; what changes is how two models' probabilities compare."""
    z = (_logit(p) - own["mu"]) / own["sd"]
    return 1.0 / (1.0 + np.exp(-(target["mu"].mean() + target["sd"].mean() * z)))


from .stats import logit as _logit  # noqa: E402 (one logit for the package)


def _prob_columns(preds: pd.DataFrame) -> list[str]:
    return [c for c in preds.columns if c in ("prob", "prob_insample") or c.startswith("prob_fold")]


def size_adjust(preds: pd.DataFrame, extent: pd.Series) -> tuple[pd.DataFrame, dict]:
    """Take the part that follows the tumour's size out of a model set's scores (``size_adjust``).

    ``preds``: :func:`crossfit_predict`'s output; ``extent``: each patient's ROI extent in mm
    (:func:`hcc25d.crop25d.roi_extent_mm`). A patient's score is the mean logit of its instances. On the
    *training* patients the out-of-fold scores are regressed on ``log(extent)`` and the outcome (so the
    part of the size relation that goes with the outcome is not removed); the size slope ``b`` alone gives
    each patient's shift ``b · (log extent − median over training)``, subtracted from the logit of every
    probability column of its instances, in every cohort. Nothing is fitted on validation patients.
    Returns ``(adjusted predictions with a size_shift column (logit units), {slope, centre, n})``;
    :func:`undo_size_adjust` restores the input.
    """
    out = preds.copy()
    pid = out["patient_id"].astype(str)
    pat = pd.DataFrame({"score": _logit(out["prob"]), "pid": pid, "cohort": out["cohort"].to_numpy(),
                        "label": out["label"].to_numpy()}).groupby("pid", sort=True).agg(
        score=("score", "mean"), cohort=("cohort", "first"), label=("label", "first"))
    ext = extent.copy()
    ext.index = ext.index.astype(str)
    missing = sorted(set(pat.index) - set(ext.index))
    if missing:
        raise ValueError(f"size_adjust: no ROI extent for {len(missing)} patient(s), e.g. {missing[:3]}")
    d = np.log(ext.reindex(pat.index).astype(float))
    tr = ((pat["cohort"] == "training") & np.isfinite(d) & np.isfinite(pat["score"])).to_numpy()
    if tr.sum() < 4 or pat.loc[tr, "label"].nunique() < 2:
        raise ValueError("size_adjust needs at least 4 training patients of both outcomes")
    from .signatures import SizeAdjust  # one size rule for the CNN's score and the radiomics features

    fit = SizeAdjust().fit(np.c_[pat.loc[tr, "score"], np.exp(d[tr])], pat.loc[tr, "label"].to_numpy())
    slope, centre = float(fit.slope_[0]), fit.centre_
    shift = pd.Series(slope * (d - centre), index=pat.index).fillna(0.0)
    sh = shift.reindex(pid).to_numpy()
    for c in _prob_columns(out):
        out[c] = 1 / (1 + np.exp(-(_logit(out[c]) - sh)))
    out["size_shift"] = sh
    return out, {"slope": slope, "centre_log_mm": centre, "n_training": int(tr.sum())}


def undo_size_adjust(preds: pd.DataFrame) -> pd.DataFrame:
    """The scores before :func:`size_adjust` (from its ``size_shift`` column; unchanged without it)."""
    if "size_shift" not in preds:
        return preds
    out = preds.copy()
    for c in _prob_columns(out):
        out[c] = 1 / (1 + np.exp(-(_logit(out[c]) + out["size_shift"].to_numpy())))
    out["size_shift"] = 0.0
    return out


def score_size_outcome(preds: pd.DataFrame, extent: pd.Series) -> pd.DataFrame:
    """How a model set's patient score follows the tumour's size and the outcome, cohort by cohort — a
    description for the reader, used by no prediction.

    The patient score is the mean instance logit *before* the size adjustment (:func:`undo_size_adjust`).
    In each cohort separately it is regressed (least squares) on ``ln(extent)`` and the outcome; the
    outcome coefficient is the score's separation of recurrence from no recurrence **at equal size**
    (logit units), the size slope what :func:`size_adjust` removes (there fitted on the training cohort
    alone). Also the AUC of the size alone, of the raw and of the adjusted score. One row per cohort with
    ``n``, ``AUC size``, ``AUC raw``, ``AUC adjusted``, ``size slope``, ``size slope SE``, ``outcome``,
    ``outcome SE``.
    """
    raw = undo_size_adjust(preds)
    pid = preds["patient_id"].astype(str).to_numpy()
    pat = pd.DataFrame({"pid": pid, "cohort": preds["cohort"].to_numpy(), "label": preds["label"].to_numpy(),
                        "raw": _logit(raw["prob"]), "adj": _logit(preds["prob"])})
    pat = pat.groupby("pid", sort=False).agg(cohort=("cohort", "first"), label=("label", "first"),
                                             raw=("raw", "mean"), adj=("adj", "mean"))
    ext = extent.copy()
    ext.index = ext.index.astype(str)
    pat["ld"] = np.log(ext.reindex(pat.index).astype(float))
    rows = []
    for cohort in in_cohort_order(pat["cohort"]):
        g = pat[(pat["cohort"] == cohort) & np.isfinite(pat["ld"]) & np.isfinite(pat["raw"])]
        row = {"cohort": cohort, "n": len(g)}
        if len(g) < 5 or g["label"].nunique() < 2:
            rows.append(row)
            continue
        X = np.c_[np.ones(len(g)), g["ld"], g["label"]]
        beta, *_ = np.linalg.lstsq(X, g["raw"].to_numpy(), rcond=None)
        resid = g["raw"].to_numpy() - X @ beta
        se = np.sqrt(np.diag(np.linalg.pinv(X.T @ X)) * (resid @ resid) / max(len(g) - 3, 1))
        row.update({"AUC size": auc(g["label"], g["ld"]), "AUC raw": auc(g["label"], g["raw"]),
                    "AUC adjusted": auc(g["label"], g["adj"]), "size slope": beta[1], "size slope SE": se[1],
                    "outcome": beta[2], "outcome SE": se[2]})
        rows.append(row)
    return pd.DataFrame(rows)


def deconfounding_weights(y, confounders: pd.DataFrame) -> np.ndarray:
    r"""A weight per instance so that every combination of outcome and confounder levels carries the same
    total weight: under these weights the confounders are independent of the outcome (and the classes
    balanced), so a model gains nothing from recognising them — e.g. a tumour's size, which the images
    show and whose association with recurrence the clinical signature models separately (and which,
    in the paper's Table 1, reverses between the training and the external cohort). Weights average 1.

    .. math:: w_i = \frac{1}{n_{c(i)}} \Big/ \overline{1/n_{c}},\quad c(i) = (y_i, z_i)
    """
    cells = pd.DataFrame(confounders).astype(str).agg("|".join, axis=1).to_numpy()
    cells = pd.Series(np.char.add(np.asarray(y).astype(int).astype(str), np.asarray(cells, str)))
    w = 1.0 / cells.map(cells.value_counts()).to_numpy(float)
    return w / w.mean()


def _log_steps(name: str, tag: str, log: pd.DataFrame, n: int) -> None:
    if len(log):
        epochs = int(log["epoch"].iloc[-1])
        print(f"{name} {tag}: {n} instances, {epochs} epoch{'s' * (epochs != 1)}, "
              f"{int(log['steps'].iloc[-1])} optimiser steps, {log['seconds'].sum():.0f} s", flush=True)


def ensemble(models: dict):
    """The mean of several models' probabilities as one module (for Grad-CAM and for scoring new
    patients with the cross-fitted fold models)."""
    import torch
    import torch.nn as nn

    class Ensemble(nn.Module):
        def __init__(self, members):
            super().__init__()
            self.members = nn.ModuleList(members)

        def forward(self, x):  # logit of the mean probability
            p = torch.stack([torch.sigmoid(m(x)) for m in self.members]).mean(0).clamp(1e-6, 1 - 1e-6)
            return torch.log(p / (1 - p))

    return Ensemble(list(models.values()))


def torch_device(prefer: str = "auto") -> str:
    import torch

    if prefer == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def gradcam(model, x: np.ndarray, categories: Sequence[int], device: str = "cpu") -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] from the ``pytorch-grad-cam`` library (not hand-written):
    the evidence for recurrence (category 1) or against it (category 0) in the last convolutional block.
    For an :func:`ensemble` the maps of its members are averaged."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    members = list(model.members) if hasattr(model, "members") else [model]
    xt = _normalise(torch.from_numpy(np.asarray(x, np.float32)).to(device))
    maps = []
    for m in members:
        m = m.to(device).eval()
        with GradCAM(model=m, target_layers=[target_layer(m)]) as cam:
            maps.append(cam(input_tensor=xt, targets=[BinaryClassifierOutputTarget(int(c)) for c in categories]))
    return np.mean(np.asarray(maps), axis=0)


def select_backbone(table: pd.DataFrame, rule: str) -> tuple[str, str]:
    """The backbone for the multi-instance stage and the sentence stating the rule.

    ``cv``: the highest out-of-fold (cross-fitted) training AUC — decided before any validation cohort is
    looked at. Otherwise ``rule`` names the backbone (``vgg19`` reproduces the paper's choice, which the
    paper made on the internal validation cohort).
    """
    names = list(dict.fromkeys(table["backbone"]))
    if rule == "cv":
        tr = table[table["cohort"] == "training"].set_index("backbone")["auc"]
        best = str(tr.idxmax())
        return best, (f"Rule fixed in advance: the backbone with the highest cross-fitted (out-of-fold) "
                      f"training AUC — {best} ({tr.max():.3f}). The internal and external cohorts play no part.")
    if rule not in names:
        raise ValueError(f"cnn.selection: {rule!r} is not one of the trained backbones {names} (or 'cv')")
    return rule, f"Backbone fixed by parameter: {rule} (cnn.selection)."


# --------------------------------------------------------------------------------------------------
# the stage's steps (so that the notebook cells stay a few lines each)
# --------------------------------------------------------------------------------------------------
def weights_info(C) -> dict:
    """Which weights every backbone of ``C.backbones`` would really start from (``build_model``'s info)."""
    return {name: build_model(name, C.weights, C.on_missing_weights, C.dropout, width=C.width)[1]
            for name in C.backbones}


def no_imagenet_warning(name: str, info: dict) -> str:
    """The book's warning box for a backbone that falls back to random initialisation (the note escaped:
    an error such as ``<urlopen error …>`` would otherwise be read as an HTML tag and vanish)."""
    from html import escape

    return (f'<div class="admonition warning"><p class="admonition-title">No ImageNet weights — this is NOT '
            f'transfer learning</p><p>{escape(name)}: {escape(info["note"])}.</p><p>The network is trained '
            f'from <b>random initialisation</b> (<code>cnn.on_missing_weights: random</code>). The paper fine-tuned '
            f'ImageNet-pretrained networks; results here are of a network trained from scratch and are '
            f'recorded as such in the provenance.</p></div>')


def model_factory(name: str, C, in_channels: int) -> Callable:
    """A function that builds a fresh ``name`` network with the settings of ``C`` (weights, their
    fallback, dropout, width) for ``in_channels`` input channels — what :func:`crossfit_predict` calls
    once per model."""
    return lambda: build_model(name, C.weights, C.on_missing_weights, C.dropout, width=C.width,
                               in_channels=in_channels)[0]


def train_backbones(bags: Bags, C, seed: int, device: str = "cpu", cache_dir: Optional[Path] = None,
                    confounders: Optional[pd.DataFrame] = None, model_dir: Optional[Path] = None,
                    size: Optional[pd.Series] = None, progress: bool = True):
    """Cross-fit every backbone of ``C.backbones`` (:func:`crossfit_predict`) on the same folds, with a
    progress bar per backbone over its models (``progress``).

    Returns ``(preds, logs, models, metas)``: instance predictions of all backbones (column
    ``backbone``), training logs, ``{backbone: {fit tag: model}}`` and each backbone's fold record. With
    ``model_dir`` every backbone's fold models are saved there as ``<backbone>.pt``, with their
    :func:`fold_scales` as ``<backbone>-fold-scale.csv``.
    """
    import torch

    all_preds, all_logs, models, metas = [], [], {}, {}
    for name in C.backbones:
        make = model_factory(name, C, bags.x.shape[1])
        preds, logs, fitted, meta = crossfit_predict(bags, make, C, seed, folds=C.folds, prediction=C.prediction,
                                                     device=device, cache_dir=cache_dir, name=name,
                                                     progress="models" if progress else False,
                                                     confounders=confounders, size=size)
        all_preds.append(preds.assign(backbone=name))
        all_logs.append(logs)
        models[name], metas[name] = fitted, meta
        if model_dir is not None:
            Path(model_dir).mkdir(parents=True, exist_ok=True)
            torch.save({tag: m.state_dict() for tag, m in fitted.items()}, Path(model_dir) / f"{name}.pt")
            if "fold_scale" in meta:  # what align_scale needs to put a saved model's scores on the set's scale
                meta["fold_scale"].to_csv(Path(model_dir) / f"{name}-fold-scale.csv")
    return pd.concat(all_preds, ignore_index=True), pd.concat(all_logs, ignore_index=True), models, metas


def latent_label_reference(bags: Bags, C, backbone: str, llr: pd.Series, seed: int, device: str = "cpu",
                           cache_dir: Optional[Path] = None, size: Optional[pd.Series] = None,
                           verbose: bool = False, progress: bool = True) -> pd.DataFrame:
    """The twin's *label reference*: ``backbone`` cross-fitted exactly as the method's model set (same
    input, settings, seeds, folds and repeats, :func:`crossfit_predict`) but taught each training patient's
    latent image score instead of its outcome — the soft label ``1 / (1 + exp(−llr))``, ``llr`` the image-only
    reference's log-likelihood ratio (``imaging_llr`` of the twin's ``oracle.csv``). No real study has this
    label: it is what the network would learn if every training patient's outcome were replaced by the
    noise-free image evidence behind it. Set beside the method's scores (both against the *outcome*, both
    size-adjusted by the same rule when ``C.size_adjust``), it separates what the outcome labels fail to
    teach (the method below it) from what the network does not read from the instances at this number of
    patients even when told (it below the twin's slot reference). Returns instance predictions with
    ``backbone`` = :data:`LABEL_REFERENCE`."""
    target = 1.0 / (1.0 + np.exp(-pd.Series(llr, dtype=float)))
    make = model_factory(backbone, C, bags.x.shape[1])
    preds, _, _, _ = crossfit_predict(bags, make, C, seed, folds=C.folds, prediction="crossfit", device=device,
                                      cache_dir=cache_dir, name=f"{backbone}-latent-label",
                                      progress="models" if progress else False,
                                      verbose=verbose, size=size, target=target)
    return preds.assign(backbone=LABEL_REFERENCE)


#: the name of :func:`latent_label_reference`'s predictions in tables and figures
LABEL_REFERENCE = "CNN taught the latent image score"


def gradcam_panels(preds: pd.DataFrame, bags: Bags, fitted: dict, threshold: float,
                   device: str = "cpu") -> list:
    """Figure 5's panels: for one validation patient with recurrence and one without (a correctly
    classified one at ``threshold`` when there is one, the most confident), the central axial instance
    and its Grad-CAM of the fold-model ensemble."""
    pat = (preds[preds["cohort"] != "training"].groupby("patient_id")
           .agg(prob=("prob", "mean"), label=("label", "first")).reset_index())
    scorer = ensemble(fitted)
    panels = []
    for lab in (1, 0):
        ok = pat[(pat["label"] == lab) & ((pat["prob"] >= threshold) == bool(lab))]
        cand = ok if len(ok) else pat[pat["label"] == lab]
        if not len(cand):
            continue
        r = cand.sort_values("prob", ascending=(lab == 0)).iloc[0]
        ix = bags.index
        i = ix.index[(ix["patient_id"] == r["patient_id"]) & (ix["view"] == "axial") & (ix["offset"] == 0)][0]
        x = bags.x[i:i + 1].astype(np.float32)
        cam = gradcam(scorer, x, [lab], device=device)[0]
        panels.append((f"{r['patient_id']}\n{'recurrence' if lab else 'no recurrence'}\np = {r['prob']:.2f}", x[0], cam))
    return panels
