"""A synthetic Step-CoT release: chest-radiograph-like images whose lesions are drawn from each record's
seven-step answers.

Every record first gets a diagnosis (about 45% Normal), then findings for steps 1-6 consistent with it; the image
is rendered from those findings (density, distribution, pattern, zone, margin, secondary signs) and the diagnosis
is re-derived from them by fixed rules (`diagnosis_from_findings`), so the answers are in the image and the last
step depends on the earlier ones. Lesions are large and high-contrast so that a frozen ImageNet CNN with linear
heads can learn them (`difficulty="easy"`, the default). `difficulty="hard"` makes a set where the recipe matters:
subtle low-contrast lesions (a third of the contrast), stronger overlapping anatomy (ribs, a heart that hides more of
what lies behind it, coarser lung texture), more quantum noise, and 4 % label noise (a record's chain is replaced
by the chain of another diagnosis while its image still shows the first). The output has the release layout
(data.json, images/, images_2/, train/val/test.xlsx),
so it exercises exactly the code paths of the real data. It is SYNTHETIC: not for any clinical or research claim.

    stepcot data demo --output-dir demo_release --n 1200 --seed 0 --image-size 224 [--difficulty hard]
"""

from __future__ import annotations

import json
import multiprocessing
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_script.splits import SPLITS, stratified_group_split
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    NA_OPTION,
)

DEMO_ORIGIN = "Step-CoT synthetic demo"
DEMO_PATIENT_PREFIX = "demo"
# Realistic imbalance (Normal the majority) but enough of each finding to learn from 1,200 records.
DIAGNOSIS_PRIOR = {
    "Normal": 0.45, "Pneumonia": 0.09, "Effusion": 0.08, "Cardiomegaly": 0.08, "Infiltration": 0.07,
    "Atelectasis": 0.07, "Nodule": 0.06, "Mass": 0.05, "Pneumothorax": 0.05,
}
SECOND_STUDY_SHARE = 0.1  # some patients have two studies (stored in images_2/), to exercise patient grouping
SPLIT_FILE_NAMES = {"train": "train.xlsx", "validation": "val.xlsx", "test": "test.xlsx"}
ZONES = ("Upper lung zone", "Middle lung zone", "Lower lung zone")
# Rendering knobs per difficulty. "easy" is the default demo (the README main job trains on it).
DIFFICULTIES = {
    "easy": dict(lesion_contrast=1.0, heart_occlusion=0.7, rib_contrast=0.06, texture=0.03, noise=0.012,
                 label_noise=0.0),
    "hard": dict(lesion_contrast=0.33, heart_occlusion=0.9, rib_contrast=0.14, texture=0.07, noise=0.035,
                 label_noise=0.04),
}
ZONE_DEPTH = {"Upper lung zone": 0.24, "Middle lung zone": 0.5, "Lower lung zone": 0.74}  # fraction of lung height


def _check_schema():
    """The generator names options by text; fail loudly if the schema no longer has them."""
    needed = [
        ["No abnormality", "Increased opacity", "Decreased opacity", "Mixed"],
        ["Focal", "Multifocal", "Diffuse", NA_OPTION],
        ["Consolidation", "Interstitial", "Nodular", "Cavity", "Atelectatic", NA_OPTION],
        [*ZONES, "Multiple zones", "Pleura/Chest wall", "Heart/Mediastinum", NA_OPTION],
        ["Well-circumscribed", "Ill-defined", "Irregular/Spiculated", "Linear/Band-like", NA_OPTION],
        ["None", "Pleural effusion", "Pneumothorax", "Volume loss", "Mediastinal shift", "Cardiac enlargement",
         NA_OPTION],
        list(DIAGNOSIS_PRIOR),
    ]
    for step, (names, options) in enumerate(zip(needed, DEFAULT_STEP_OPTIONS)):
        missing = set(names) - set(options)
        if missing:
            raise RuntimeError(f"the demo generator needs options {sorted(missing)} in step {step + 1} of the schema")


_check_schema()


# ---------------------------------------------------------------------------------------------------------------
# Findings: diagnosis -> consistent answers of steps 1-6 -> (rules) -> diagnosis
# ---------------------------------------------------------------------------------------------------------------


def diagnosis_from_findings(answers: list[str]) -> str:
    """The diagnosis implied by the answers of steps 1-6 (the demo's ground-truth reasoning rules)."""
    detection, _, pattern, _, morphology, secondary = answers[:6]
    if secondary == "Cardiac enlargement":
        return "Cardiomegaly"
    if detection == "No abnormality":
        return "Normal"
    if secondary == "Pneumothorax":
        return "Pneumothorax"
    if secondary == "Pleural effusion":
        return "Effusion"
    if pattern == "Nodular":
        return "Nodule" if morphology == "Well-circumscribed" else "Mass"
    if pattern == "Atelectatic":
        return "Atelectasis"
    if pattern == "Interstitial":
        return "Infiltration"
    if pattern in ("Consolidation", "Cavity"):
        return "Pneumonia"
    raise ValueError(f"findings {answers[:6]} imply no diagnosis")


def _choice(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def sample_findings(diagnosis: str, rng: np.random.Generator) -> list[str]:
    """Answers of steps 1-6 consistent with `diagnosis` (varied where the diagnosis leaves room)."""
    zone = _choice(rng, ZONES)
    if diagnosis == "Normal":
        return ["No abnormality", NA_OPTION, NA_OPTION, NA_OPTION, NA_OPTION, NA_OPTION]
    if diagnosis == "Cardiomegaly":
        return ["No abnormality", NA_OPTION, NA_OPTION, "Heart/Mediastinum", NA_OPTION, "Cardiac enlargement"]
    if diagnosis == "Nodule":
        distribution = _choice(rng, ["Focal", "Multifocal"], [0.7, 0.3])
        location = zone if distribution == "Focal" else "Multiple zones"
        return ["Increased opacity", distribution, "Nodular", location, "Well-circumscribed", "None"]
    if diagnosis == "Mass":
        return ["Increased opacity", "Focal", "Nodular", zone, "Irregular/Spiculated", "None"]
    if diagnosis == "Pneumonia":
        if rng.random() < 0.25:  # cavitating pneumonia: dense patch with an air-filled hole
            return ["Mixed", "Focal", "Cavity", _choice(rng, ZONES[:2]), "Irregular/Spiculated", "None"]
        distribution = _choice(rng, ["Focal", "Multifocal"], [0.6, 0.4])
        location = zone if distribution == "Focal" else "Multiple zones"
        return ["Increased opacity", distribution, "Consolidation", location, "Ill-defined", "None"]
    if diagnosis == "Infiltration":
        distribution = _choice(rng, ["Multifocal", "Diffuse"])
        location = (
            "Multiple zones" if distribution == "Diffuse" else _choice(rng, ["Multiple zones", "Lower lung zone"])
        )
        morphology = _choice(rng, ["Ill-defined", "Linear/Band-like"], [0.7, 0.3])
        return ["Increased opacity", distribution, "Interstitial", location, morphology, "None"]
    if diagnosis == "Atelectasis":
        secondary = _choice(rng, ["Volume loss", "Mediastinal shift"], [0.6, 0.4])
        return ["Increased opacity", "Focal", "Atelectatic", zone, "Linear/Band-like", secondary]
    if diagnosis == "Effusion":
        distribution = _choice(rng, ["Focal", "Multifocal"], [0.75, 0.25])  # unilateral / bilateral
        return ["Increased opacity", distribution, NA_OPTION, "Pleura/Chest wall", NA_OPTION, "Pleural effusion"]
    if diagnosis == "Pneumothorax":
        return ["Decreased opacity", "Focal", NA_OPTION, "Pleura/Chest wall", "Well-circumscribed", "Pneumothorax"]
    raise ValueError(f"unknown diagnosis {diagnosis!r}")


def lesion_sites(answers: list[str], rng: np.random.Generator) -> list[tuple[int, str]]:
    """Where to draw: (side, zone) pairs from distribution (step 2) and location (step 4); side 0 = image left."""
    distribution, location = answers[1], answers[3]
    side = int(rng.integers(2))
    if location in ZONES:
        return [(side, location)] if distribution == "Focal" else [(0, location), (1, location)]
    if location == "Multiple zones":
        if distribution == "Diffuse":
            return [(s, z) for s in (0, 1) for z in ZONES]
        count = int(rng.integers(2, 4))
        zones = [ZONES[i] for i in rng.choice(3, size=count, replace=False)]
        return [(int(rng.integers(2)), z) for z in zones]
    if location == "Pleura/Chest wall":
        return [(side,)] if distribution == "Focal" else [(0,), (1,)]
    return []


# ---------------------------------------------------------------------------------------------------------------
# Rendering (density space: 0 = air / black, 1 = bone / white)
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _grid(size: int):
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return coords[None, :], coords[:, None]  # x (1, S), y (S, 1): broadcast instead of full meshgrids


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid upsampled bilinearly."""
    small = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(small.resize((size, size), Image.BILINEAR))


def _sigmoid(values):
    return 1.0 / (1.0 + np.exp(-np.clip(values, -30, 30)))


def _ellipse_field(x, y, cx, cy, rx, ry):
    """(x-cx)^2/rx^2 + (y-cy)^2/ry^2: below 1 inside the ellipse."""
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _site_center(lung: dict, zone: str, rng) -> tuple[float, float]:
    top, bottom = lung["cy"] - lung["ry"], lung["base"]
    cy = top + ZONE_DEPTH[zone] * (bottom - top) + rng.uniform(-0.03, 0.03)
    cx = lung["cx"] + rng.uniform(-0.3, 0.3) * lung["rx"]
    return cx, cy


def render_image(answers: list[str], sites: list[tuple], size: int, rng: np.random.Generator,
                 difficulty: str = "easy") -> np.ndarray:
    """An 8-bit (size, size) chest-radiograph-like image showing the findings of `answers` at `sites`."""
    knobs = DIFFICULTIES[difficulty]
    x, y = _grid(size)
    pixel = 1.0 / size
    pattern, secondary = answers[2], answers[5]
    cx = 0.5 + rng.normal(0, 0.015)
    half_width = rng.uniform(0.36, 0.41)
    base = rng.uniform(0.74, 0.8)  # diaphragm level
    shift = 0.0  # mediastinal shift towards the collapsed side
    lungs = []
    for side in (0, 1):
        direction = -1 if side == 0 else 1
        lung = dict(cx=cx + direction * half_width * 0.47, cy=rng.uniform(0.42, 0.46), rx=half_width * 0.42,
                    ry=rng.uniform(0.31, 0.35), base=base + (0.02 if side == 1 else 0.0))
        lungs.append(lung)
    collapsed_side = sites[0][0] if sites and pattern == "Atelectatic" else None
    if secondary == "Volume loss":
        lungs[collapsed_side]["base"] -= rng.uniform(0.08, 0.11)  # raised hemidiaphragm
    if secondary == "Mediastinal shift":
        shift = (-1 if collapsed_side == 0 else 1) * rng.uniform(0.06, 0.08)

    body = _sigmoid((1 - _ellipse_field(x, y, cx, 0.55, half_width + 0.07, 0.6)) * 12)
    density = 0.06 + 0.5 * body
    # Ribs: curved bands over the thorax.
    ribs = np.sin(2 * np.pi * (y + 0.9 * (x - cx) ** 2) * rng.uniform(10, 12) + rng.uniform(0, 6.3))
    density += knobs["rib_contrast"] * body * np.clip(ribs - 0.3, 0, None)

    lung_masks, markings = [], []
    texture = _smooth_noise(rng, size, 24)
    for lung in lungs:
        field = _ellipse_field(x, y, lung["cx"], lung["cy"], lung["rx"], lung["ry"])
        # Diaphragm dome: the lung ends above a curve that is highest mid-lung.
        dome = lung["base"] - 0.05 * (1 - ((x - lung["cx"]) / lung["rx"]) ** 2)
        mask = _sigmoid((1 - field) * 14) * _sigmoid((dome - y) / (2.5 * pixel))
        hilum_distance = np.sqrt((x - (lung["cx"] + (cx - lung["cx"]) * 0.55)) ** 2 + (y - 0.5) ** 2)
        markings.append(mask * np.exp(-hilum_distance / 0.16) * (0.10 + 0.04 * texture))
        lung_masks.append(mask)
    lung_mask = np.maximum(*lung_masks)
    lung_density = 0.16 + knobs["texture"] * texture

    # Pneumothorax: air crescent without markings along the apex / lateral wall, with the visceral pleural line.
    air = np.zeros_like(lung_mask)
    pleural_line = np.zeros_like(lung_mask)
    if secondary == "Pneumothorax":
        for (side,) in sites:
            lung = lungs[side]
            direction = -1 if side == 0 else 1
            scale = rng.uniform(0.62, 0.72)
            inner = _ellipse_field(x, y, lung["cx"] - direction * lung["rx"] * (1 - scale) * 0.8,
                                   lung["cy"] + lung["ry"] * (1 - scale) * 0.9, lung["rx"] * scale, lung["ry"] * scale)
            outside_inner = _sigmoid((inner - 1) * 40)
            air = np.maximum(air, lung_masks[side] * outside_inner)
            pleural_line = np.maximum(pleural_line, lung_masks[side] * np.exp(-(((inner - 1) / 0.06) ** 2)))
    markings_total = (markings[0] + markings[1]) * (1 - air)
    density = density * (1 - lung_mask) + lung_mask * (lung_density + markings_total)
    density = density * (1 - air) + air * 0.04 + 0.22 * pleural_line * (1 - air)

    # Heart and mediastinum (drawn over the lungs: the cardiac silhouette).
    # Cardiothoracic ratio: normal below 0.5, enlarged well above.
    ratio = rng.uniform(0.62, 0.72) if secondary == "Cardiac enlargement" else rng.uniform(0.38, 0.46)
    heart_rx = ratio * half_width
    heart_cy = base - rng.uniform(0.13, 0.15)
    heart_ry = rng.uniform(0.12, 0.14) * (1.15 if secondary == "Cardiac enlargement" else 1.0)
    heart = _sigmoid((1 - _ellipse_field(x, y, cx + shift + 0.04, heart_cy, heart_rx, heart_ry)) * 14)
    mediastinum = _sigmoid((0.045 - np.abs(x - cx - shift)) / (2 * pixel)) * _sigmoid((0.62 - y) / (3 * pixel))
    trachea = _sigmoid((0.013 - np.abs(x - cx - shift * 0.6)) / pixel) * _sigmoid((0.38 - y) / pixel)
    density = np.maximum(density, 0.6 * np.maximum(heart, mediastinum) * body)
    density -= 0.2 * trachea * body
    abdomen = _sigmoid((y - base - 0.05) / (4 * pixel)) * body  # below the diaphragm
    density = np.maximum(density, 0.55 * abdomen)

    # Lesions behind the heart are partly hidden by it, as on a real frontal film.
    lesions = _draw_lesions(x, y, pixel, answers, sites, lungs, lung_masks, rng)
    density += knobs["lesion_contrast"] * lesions * (1 - knobs["heart_occlusion"] * np.maximum(heart, mediastinum))
    if secondary == "Pleural effusion":
        for (side,) in sites:
            lung = lungs[side]
            # Meniscus: fluid fills the lung base and climbs along the lateral chest wall (costophrenic angle).
            lateral = np.clip((np.abs(x - cx) - 0.04) / (2 * lung["rx"]), 0, 1)
            height = rng.uniform(0.3, 0.4)
            meniscus = lung["base"] - height * (0.3 + 0.7 * lateral ** 1.5)
            fluid = lung_masks[side] * _sigmoid((y - meniscus) / (2 * pixel))
            density = density * (1 - fluid) + fluid * 0.6

    # Exposure differences, then quantum noise.
    density = np.clip(density, 0, 1) ** rng.uniform(0.85, 1.15)
    density = density * rng.uniform(0.9, 1.05) + rng.uniform(-0.03, 0.04)
    density += rng.normal(0, knobs["noise"], density.shape)
    return (np.clip(density, 0, 1) * 255).astype(np.uint8)


def _draw_lesions(x, y, pixel, answers, sites, lungs, lung_masks, rng) -> np.ndarray:
    """Added density of the parenchymal findings (pattern step 3, margin step 5) at the given sites."""
    _, distribution, pattern, _, morphology, _ = answers[:6]
    added = np.zeros((y.shape[0], x.shape[1]), dtype=np.float32)
    if pattern == NA_OPTION:
        return added
    for site in sites:
        side, zone = site
        lung = lungs[side]
        cx, cy = _site_center(lung, zone, rng)
        distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        if pattern == "Nodular":
            if morphology == "Well-circumscribed":  # nodule: small, round, sharp
                radius = rng.uniform(0.035, 0.05)
                added += 0.5 * _sigmoid((radius - distance) / pixel)
            else:  # mass: large with spiculated margin
                angle = np.arctan2(y - cy, x - cx)
                lobes = 0.12 * np.cos(3 * angle + rng.uniform(0, 6.3))
                spikes = 0.3 * np.maximum(np.cos(11 * angle + rng.uniform(0, 6.3)), 0) ** 4
                radius = rng.uniform(0.085, 0.11) * (1 + lobes + spikes)
                added += 0.5 * _sigmoid((radius - distance) / (1.5 * pixel))
        elif pattern in ("Consolidation", "Cavity"):
            patch = np.zeros_like(added)
            for _ in range(5):  # union of overlapping blobs, ill-defined edge
                ox, oy = rng.normal(0, 0.035, 2)
                sigma = rng.uniform(0.045, 0.065)
                patch = np.maximum(patch, np.exp(-((x - cx - ox) ** 2 + (y - cy - oy) ** 2) / (2 * sigma ** 2)))
            patch = np.clip(patch * 1.3 - 0.15, 0, 1) * lung_masks[side]
            added += 0.45 * patch
            if pattern == "Cavity":  # air-filled hole with a bright wall
                radius = rng.uniform(0.03, 0.04)
                added -= 0.6 * _sigmoid((radius - distance) / pixel)
                added += 0.2 * np.exp(-(((distance - radius) / (1.5 * pixel)) ** 2))
        elif pattern == "Interstitial":
            if distribution == "Diffuse":
                region = lung_masks[side] * _sigmoid((y - lung["cy"] + 0.2) / 0.03)
            else:
                region = np.exp(-(distance ** 2) / (2 * 0.075 ** 2)) * lung_masks[side]
            phase = _smooth_noise(rng, x.shape[1], 6) * 2
            if morphology == "Linear/Band-like":  # horizontal septal lines
                lines = np.abs(np.sin(2 * np.pi * y * 34 + phase)) ** 6 + 0 * x
            else:  # reticular net
                lines = np.maximum(np.abs(np.sin(2 * np.pi * x * 30 + phase)) ** 6,
                                   np.abs(np.sin(2 * np.pi * y * 30 + phase)) ** 6)
            added += region * (0.06 + 0.18 * lines)
        elif pattern == "Atelectatic":  # plate-like band: a thin, oblique, dense ellipse
            angle = rng.uniform(-0.5, 0.5) + (0.35 if side == 0 else -0.35)
            u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
            v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
            band = _sigmoid((1 - (u / rng.uniform(0.1, 0.13)) ** 2 - (v / rng.uniform(0.022, 0.03)) ** 2) * 8)
            added += 0.55 * band * lung_masks[side]
    return added


# ---------------------------------------------------------------------------------------------------------------
# Records and the release folder
# ---------------------------------------------------------------------------------------------------------------

_PHRASES = {
    "Increased opacity": "an area of increased opacity", "Decreased opacity": "an area of abnormal lucency",
    "Mixed": "mixed opacity and lucency", "Focal": "focal", "Multifocal": "multifocal", "Diffuse": "diffuse",
}


def _reasoning(step: int, answers: list[str], diagnosis: str) -> str:
    answer = answers[step]
    if step == 0:
        return ("The lung fields show normal radiodensity." if answer == "No abnormality"
                else f"The lungs show {_PHRASES[answer]}.")
    if answer == NA_OPTION:
        return f"No parenchymal lesion is seen, so {DEFAULT_STEP_NAMES[step].lower()} does not apply."
    if step == 6:
        return f"The findings ({', '.join(a for a in answers[:6] if a not in (NA_OPTION, 'None'))}) indicate " \
               f"{diagnosis.lower()}." if diagnosis != "Normal" else "No abnormality is found: a normal chest."
    return f"{DEFAULT_STEP_NAMES[step]}: {answer.lower()}."


def _report(answers: list[str], diagnosis: str, sites) -> str:
    if diagnosis == "Normal":
        return ("FINDINGS: The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax. "
                "IMPRESSION: No acute cardiopulmonary abnormality.")
    sides = sorted({("right" if site[0] == 0 else "left") for site in sites})  # image left = patient right
    where = " and ".join(sides) if sides else "central"
    finding = ", ".join(a.lower() for a in answers[1:6] if a not in (NA_OPTION, "None"))
    return f"FINDINGS: {where.capitalize()}: {finding}. IMPRESSION: {diagnosis}."


def make_demo_example(index: int, seed: int, image_size: int, patient_id: str, diagnosis: str,
                      difficulty: str = "easy"):
    """One record (release format) and its rendered 8-bit image; deterministic in (seed, index, difficulty)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    rng = np.random.default_rng([seed, index])
    answers = sample_findings(diagnosis, rng)
    derived = diagnosis_from_findings(answers)
    if derived != diagnosis:  # the generator and the rules must agree
        raise AssertionError(f"findings {answers} give {derived}, sampled {diagnosis}")
    answers = answers + [diagnosis]
    sites = lesion_sites(answers, rng)
    image = render_image(answers, sites, image_size, rng, difficulty)
    noise_rng = np.random.default_rng([seed, index, 1])  # its own stream: the image does not depend on it
    if noise_rng.random() < DIFFICULTIES[difficulty]["label_noise"]:  # label noise: another diagnosis's chain
        others = [name for name in DIAGNOSIS_PRIOR if name != diagnosis]
        diagnosis = others[noise_rng.integers(len(others))]
        answers = sample_findings(diagnosis, noise_rng) + [diagnosis]
    chain = [
        {"step": f"Step {step + 1}", "question": DEFAULT_STEP_QUESTIONS[step],
         "options": list(DEFAULT_STEP_OPTIONS[step]), "answer": answers[step],
         "reasoning": _reasoning(step, answers, diagnosis)}
        for step in range(len(DEFAULT_STEP_OPTIONS))
    ]
    record = {"patient_id": patient_id, "image_path": None, "origin": DEMO_ORIGIN, "view": "PA",
              "report": _report(answers, diagnosis, sites), "vqa_chain": chain}
    return record, image


def _plan(n: int, seed: int):
    """(patient_id, diagnosis, study number) per record: diagnoses from the prior, some patients with 2 studies."""
    rng = np.random.default_rng([seed, 10**9])
    names = list(DIAGNOSIS_PRIOR)
    diagnoses = rng.choice(len(names), size=n, p=list(DIAGNOSIS_PRIOR.values()))
    plan, patient = [], 0
    while len(plan) < n:
        studies = 2 if rng.random() < SECOND_STUDY_SHARE and len(plan) + 2 <= n else 1
        for study in range(studies):
            plan.append((f"{DEMO_PATIENT_PREFIX}-{patient:06d}", names[diagnoses[len(plan)]], study))
        patient += 1
    return plan


def _render_one(job):
    index, seed, image_size, patient_id, diagnosis, study, out_dir, difficulty = job
    record, image = make_demo_example(index, seed, image_size, patient_id, diagnosis, difficulty)
    folder = "images" if study == 0 else "images_2"  # the release keeps a second image folder
    relative = f"{folder}/{patient_id}-{study}.png"
    Image.fromarray(image, mode="L").save(Path(out_dir) / relative, compress_level=1)
    record["image_path"] = relative
    return record


def write_demo_release(out_dir, n: int = 1200, seed: int = 0, image_size: int = 224, workers: int = 1,
                       difficulty: str = "easy") -> dict:
    """Render `n` synthetic records into `out_dir` in the release layout. Returns a summary dict."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    for folder in ("images", "images_2"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, image_size, pid, dx, study, str(out_dir), difficulty)
            for i, (pid, dx, study) in enumerate(_plan(n, seed))]
    if workers > 1:
        # fork: workers need only numpy and PIL, and skip re-importing the package (seconds under spawn).
        context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(context).Pool(workers) as pool:
            records = pool.map(_render_one, jobs, chunksize=64)
    else:
        records = [_render_one(job) for job in jobs]
    (out_dir / "data.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    _write_split_files(out_dir, records, seed)
    (out_dir / "README.md").write_text(_DEMO_README.format(n=n, seed=seed, size=image_size, difficulty=difficulty),
                                       encoding="utf-8")
    return {"out_dir": str(out_dir), "records": len(records), "seconds": time.perf_counter() - started,
            "difficulty": difficulty}


def demo_release_matches(out_dir, n: int, seed: int = 0, image_size: int = 224, difficulty: str = "easy") -> bool:
    """Whether `out_dir` holds a complete demo release rendered with these settings (its README states them, and
    it is written last)."""
    out_dir = Path(out_dir)
    try:
        readme = (out_dir / "README.md").read_text(encoding="utf-8")
    except OSError:
        return False
    expected = _DEMO_README.format(n=n, seed=seed, size=image_size, difficulty=difficulty)
    return readme == expected and (out_dir / "data.json").is_file()


def _write_split_files(out_dir: Path, records: list[dict], seed: int):
    import pandas as pd

    assignment = stratified_group_split(
        [r["vqa_chain"][-1]["answer"] for r in records], [r["patient_id"] for r in records], seed=seed
    )
    for split in SPLITS:
        rows = [{"patient_id": r["patient_id"], "image_path": r["image_path"]}
                for r, s in zip(records, assignment) if s == split]
        pd.DataFrame(rows, columns=["patient_id", "image_path"]).to_excel(out_dir / SPLIT_FILE_NAMES[split],
                                                                         index=False)


_DEMO_README = """# Step-CoT synthetic demo release (SYNTHETIC DATA)

{n} computer-generated chest-radiograph-like images ({size} px, seed {seed}, difficulty {difficulty}) with
seven-step Step-CoT chains, in the
layout of the Step-CoT release (data.json, images/, images_2/, train/val/test.xlsx). Each image is drawn from its
record's answers; the diagnosis follows from the earlier steps by fixed rules. Not real patients, not real
radiology: for software tests, tutorials and smoke training only. Made by `stepcot data demo`.
"""

__all__ = [
    "DIAGNOSIS_PRIOR",
    "DIFFICULTIES",
    "DEMO_ORIGIN",
    "demo_release_matches",
    "diagnosis_from_findings",
    "lesion_sites",
    "make_demo_example",
    "render_image",
    "sample_findings",
    "write_demo_release",
]
