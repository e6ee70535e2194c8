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
  enhances in the *arterial phase only*, placed 2–6 mm above the tumour's centre (so it is weak on the
  central slice); goes with MVI (:math:`x_1` = MVI);
* :math:`u_2` — **satellite nodules**: three small arterial-enhancing nodules just outside the tumour,
  3–5 mm above and below its centre, whose size grows with :math:`u_2`; goes with MVI;
* :math:`u_3` — **internal heterogeneity**: the amplitude of a smooth texture inside the tumour, in all
  phases.

The images then show :math:`u` (through noise and blur). The **oracle** probability is what one would
know from the clinical variables and the exact latent imaging variables:

.. math::

    \\operatorname{logit} p^\\ast = \\operatorname{logit} p_{\\text{clin}}(x) +
    \\sum_k \\left[\\delta_k (u_k - \\gamma_k x_k) - \\delta_k^2/2\\right]

where :math:`p_{\\text{clin}}` is a logistic regression of the outcome on tumour size, MVI,
differentiation, Ki67 and the cohort, fitted on the whole twin (the twin's clinical generator has no
closed-form likelihood, so this part is estimated). No model that sees only the images and clinical
data can beat :math:`p^\\ast` except by chance: its AUC is the ceiling of every AUC in the book.

Two hospitals
-------------
Centre 2 (external cohort) has its own scanner profile: coarser pixels and slices, more noise, more blur,
a small HU offset and a later arterial phase (less arterial tumour enhancement, more liver enhancement).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from .config import TwinCfg

__all__ = ["TwinImagingParams", "SIGNAL", "HU", "draw_latent", "make_patient", "write_patient",
           "oracle_probabilities", "PHASES"]

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


#: scanner profile and grid per centre (index 0 = centre 1, 1 = centre 2): the ``twin`` params section
TwinImagingParams = TwinCfg


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


def _tube_dist(X, Y, Z, p, d):
    """Distance of every voxel to the infinite line through p with unit direction d."""
    px, py, pz = X - p[0], Y - p[1], Z - p[2]
    t = px * d[0] + py * d[1] + pz * d[2]
    return np.sqrt(np.maximum(px * px + py * py + pz * pz - t * t, 0.0))


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def make_patient(row: pd.Series, seed: int, prm: TwinImagingParams) -> dict:
    """Build one patient's three phases (HU, float32 arrays z, y, x), mask, geometry and traits."""
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
    pae_amp = 80.0 * _sigmoid(1.5 * lat["u_pae"] - 0.5)
    sat_r = 1.0 + 4.5 * _sigmoid(1.5 * lat["u_satellites"] - 0.8)
    het_sd = 4.0 + 30.0 * _sigmoid(1.5 * lat["u_heterogeneity"] - 0.3)
    # PAE: a crescent of liver just outside the tumour on one side, 2-6 mm above the centre
    side = _unit(rng)
    side[2] = 0
    side /= np.linalg.norm(side)
    outer = (rho_t >= 1.0) & (rho_t < 1.0 + 11.0 / radii.min())
    proj = ((X - c[0]) * side[0] + (Y - c[1]) * side[1]) / (np.sqrt((X - c[0]) ** 2 + (Y - c[1]) ** 2) + 1e-3)
    zc = c[2] + rng.uniform(2.5, 4.0)
    pae_w = np.exp(-0.5 * ((Z - zc) / 2.0) ** 2) * np.clip(proj, 0, 1) ** 2 * outer * liver
    pae_w = ndimage.gaussian_filter(pae_w.astype(np.float32), sigma=(0.8 / sz * 2, 1.0 / sxy, 1.0 / sxy))
    # satellites: small nodules just outside the tumour, 3-5 mm above and below its centre
    sats = np.zeros_like(tumour)
    for k in range(3):
        dz = (1 if k % 2 == 0 else -1) * rng.uniform(3.0, 5.0)
        ang = rng.uniform(0, 2 * np.pi)
        rr = radii[:2].mean() * np.sqrt(max(0.0, 1 - (dz / radii[2]) ** 2)) + sat_r + rng.uniform(2, 5)
        cs = c + np.array([rr * np.cos(ang), rr * np.sin(ang), dz])
        sats |= ((X - cs[0]) ** 2 + (Y - cs[1]) ** 2 + (Z - cs[2]) ** 2) < sat_r ** 2
    sats &= ~tumour
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
        for m in (tumour, other):
            img[m] = hu("tumour")
        img[sats] = hu("tumour")
        img[capsule] = hu("capsule")
        img[necrosis] = hu("necrosis")
        viable = tumour & ~necrosis & ~capsule
        img[viable] += het_sd * texture[viable]
        sig = (max(prm.blur_mm[ci], 0.2 * sz) / sz, prm.blur_mm[ci] / sxy, prm.blur_mm[ci] / sxy)
        img = ndimage.gaussian_filter(img, sigma=sig)
        img += noise_rng.normal(0, prm.noise_hu[ci], img.shape).astype(np.float32)
        img += prm.hu_offset[ci]
        phases[ph] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    mask = (tumour | other).astype(np.uint8)
    origin = (-(nxy - 1) / 2 * sxy + rng.uniform(-50, 50), -(nxy - 1) / 2 * sxy + rng.uniform(-220, -150),
              -(nz - 1) / 2 * sz + rng.uniform(-600, -400))
    traits = {"patient_id": pid, "diameter_mm": diam, "n_extra_tumours": len(extra), "irregular_margin": irregular,
              "necrosis": necrotic, "vessel_contact": adjacent, "pae_amplitude_hu": pae_amp,
              "satellite_radius_mm": sat_r, "heterogeneity_sd_hu": het_sd, "centre_z_mm": float(c[2]), **lat}
    return {"phases": phases, "mask": mask, "spacing": (sxy, sxy, sz), "origin": origin, "traits": traits}


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


def oracle_probabilities(patients: pd.DataFrame, latent: pd.DataFrame, signal_scale: float = 1.0) -> pd.DataFrame:
    """The oracle (Bayes) recurrence probability of each patient under the latent-risk model."""
    import statsmodels.api as sm

    df = patients.merge(latent, on="patient_id")
    clin_vars = [v for v in ("tumor_size", "mvi", "differentiation", "ki67") if v in df]
    X = pd.get_dummies(df[clin_vars + ["cohort"]], columns=["cohort"], drop_first=True, dtype=float)
    fit = sm.Logit(df["label"].astype(float), sm.add_constant(X, has_constant="add")).fit(disp=0)
    clin_logit = np.asarray(sm.add_constant(X, has_constant="add") @ fit.params)
    llr = np.zeros(len(df))
    for name in ("pae", "satellites", "heterogeneity"):
        d = SIGNAL[name]["delta"] * signal_scale
        g = SIGNAL[name]["gamma"] * (df["mvi"].to_numpy() if name in ("pae", "satellites") and "mvi" in df else 0)
        llr += d * (df[f"u_{name}"].to_numpy() - g) - d * d / 2
    logit = clin_logit + llr
    return pd.DataFrame({"patient_id": df["patient_id"], "cohort": df["cohort"], "label": df["label"],
                         "clinical_logit": clin_logit, "imaging_llr": llr,
                         "oracle_prob": 1 / (1 + np.exp(-logit))})


def _twin_worker(args):
    row, seed, prm, out_dir = args
    vol = make_patient(row, seed, prm)
    paths = write_patient(vol, out_dir / "images" / str(row["patient_id"]))
    rec = {"patient_id": row["patient_id"]}
    for name, p in paths.items():
        rec["mask" if name == "mask" else f"image_{name}"] = str(p.relative_to(out_dir))
    return rec, vol["traits"]


def build_twin(patients: pd.DataFrame, seed: int, prm: TwinImagingParams, out_dir: Path,
               clinical_variables, n_jobs: int = 1, backend: str = "loky", progress: bool = True):
    """Generate every patient's phantom under ``out_dir/images/<patient>/`` and write
    ``out_dir/manifest.csv`` in the own-data manifest format (paths relative to it).

    Returns ``(manifest, traits)`` data frames.
    """
    from .io import write_csv
    from .parallel import map_patients

    out_dir = Path(out_dir)
    items = [(row, seed, prm, out_dir) for _, row in patients.iterrows()]
    res = map_patients(_twin_worker, items, n_jobs=n_jobs, backend=backend, desc="imaging twin",
                       progress=progress)
    files = pd.DataFrame([r for r, _ in res])
    traits = pd.DataFrame([t for _, t in res])
    cols = ["patient_id", "centre", "cohort", "label"] + [v for v in clinical_variables if v in patients]
    manifest = patients[cols].merge(files, on="patient_id")
    manifest = manifest[cols + ["image_plain", "image_arterial", "image_portal", "mask"]]
    write_csv(manifest, out_dir / "manifest.csv")
    return manifest, traits
