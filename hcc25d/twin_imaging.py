"""The imaging twin: three-phase CT phantoms (plain, arterial, portal) with tumour masks.

Anatomy
-------
Each patient's volume is a block of abdomen around the liver: soft tissue and fat, a liver of varying
(randomly deformed ellipsoidal) shape, portal/hepatic vessels as tubes, a major vessel, and the tumour(s).
Tumour count follows "Number of tumors", its diameter "Tumor size" (< 5 cm: 18–45 mm, ≥ 5 cm: 52–75 mm).
HCC's phase behaviour in HU: arterial hyper-enhancement, portal wash-out, an enhancing capsule, a
hypodense non-enhancing core when "Intratumoral necrosis" is yes, a lobulated margin when "Tumor margin"
is yes, contact with a major vessel when "Adjacency to major vessels" is yes. Scanner blur and noise are
applied last. Voxels are anisotropic (in-plane < 1 mm, slices 2–2.5 mm), so resampling matters.

The latent-risk model (the recurrence signal in the images)
-----------------------------------------------------------
Three latent imaging variables are drawn for each patient given the outcome *y* (which Table 1 fixes):

.. math::

    u_k \\mid y, x \\sim \\mathcal N(\\delta_k\\,y + \\gamma_k\\,x_k,\\ 1),\\qquad k = 1, 2, 3

* :math:`u_1` — **peritumoral arterial enhancement** (PAE): a crescent of liver next to the tumour that
  enhances in the *arterial phase only*, centred 4–6 mm above or below the tumour's maximal axial
  cross-section (the slice 2.5D cropping centres on) with a z-spread (SD) of 1 mm, so the central slice
  does not show it; goes with MVI (:math:`x_1` = MVI);
* :math:`u_2` — **satellite nodules**: three small nodules just outside the tumour, 3–5 mm above and
  below the maximal cross-section, whose size grows with :math:`u_2`; they enhance in the *arterial
  phase only* (liver-like before contrast and in the portal phase); go with MVI;
* :math:`u_3` — **internal heterogeneity**: the amplitude of a smooth texture inside the tumour, in all
  phases (visible on every slice, the central one included).

Each slice averages the thin traits over its thickness (partial volume), as a CT slice does.
``twin.signal_position: central`` (the negative control) puts the same PAE and satellites on the maximal
cross-section itself: the latent variables, their visible expression and the oracle are unchanged, only
their place along z moves, so a 2.5D model should then gain nothing over a 2D one.

The images then show :math:`u` (through noise and blur). The **oracle** probability is what one would
know from the clinical variables and the exact latent imaging variables:

.. math::

    \\operatorname{logit} p^\\ast = \\operatorname{logit} p_{\\text{clin}}(x) +
    \\sum_k \\left[\\delta_k (u_k - \\gamma_k x_k) - \\delta_k^2/2\\right]

where :math:`p_{\\text{clin}}` is a logistic regression of the outcome on tumour size, MVI,
differentiation, Ki67 and the cohort, fitted on the whole twin (the twin's clinical generator has no
closed-form likelihood, so this part is estimated). No model that sees only the images and clinical
data can beat :math:`p^\\ast` except by chance: its AUC is the ceiling of every AUC in the book.
For one 2.5D instance the image-only ceiling is :func:`slot_reference`: the sum over the traits that the
instance's slot shows (measured on the images by :func:`planted_contrast`).

Two hospitals
-------------
Centre 2 (external cohort) has its own scanner profile: coarser pixels and slices, more noise, more blur,
a small HU offset and a later arterial phase (less arterial tumour enhancement, more liver enhancement).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from scipy import ndimage

from .config import TwinCfg

__all__ = [
    "PHASES",
    "TRAIT_NAMES",
    "HU",
    "SIGNAL",
    "PAE_OFFSET_MM",
    "PAE_Z_SD_MM",
    "SATELLITE_OFFSET_MM",
    "PROBE_LATENT",
    "patient_rng",
    "draw_latent",
    "make_patient",
    "to_images",
    "TRAIT_REGIONS",
    "planted_contrast",
    "trait_visibility",
    "write_patient",
    "oracle_probabilities",
    "VISIBLE_CONTRAST",
    "SLOT_REFERENCE",
    "visible_traits",
    "slot_reference",
    "slot_reference_shares",
    "build_twin",
    "vessel_roi_hu",
    "VESSEL_ROI_INSET_MM",
]

PHASES = ("plain", "arterial", "portal")

#: HU per tissue and phase (plain, arterial, portal) at centre 1's timing.
HU = {
    "fat": (-100.0, -100.0, -98.0),
    "soft": (45.0, 55.0, 62.0),
    "liver": (55.0, 70.0, 110.0),
    "vein": (40.0, 100.0, 170.0),
    "major_vessel": (40.0, 140.0, 175.0),
    "tumour": (40.0, 118.0, 80.0),
    "capsule": (45.0, 75.0, 128.0),
    "necrosis": (20.0, 22.0, 24.0),
}

#: effect sizes of the latent-risk model: delta (shift with recurrence), gamma (shift with MVI).
SIGNAL = {"pae": {"delta": 0.9, "gamma": 0.4},
          "satellites": {"delta": 0.7, "gamma": 0.5},
          "heterogeneity": {"delta": 0.5, "gamma": 0.0}}


#: PAE: distance (mm) of its centre from the tumour's maximal axial cross-section, above or below, and
#: its SD along z (before the slice's own thickness).
PAE_OFFSET_MM = (4.0, 6.0)
PAE_Z_SD_MM = 1.0
#: satellites: distance (mm) of their centres from the maximal cross-section (alternately above and below).
SATELLITE_OFFSET_MM = (3.0, 5.0)

#: scanner profile and grid per centre (index 0 = centre 1, 1 = centre 2): the ``twin`` params section


def patient_rng(seed: int, patient_id: str, stream: int = 0) -> np.random.Generator:
    """Each patient's draws depend only on the seed and the patient (not on who else is generated)."""
    return np.random.default_rng([seed, zlib.crc32(patient_id.encode()) & 0x7FFFFFFF, stream])


def draw_latent(row: pd.Series, seed: int, signal_scale: float = 1.0) -> dict:
    rng = patient_rng(seed, str(row["patient_id"]), 1)
    y = int(row["label"])
    mvi = int(row.get("mvi", 0))
    out = {}
    for k, name in enumerate(("pae", "satellites", "heterogeneity")):
        d = SIGNAL[name]["delta"] * signal_scale
        g = SIGNAL[name]["gamma"] * (mvi if name in ("pae", "satellites") else 0)
        out[f"u_{name}"] = float(rng.normal(d * y + g, 1.0))
    return out


def _softplus(x):
    return float(np.log1p(np.exp(x)))


def _sigmoid(x):
    return float(1.0 / (1.0 + np.exp(-x)))


def _perturb(ux, uy, uz, rng, n_terms, amp, freq):
    """Smooth random function of the direction (ux, uy, uz): a sum of cosines of projections."""
    f = np.zeros_like(ux)
    for _ in range(n_terms):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        w = rng.uniform(*freq)
        f += rng.uniform(0.5, 1.0) * np.cos(w * (ux * v[0] + uy * v[1] + uz * v[2]) + rng.uniform(0, 2 * np.pi))
    return amp * f / max(1, n_terms) ** 0.5


def _ellipsoid_rho(X, Y, Z, c, radii, rng, n_terms=0, amp=0.0, freq=(1.0, 2.0)):
    dx, dy, dz = (X - c[0]) / radii[0], (Y - c[1]) / radii[1], (Z - c[2]) / radii[2]
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
    if n_terms:
        r = r / (1.0 + _perturb(dx / r, dy / r, dz / r, rng, n_terms, amp, freq))
    return r


def _slab_gaussian(z: np.ndarray, zc: float, sd: float, thickness: float) -> np.ndarray:
    """A Gaussian profile along z (centre ``zc``, SD ``sd``) averaged over each slice's thickness
    (a slice of a CT integrates over its slab, so a thin structure is seen partially by the nearest
    slices rather than sampled at one point)."""
    from scipy.special import erf

    a = (z - thickness / 2 - zc) / (sd * np.sqrt(2))
    b = (z + thickness / 2 - zc) / (sd * np.sqrt(2))
    return (sd * np.sqrt(np.pi / 2) / thickness * (erf(b) - erf(a))).astype(np.float32)


def _slab_ball(X, Y, z: np.ndarray, centre, radius: float, thickness: float) -> np.ndarray:
    """Fraction of each voxel's slab (its in-plane point, the slice's thickness along z) inside a ball."""
    rho2 = (X[0] - centre[0]) ** 2 + (Y[0] - centre[1]) ** 2  # in-plane, (y, x)
    h = np.sqrt(np.maximum(radius ** 2 - rho2, 0.0))  # half-height of the ball above (y, x)
    lo = np.maximum(z[:, None, None] - thickness / 2, centre[2] - h[None])
    hi = np.minimum(z[:, None, None] + thickness / 2, centre[2] + h[None])
    return (np.clip(hi - lo, 0.0, None) / thickness).astype(np.float32)


def _tube_dist(X, Y, Z, p, d):
    """Distance of every voxel to the infinite line through p with unit direction d."""
    px, py, pz = X - p[0], Y - p[1], Z - p[2]
    t = px * d[0] + py * d[1] + pz * d[2]
    return np.sqrt(np.maximum(px * px + py * py + pz * pz - t * t, 0.0))


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


#: the two values of a latent trait whose images :func:`planted_contrast` and the probe of
#: :func:`make_patient` set against each other
PROBE_LATENT = (-1.5, 1.5)


def _trait_params(lat: dict) -> dict:
    """What the latent traits set in the image: the PAE's amplitude (HU), the satellites' radius (mm)
    and the tumour's heterogeneity (SD of its texture, HU)."""
    return {"pae_amp": 80.0 * _sigmoid(1.5 * lat["u_pae"] - 0.5),
            "sat_r": 1.0 + 4.5 * _sigmoid(1.5 * lat["u_satellites"] - 0.8),
            "het_sd": 4.0 + 30.0 * _sigmoid(1.5 * lat["u_heterogeneity"] - 0.3)}


def make_patient(row: pd.Series, seed: int, prm: TwinCfg, latent: Optional[dict] = None,
                 probe: bool = False) -> dict:
    """Build one patient's three phases (HU, float32 arrays z, y, x), mask, geometry and traits.

    ``latent`` overrides the patient's latent imaging variables (``u_pae``, ``u_satellites``,
    ``u_heterogeneity``); everything else — anatomy, noise — stays the same, so two calls that differ
    only in ``latent`` isolate the visible expression of the traits (see :func:`planted_contrast`).

    With ``probe`` the result also holds ``trait_delta``: for each peritumoral trait (``u_pae``,
    ``u_satellites``) the arterial phase's difference (HU, before noise and rounding) between the trait's
    latent at :data:`PROBE_LATENT` high and low, at this patient's own anatomy — what
    :func:`planted_contrast` measures with two whole generations, here from one (see
    :func:`trait_visibility`). The phases are the same with and without it.
    """
    pid = str(row["patient_id"])
    rng = patient_rng(seed, pid, 2)
    ci = 0 if int(row["centre"]) == 1 else 1
    sxy, sz = float(prm.spacing_xy[ci]), float(prm.slice_mm[ci])
    nxy = int(round(prm.matrix * prm.spacing_xy[0] / sxy))
    nz = int(round(prm.extent_z_mm / sz))
    # physical coordinates (mm) relative to the block's centre, arrays indexed (z, y, x)
    z = (np.arange(nz) - (nz - 1) / 2) * sz
    y = (np.arange(nxy) - (nxy - 1) / 2) * sxy
    x = (np.arange(nxy) - (nxy - 1) / 2) * sxy
    Z, Y, X = np.meshgrid(z.astype(np.float32), y.astype(np.float32), x.astype(np.float32), indexing="ij")
    half = min(nxy * sxy, nz * sz) / 2

    lat = draw_latent(row, seed, prm.signal_scale)
    if latent is not None:
        lat.update({k: float(v) for k, v in latent.items()})
    # ---- tumour geometry
    big = int(row.get("tumor_size", 0)) == 1
    diam = rng.uniform(52, 75) if big else rng.uniform(18, 45)
    radii = np.array([diam / 2, diam / 2 * rng.uniform(0.85, 1.0), diam / 2 * rng.uniform(0.75, 0.95)])
    c = np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(-6, 6)])
    irregular = int(row.get("tumor_margin", 0)) == 1
    rho_t = _ellipsoid_rho(X, Y, Z, c, radii, rng, n_terms=6 if irregular else 3,
                           amp=0.16 if irregular else 0.04, freq=(3.0, 6.0) if irregular else (1.0, 2.0))
    tumour = rho_t < 1.0
    capsule = tumour & (rho_t > 1.0 - 1.8 / radii.min())
    necrotic = int(row.get("necrosis", 0)) == 1
    necrosis = np.zeros_like(tumour)
    if necrotic:
        nr = radii * rng.uniform(0.3, 0.5)
        necrosis = _ellipsoid_rho(X, Y, Z, c + rng.normal(0, 2, 3), nr, rng, 3, 0.15, (2.0, 4.0)) < 1.0
        necrosis &= tumour & ~capsule
    # additional tumours ("Multiple")
    extra = []
    if int(row.get("tumor_number", 0)) == 1:
        for _ in range(int(rng.integers(1, 3))):
            for _try in range(50):
                r2 = rng.uniform(6, 12)
                c2 = np.array([rng.uniform(-half + 15, half - 15), rng.uniform(-half + 15, half - 15),
                               rng.uniform(-half + 12, half - 12)])
                if np.linalg.norm(c2 - c) > radii.max() + r2 + 6:
                    extra.append((c2, r2))
                    break
    other = np.zeros_like(tumour)
    for c2, r2 in extra:
        other |= _ellipsoid_rho(X, Y, Z, c2, np.array([r2, r2, r2 * 0.9]), rng, 3, 0.05) < 1.0
    # ---- liver and background
    lr = np.array([75, 65, 60]) * rng.uniform(0.95, 1.2, 3)
    lc = c + rng.normal(0, 10, 3)
    liver = _ellipsoid_rho(X, Y, Z, lc, lr, rng, 5, 0.12, (1.0, 3.0)) < 1.0
    liver |= ndimage.binary_dilation(tumour | other, iterations=3)
    fat_field = ndimage.gaussian_filter(rng.standard_normal(X.shape).astype(np.float32),
                                        sigma=(6 / sz, 10 / sxy, 10 / sxy))
    fat = (fat_field > np.quantile(fat_field, 0.7)) & ~liver
    # vessels: veins through the liver, and one major vessel
    veins = np.zeros_like(tumour)
    for _ in range(int(rng.integers(3, 6))):
        for _try in range(30):
            p = lc + rng.normal(0, 20, 3)
            d = _unit(rng)
            rv = rng.uniform(2.0, 4.0)
            if abs(np.cross(c - p, d)).sum() > 0 and np.linalg.norm(np.cross(c - p, d)) > radii.max() + rv + 6:
                veins |= (_tube_dist(X, Y, Z, p, d) < rv) & liver
                break
    adjacent = int(row.get("vessel_adjacency", 0)) == 1
    d_major = _unit(rng)
    d_major[2] = abs(d_major[2]) + 1.0
    d_major /= np.linalg.norm(d_major)
    rv_major = rng.uniform(5.0, 7.0)
    perp = np.cross(d_major, _unit(rng))
    perp /= np.linalg.norm(perp)
    gap = -1.0 if adjacent else rng.uniform(10, 20)
    p_major = c + perp * (radii.max() * 0.95 + rv_major + gap)
    major = _tube_dist(X, Y, Z, p_major, d_major) < rv_major
    # ---- signal traits
    pae_amp, sat_r, het_sd = (_trait_params(lat)[k] for k in ("pae_amp", "sat_r", "het_sd"))
    # Where the traits sit along z is measured from the tumour's maximal axial cross-section (the slice
    # the 2.5D cropping centres on), found on this grid as crop25d does on the resampled one.
    from .crop25d import max_area_index

    z_max = float(z[max_area_index(tumour.sum(axis=(1, 2)))])
    central = prm.signal_position == "central"
    # PAE: a crescent of liver just outside the tumour on one side, centred 4-6 mm above or below the
    # maximal cross-section with a z-spread (SD) of PAE_Z_SD_MM; each slice averages over its thickness
    side = _unit(rng)
    side[2] = 0
    side /= np.linalg.norm(side)
    outer = (rho_t >= 1.0) & (rho_t < 1.0 + 11.0 / radii.min())
    proj = ((X - c[0]) * side[0] + (Y - c[1]) * side[1]) / (np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2) + 1e-3)
    pae_sign = 1.0 if rng.uniform() < 0.5 else -1.0
    pae_dz = pae_sign * rng.uniform(*PAE_OFFSET_MM)
    zc = z_max + (0.0 if central else pae_dz)
    pae_z = _slab_gaussian(z, zc, PAE_Z_SD_MM, sz)[:, None, None]
    pae_w = pae_z * (np.clip(proj, 0, 1) ** 2 * outer * liver)
    pae_w = ndimage.gaussian_filter(pae_w.astype(np.float32), sigma=(0.0, 1.0 / sxy, 1.0 / sxy))
    # satellites: small nodules just outside the tumour, 3-5 mm above and below the maximal
    # cross-section, enhancing in the arterial phase only; partial volume over the slice thickness
    sat_draws = []
    for k in range(3):
        dz = (1 if k % 2 == 0 else -1) * rng.uniform(*SATELLITE_OFFSET_MM)
        ang = rng.uniform(0, 2 * np.pi)
        sat_draws.append((0.0 if central else dz, ang, rng.uniform(2, 5)))
    sat_dz = [d for d, _, _ in sat_draws]

    def satellites(r):  # the three nodules of radius r at the drawn places
        w = np.zeros(X.shape, np.float32)
        for dz_used, ang, gap_mm in sat_draws:
            zrel = (z_max + dz_used) - c[2]
            rr = radii[:2].mean() * np.sqrt(max(0.0, 1 - (zrel / radii[2]) ** 2)) + r + gap_mm
            cs = np.array([c[0] + rr * np.cos(ang), c[1] + rr * np.sin(ang), z_max + dz_used])
            w = np.maximum(w, _slab_ball(X, Y, z, cs, r, sz))
        w[tumour] = 0.0
        return w

    sat_w = satellites(sat_r)
    texture = ndimage.gaussian_filter(rng.standard_normal(X.shape).astype(np.float32),
                                      sigma=(1.5 / sz, 1.5 / sxy, 1.5 / sxy))
    texture /= texture[tumour].std() + 1e-6 if tumour.any() else 1.0
    # ---- compose phases
    timing = float(prm.arterial_timing[ci])
    noise_rng = patient_rng(seed, pid, 3)
    phases = {}
    for j, ph in enumerate(PHASES):
        def hu(t):
            v = HU[t][j]
            if ph == "arterial":
                v = HU[t][0] + timing * (HU[t][1] - HU[t][0]) + (8.0 * (1 - timing) / 0.15 if t == "liver" else 0)
            return v
        img = np.full(X.shape, hu("soft"), np.float32)
        img[fat] = hu("fat")
        img[liver] = hu("liver")
        img[veins] = hu("vein")
        if ph == "arterial":
            img += (pae_amp * timing) * pae_w
        img[major] = hu("major_vessel")
        if ph == "arterial":  # satellites: tumour-like arterial hyper-enhancement, invisible otherwise
            if probe:
                lo, hi = (_trait_params({**lat, "u_satellites": v})["sat_r"] for v in PROBE_LATENT)
                delta = {"u_satellites": (satellites(hi) - satellites(lo)) * (hu("tumour") - img)}
                amp_lo, amp_hi = (_trait_params({**lat, "u_pae": v})["pae_amp"] for v in PROBE_LATENT)
                delta["u_pae"] = ((amp_hi - amp_lo) * timing) * pae_w * ~major
            img += sat_w * (hu("tumour") - img)
        for m in (tumour, other):
            img[m] = hu("tumour")
        img[capsule] = hu("capsule")
        img[necrosis] = hu("necrosis")
        viable = tumour & ~necrosis & ~capsule
        img[viable] += het_sd * texture[viable]
        sig = (max(prm.blur_mm[ci], 0.2 * sz) / sz, prm.blur_mm[ci] / sxy, prm.blur_mm[ci] / sxy)
        if ph == "arterial" and probe:  # the lesions overwrite the traits; blurred like the phase
            trait_delta = {k: ndimage.gaussian_filter(np.where(tumour | other, 0.0, d).astype(np.float32), sigma=sig)
                           for k, d in delta.items()}
        img = ndimage.gaussian_filter(img, sigma=sig)
        img += noise_rng.normal(0, prm.noise_hu[ci], img.shape).astype(np.float32)
        img += prm.hu_offset[ci]
        phases[ph] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    mask = (tumour | other).astype(np.uint8)
    origin = (-(nxy - 1) / 2 * sxy + rng.uniform(-50, 50), -(nxy - 1) / 2 * sxy + rng.uniform(-220, -150),
              -(nz - 1) / 2 * sz + rng.uniform(-600, -400))
    traits = {"patient_id": pid, "diameter_mm": diam, "n_extra_tumours": len(extra), "irregular_margin": irregular,
              "necrosis": necrotic, "vessel_contact": adjacent, "pae_amplitude_hu": pae_amp,
              "satellite_radius_mm": sat_r, "heterogeneity_sd_hu": het_sd, "centre_z_mm": float(c[2]),
              "max_area_z_mm": z_max, "pae_offset_mm": float(zc - z_max),
              "satellite_offsets_mm": "|".join(f"{d:+.1f}" for d in sat_dz),
              "signal_position": prm.signal_position, **lat}
    out = {"phases": phases, "mask": mask, "spacing": (sxy, sxy, sz), "origin": origin, "traits": traits,
           "vessel_hu": vessel_roi_hu(phases, major & ~(tumour | other), (sz, sxy, sxy))}
    if probe:
        out["trait_delta"] = trait_delta
    return out


#: the vessel ROI keeps the voxels at least this far (mm) inside the major vessel's wall, as a reader's
#: circular ROI keeps off the wall (partial volume with the blur) — the twin's vessel radius is 5-7 mm.
VESSEL_ROI_INSET_MM = 3.0


def vessel_roi_hu(phases: dict, vessel: np.ndarray, spacing_zyx, inset_mm: float = VESSEL_ROI_INSET_MM) -> dict:
    """Each phase's median HU in a region of interest inside the major vessel, measured on the generated
    images (blur, noise and the centre's HU offset included) as a reader measures the aorta on each
    phase: the voxels of ``vessel`` at least ``inset_mm`` from its wall. These are the manifest's optional
    ``vessel_hu_<phase>`` columns (:data:`hcc25d.manifest.VESSEL_COLUMNS`) that ``cnn.intensity_reference:
    vessel`` reads. NaN where no voxel qualifies (a vessel that leaves the volume, a thin one)."""
    if not vessel.any():
        return {ph: float("nan") for ph in phases}
    zz, yy, xx = (np.flatnonzero(vessel.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zz[0], zz[-1] + 1), slice(yy[0], yy[-1] + 1), slice(xx[0], xx[-1] + 1))
    inner = np.zeros_like(vessel)
    inner[box] = ndimage.distance_transform_edt(np.pad(vessel[box], 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1] \
        >= inset_mm
    if not inner.any():
        return {ph: float("nan") for ph in phases}
    return {ph: float(np.median(a[inner])) for ph, a in phases.items()}


def to_images(vol: dict):
    """A generated patient as SimpleITK images: ``({phase: image (HU, float32)}, mask)``, the same
    shape as :func:`hcc25d.manifest.load_patient` returns for files."""
    import SimpleITK as sitk

    def img(arr):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(tuple(float(s) for s in vol["spacing"]))
        im.SetOrigin(tuple(float(o) for o in vol["origin"]))
        return im

    return ({ph: sitk.Cast(img(a), sitk.sitkFloat32) for ph, a in vol["phases"].items()},
            img(vol["mask"].astype(np.uint8)))


#: the traits as (latent variable, region of the crop where it shows)
TRAIT_REGIONS = {"u_pae": "peritumoral", "u_satellites": "peritumoral", "u_heterogeneity": "tumour"}


def _mask_instances(v: np.ndarray, m: np.ndarray, crop_prm) -> np.ndarray:
    """The tumour mask cropped exactly like the instances of the windowed volume ``v`` (as a second
    channel): booleans (instances, S, S), true inside the mask."""
    from .crop25d import crop_arrays

    mx, _, _ = crop_arrays(np.concatenate([v[:1] * 0, m[None].astype(np.float32)]), m, crop_prm,
                           crop_prm.spacing_mm)[0]
    return mx[:, 1] > 0.5


def planted_contrast(row: pd.Series, seed: int, prm: TwinCfg, crop_prm, trait: str,
                     low: float = PROBE_LATENT[0], high: float = PROBE_LATENT[1]) -> pd.DataFrame:
    """The planted contrast of one trait, measured on the 2.5D instances rather than taken from the
    generator's parameters.

    The patient is generated twice, with the trait's latent variable at ``low`` and at ``high`` (the other
    traits and all anatomy and noise unchanged), both are cropped exactly as the cropping stage does, and
    for every instance slot and phase the difference between the two crops is measured in window units
    (1 = the window width, 250 HU by default): its peak (largest absolute value) outside the tumour mask
    for the peritumoral traits (PAE, satellites), its root-mean-square inside the mask for heterogeneity.
    Anatomy and noise are identical in the two crops, so the difference is the trait alone.
    """
    from .crop25d import VIEWS, crop_arrays, resample_and_window

    base = {k: 0.0 for k in TRAIT_REGIONS}
    out = []
    crops = []
    for value in (low, high):
        vol = make_patient(row, seed, prm, latent={**base, trait: value})
        imgs, mask = to_images(vol)
        v, m, names, _ = resample_and_window(imgs, mask, crop_prm)
        x, idx, _ = crop_arrays(v, m, crop_prm, crop_prm.spacing_mm)[0]
        crops.append((x, _mask_instances(v, m, crop_prm), idx, names))
    (x0, in0, idx, names), (x1, in1, _, _) = crops
    region = TRAIT_REGIONS[trait]
    for i, r in enumerate(idx):
        sel = (in0[i] | in1[i]) if region == "tumour" else ~(in0[i] | in1[i])
        for c, ph in enumerate(names):
            d = (x1[i, c] - x0[i, c])[sel]
            if not len(d):
                val = 0.0
            elif region == "tumour":
                val = float(np.sqrt(np.mean(d ** 2)))
            else:
                val = float(np.max(np.abs(d)))
            out.append({"trait": trait, "slot": f"{r['view']}{int(r['offset']):+d}", "view": r["view"],
                        "offset": int(r["offset"]), "phase": ph, "region": region,
                        "contrast": val})
    df = pd.DataFrame(out)
    df["view"] = pd.Categorical(df["view"], VIEWS, ordered=True)
    return df


def trait_visibility(vol: dict, crop_prm) -> pd.DataFrame:
    """Per 2.5D slot, how much of each peritumoral trait *this* patient's instance shows: ``vol`` from
    :func:`make_patient` with ``probe``; its ``trait_delta`` volumes (the arterial phase with the trait
    high minus low) are cropped exactly as the cropping stage crops the phases, and the peak absolute
    difference outside the tumour mask is the trait's planted contrast on that slot, in window units —
    :func:`planted_contrast`'s measure, for every patient at the cost of three crops. The peritumoral
    enhancement lies on one side of the tumour and the satellites at a few angles, so which slots show
    them differs from patient to patient (heterogeneity, inside the tumour, shows on every slot).
    Returns one row per trait and slot: ``trait``, ``slot``, ``view``, ``offset``, ``contrast``."""
    from .crop25d import crop_arrays, resample_and_window

    prm = crop_prm.model_copy(update={"channels": ("arterial",)})
    base = np.full(vol["mask"].shape, prm.window_level, np.float32)

    def crop(arr):
        imgs, mask = to_images({**vol, "phases": {"arterial": arr}})
        v, m, _, _ = resample_and_window(imgs, mask, prm)
        return crop_arrays(v, m, prm, prm.spacing_mm)[0], v, m

    (x0, idx, _), v, m = crop(base)
    outside = ~_mask_instances(v, m, prm)
    rows = []
    for trait, delta in vol["trait_delta"].items():
        (x1, _, _), _, _ = crop(base + delta)
        d = np.abs(x1[:, 0] - x0[:, 0])
        for i, r in enumerate(idx):
            rows.append({"trait": trait, "slot": f"{r['view']}{int(r['offset']):+d}", "view": r["view"],
                         "offset": int(r["offset"]), "contrast": float(d[i][outside[i]].max(initial=0.0))})
    return pd.DataFrame(rows)


def write_patient(vol: dict, out_dir: Path) -> dict:
    """Write the phases and mask as compressed NIfTI (real spacing/origin/direction); return the paths."""
    import SimpleITK as sitk

    from .io import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, arr in list(vol["phases"].items()) + [("mask", vol["mask"])]:
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(tuple(float(s) for s in vol["spacing"]))
        im.SetOrigin(tuple(float(o) for o in vol["origin"]))
        im.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
        p = out_dir / f"{name}.nii.gz"
        with atomic_path(p) as tmp:
            tmp_nii = tmp.with_name(tmp.name.replace(".tmp.gz", "") + ".nii.gz")
            sitk.WriteImage(im, str(tmp_nii), useCompression=True)
            tmp_nii.replace(tmp)
        paths[name] = p
    return paths


def _trait_llr(name: str, u: np.ndarray, mvi: np.ndarray, signal_scale: float = 1.0) -> np.ndarray:
    """One trait's log-likelihood ratio (recurrence against none) under the latent-risk model:
    ``δ (u − γ x) − δ²/2``, with ``x`` = MVI for the traits that go with it."""
    d = SIGNAL[name]["delta"] * signal_scale
    g = SIGNAL[name]["gamma"] * (np.asarray(mvi, float) if name in ("pae", "satellites") else 0.0)
    return d * (np.asarray(u, float) - g) - d * d / 2


def oracle_probabilities(patients: pd.DataFrame, latent: pd.DataFrame, signal_scale: float = 1.0) -> pd.DataFrame:
    """The oracle (Bayes) recurrence probability of each patient under the latent-risk model."""
    import statsmodels.api as sm

    df = patients.merge(latent, on="patient_id")
    clin_vars = [v for v in ("tumor_size", "mvi", "differentiation", "ki67") if v in df]
    X = pd.get_dummies(df[clin_vars + ["cohort"]], columns=["cohort"], drop_first=True, dtype=float)
    fit = sm.Logit(df["label"].astype(float), sm.add_constant(X, has_constant="add")).fit(disp=0)
    clin_logit = np.asarray(sm.add_constant(X, has_constant="add") @ fit.params)
    mvi = df["mvi"].to_numpy(float) if "mvi" in df else np.zeros(len(df))
    llr = sum(_trait_llr(name, df[f"u_{name}"].to_numpy(float), mvi, signal_scale)
              for name in ("pae", "satellites", "heterogeneity"))
    logit = clin_logit + llr
    return pd.DataFrame({"patient_id": df["patient_id"], "cohort": df["cohort"], "label": df["label"],
                         "clinical_logit": clin_logit, "imaging_llr": llr,
                         "oracle_prob": 1 / (1 + np.exp(-logit))})


#: a trait counts as visible on a slot when its planted contrast there (the mean over the probed patients
#: of :func:`planted_contrast`, in its strongest phase) reaches this many window units: well above the
#: traces that blur leaves on slots the trait misses, well below its contrast where it sits
VISIBLE_CONTRAST = 0.03

#: the name of :func:`slot_reference`'s scores in the CNN chapter's tables and figure
SLOT_REFERENCE = "reference (traits the slot shows)"


def visible_traits(contrast: pd.DataFrame, threshold: float = VISIBLE_CONTRAST) -> pd.DataFrame:
    """Which latent traits each 2.5D slot shows, from the images: ``contrast`` is the data chapter's
    :func:`planted_contrast` table (columns ``trait``, ``slot``, ``phase``, ``contrast``, one row per
    probed patient, trait, slot and phase). Returns slots × traits: the contrast in the trait's strongest
    phase (mean over the probed patients) and, as booleans, whether it reaches ``threshold``."""
    mean = contrast.groupby(["slot", "trait", "phase"], sort=False)["contrast"].mean()
    peak = mean.groupby(level=["slot", "trait"], sort=False).max().unstack("trait")
    return peak.ge(threshold).rename(columns=lambda t: f"{t} visible").join(peak)


_TRAIT_WORDS = {"pae": "peritumoral enhancement", "satellites": "satellites", "heterogeneity": "heterogeneity"}
#: the traits' names in the twin's tables (``pae`` in :data:`SIGNAL`, ``u_pae`` for a latent trait, …) as a
#: reader's words, for the tables of the book
TRAIT_NAMES = {**_TRAIT_WORDS, **{f"u_{k}": v for k, v in _TRAIT_WORDS.items()}}


def slot_reference(instances: pd.DataFrame, traits: pd.DataFrame, patients: pd.DataFrame,
                   contrast: pd.DataFrame, signal_scale: float = 1.0,
                   threshold: float = VISIBLE_CONTRAST, visibility: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """The twin's instance-level reference: each instance scored with the part of the oracle that its slot
    can show — the log-likelihood ratio (as in :func:`oracle_probabilities`) of the latent traits visible
    on it, read exactly. A model that sees one slice stays below it except by chance or through what else
    goes with the outcome (the tumour's size, for instance). The image-only reference is the same sum over
    all three traits, so it is this reference's patient-level counterpart.

    Which traits an instance shows is measured on the images (planted contrast at least ``threshold``).
    With ``visibility`` (every patient's :func:`trait_visibility`: ``patient_id``, ``trait``, ``slot``,
    ``contrast``) it is decided per patient for the traits that table holds — the peritumoral enhancement
    lies on one side of the tumour and the satellites at a few angles, so the same slot shows them for
    some patients and not others. Other traits (and all of them without ``visibility``) are decided per
    slot by :func:`visible_traits` on ``contrast``, the mean over the probed patients: a slot is then
    credited with a trait that only some of its images hold, and the reference is generous.

    ``instances``: one row per instance with ``patient_id``, ``cohort``, ``label``, ``view``, ``offset``
    (e.g. a CNN's instance predictions); ``traits``: per patient the latent ``u_<trait>`` columns (the data
    chapter's ``tab-twin-traits.csv``); ``patients``: per patient ``mvi``; ``contrast``: the planted
    contrast table. Returns the instance rows with ``llr`` (the visible log-likelihood ratio), ``prob`` (its
    logistic) and ``visible`` (the traits counted, in words, joined by `` + ``).
    """
    vis = visible_traits(contrast, threshold)
    out = instances[["patient_id", "cohort", "label", "view", "offset"]].copy()
    pid = out["patient_id"].astype(str)
    slot = out["view"].astype(str) + out["offset"].map(lambda o: f"{int(o):+d}")
    unknown = sorted(set(slot) - set(vis.index))
    if unknown:
        raise ValueError(f"slot_reference: no planted contrast for slot(s) {unknown}")
    tr = traits.copy()
    tr.index = tr.index.astype(str)
    missing = sorted(set(pid) - set(tr.index))
    if missing:
        raise ValueError(f"slot_reference: no latent traits for {len(missing)} patient(s), e.g. {missing[:3]}")
    per_patient = {}
    if visibility is not None:
        v = visibility.assign(patient_id=visibility["patient_id"].astype(str))
        keys = pd.MultiIndex.from_arrays([pid, slot])
        for trait, g in v.groupby("trait", sort=False):
            seen = g.set_index(["patient_id", "slot"])["contrast"].ge(threshold)
            lacking = keys[~keys.isin(seen.index)]
            if len(lacking):
                raise ValueError(f"slot_reference: no {trait} visibility for {len(lacking)} instance(s), e.g. "
                                 f"{list(lacking[:3])}")
            per_patient[trait] = seen.reindex(keys).to_numpy(bool)
    mvi = patients["mvi"].copy() if "mvi" in patients else pd.Series(0, index=patients.index)
    mvi.index = mvi.index.astype(str)
    llr = np.zeros(len(out))
    names = []
    x = mvi.reindex(pid).fillna(0).to_numpy(float)
    for name in ("pae", "satellites", "heterogeneity"):
        part = _trait_llr(name, tr[f"u_{name}"].reindex(pid).to_numpy(float), x, signal_scale)
        seen = per_patient.get(f"u_{name}")
        if seen is None:
            seen = slot.map(vis[f"u_{name} visible"]).to_numpy(bool)
        llr += np.where(seen, part, 0.0)
        names.append(np.where(seen, _TRAIT_WORDS[name], ""))
    out["llr"] = llr
    out["prob"] = 1 / (1 + np.exp(-llr))
    out["visible"] = [" + ".join(n for n in row if n) or "none" for row in zip(*names)]
    return out


def slot_reference_shares(reference: pd.DataFrame) -> pd.DataFrame:
    """Per trait (rows) and instance slot (columns ``axial+0``, ``axial+1``, …, ``coronal+0``, in the order of
    :func:`hcc25d.mil.bag_matrix`), the share of :func:`slot_reference`'s instances on which that trait was
    counted (its ``visible`` column)."""
    from .mil import bag_matrix  # the package's one slot naming and order

    words = reference["visible"].astype(str).str.split(" + ", regex=False)
    return pd.DataFrame({w: bag_matrix(reference.assign(shown=words.map(lambda ws, w=w: w in ws).astype(float)),
                                       prob="shown").mean() for w in _TRAIT_WORDS.values()}).T


def _twin_worker(args):
    row, seed, prm, out_dir, crop_prm = args
    vol = make_patient(row, seed, prm, probe=crop_prm is not None)
    paths = write_patient(vol, out_dir / "images" / str(row["patient_id"]))
    rec = {"patient_id": row["patient_id"]}
    for name, p in paths.items():
        rec["mask" if name == "mask" else f"image_{name}"] = str(p.relative_to(out_dir))
    rec.update({f"vessel_hu_{ph}": round(v, 1) for ph, v in vol["vessel_hu"].items()})
    vis = None if crop_prm is None else trait_visibility(vol, crop_prm).assign(patient_id=str(row["patient_id"]))
    return rec, vol["traits"], vis


def build_twin(patients: pd.DataFrame, seed: int, prm: TwinCfg, out_dir: Path,
               clinical_variables, n_jobs: int = 1, backend: str = "loky", progress: bool = True,
               crop=None):
    """Generate every patient's phantom under ``out_dir/images/<patient>/`` and write
    ``out_dir/manifest.csv`` in the own-data manifest format (paths relative to it).

    Returns ``(manifest, traits, visibility)`` data frames; ``visibility`` (with ``crop``, the cropping
    stage's settings; else ``None``) is every patient's :func:`trait_visibility`, with ``patient_id``.
    """
    from .io import write_csv
    from .parallel import map_patients

    out_dir = Path(out_dir)
    items = [(row, seed, prm, out_dir, crop) for _, row in patients.iterrows()]
    res = map_patients(_twin_worker, items, n_jobs=n_jobs, backend=backend, desc="imaging twin",
                       progress=progress)
    files = pd.DataFrame([r for r, _, _ in res])
    traits = pd.DataFrame([t for _, t, _ in res])
    visibility = None if crop is None else pd.concat([v for _, _, v in res], ignore_index=True)
    cols = ["patient_id", "centre", "cohort", "label"] + [v for v in clinical_variables if v in patients]
    manifest = patients[cols].merge(files, on="patient_id")
    vessel = [f"vessel_hu_{ph}" for ph in PHASES if f"vessel_hu_{ph}" in manifest]
    manifest = manifest[cols + ["image_plain", "image_arterial", "image_portal", "mask"] + vessel]
    write_csv(manifest, out_dir / "manifest.csv")
    return manifest, traits, visibility
