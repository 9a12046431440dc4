"""Expert reference answers from Indiana University MeSH codes (`mesh_major`, e.g. `Opacity/lung/base/left/mild`).

A code is a head term followed by qualifiers. The head decides what the code means for Step-CoT:

* a **finding kind** (`MESH_HEAD_KINDS`): an abnormal radiodensity with a diagnosis class or without one;
* **other cardiopulmonary** (`MESH_OTHER_CARDIOPULMONARY`): a chest finding that is neither an abnormal
  radiodensity nor one of the nine diagnosis classes (hyperinflation, COPD, elevated diaphragm, ...): the report
  then has no reference diagnosis unless another code gives one;
* **incidental** (`MESH_INCIDENTAL`): bones, devices, aorta, abdomen, image quality: ignored, so a report coded
  only with these is Normal. A costophrenic angle / sulcus coded `obscured` (and not `blunted`) is image quality
  too: it says the angle was not seen (cut off the film, hidden on the lateral view), not that it is blunted;
* `normal` (Normal) and `No Indexing` (no reference at all).

Qualifiers give the side (left / right / bilateral; codes of one kind add up, so `Opacity/base/left` +
`Opacity/upper lobe/right` is bilateral), the zone (apex, upper lobe -> upper; middle lobe, lingula,
hilum -> middle; base, lower lobe, costophrenic angle, retrocardiac -> lower) and descriptors. The reference
chain is then built by `build_chain`, the same function the annotators use, so Detection (Step 1), the location
(Step 4 zone + `laterality`) and the Diagnosis (Step 7, priority order of `FINDING_KINDS`) follow one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dataset_script.annotate.findings import (
    LEFT,
    LOWER,
    MIDDLE,
    PRESENT,
    RIGHT,
    UPPER,
    Finding,
    build_chain,
)
from modeling_stepcot.configuration_stepcot import DIAGNOSIS, LOCATION, NO_ANSWER

MESH_NORMAL = "normal"
MESH_NOT_INDEXED = "No Indexing"

# head -> finding kind. Opacity / Density / Calcinosis / Granuloma / Cicatrix / Thickening / Lucency / Cysts
# depend on where they are (see `_kind_for`).
MESH_HEAD_KINDS = {
    "Pneumothorax": "pneumothorax",
    "Hydropneumothorax": "hydropneumothorax",
    "Mass": "mass",
    "Pneumonia": "pneumonia",
    "Pleural Effusion": "effusion",
    "Pulmonary Atelectasis": "atelectasis",
    "Consolidation": "consolidation",
    "Infiltrate": "infiltrate",
    "Airspace Disease": "opacity",
    "Opacity": "opacity",
    "Density": "opacity",
    "Pulmonary Edema": "edema",
    "Cardiomegaly": "cardiomegaly",
    "Nodule": "nodule",
    "Calcified Granuloma": "calcified_granuloma",
    "Granuloma": "calcified_granuloma",
    "Granulomatous Disease": "calcified_granuloma",
    "Calcinosis": "calcified_granuloma",
    "Cavitation": "cavity",
    "Emphysema": "emphysema",
    "Pulmonary Emphysema": "emphysema",
    "Bullous Emphysema": "emphysema",
    "Blister": "emphysema",
    "Lung, Hyperlucent": "emphysema",
    "Lucency": "emphysema",
    "Cysts": "emphysema",
    "Pulmonary Fibrosis": "fibrosis",
    "Fibrosis": "fibrosis",
    "Lung Diseases, Interstitial": "fibrosis",
    "Markings": "interstitial_markings",
    "Pulmonary Congestion": "congestion",
    "Cicatrix": "scarring",
    "Thickening": "pleural_thickening",
    "Costophrenic Angle": "costophrenic_blunting",
    "Sulcus": "costophrenic_blunting",
    "Pleura": "costophrenic_blunting",
    "Volume Loss": "volume_loss",
    "Shift": "mediastinal_shift",
}
# "Cardiac Shadow/enlarged" is cardiomegaly; other Cardiac Shadow codes are other cardiopulmonary.
MESH_OTHER_CARDIOPULMONARY = {
    "Pulmonary Disease, Chronic Obstructive", "Lung", "Heart Failure", "Hypertension, Pulmonary",
    "Pulmonary Artery", "Diaphragm", "Diaphragmatic Eventration", "Mediastinum", "Heart", "Heart Ventricles",
    "Heart Atria", "Cardiac Shadow", "Pericardial Effusion", "Bronchiolitis", "Cystic Fibrosis", "Tuberculosis",
    "Pneumonectomy", "Aortic Aneurysm",
}
MESH_INCIDENTAL = {
    "Thoracic Vertebrae", "Spine", "Spondylosis", "Osteophyte", "Scoliosis", "Kyphosis", "Fractures, Bone",
    "Deformity", "Arthritis", "Bone Diseases, Metabolic", "Sclerosis", "Hyperostosis, Diffuse Idiopathic Skeletal",
    "Cervical Vertebrae", "Lumbar Vertebrae", "Shoulder", "Ribs", "Osteoporosis", "Funnel Chest",
    "Pectus Carinatum", "Spinal Fusion", "Catheters, Indwelling", "Implanted Medical Device", "Medical Device",
    "Surgical Instruments", "Tube, Inserted", "Stents", "Foreign Bodies", "Breast Implants", "Contrast Media",
    "Aorta", "Aorta, Thoracic", "Atherosclerosis", "Hernia, Hiatal", "Hernia, Diaphragmatic",
    "Technical Quality of Image Unsatisfactory", "Mastectomy", "Cholelithiasis", "Pneumoperitoneum",
    "Subcutaneous Emphysema", "Adipose Tissue", "Epicardial Fat", "Thorax",
}
# Qualifiers that put a density outside the lungs, pleura and heart (a rib opacity, a calcified aorta).
_NON_THORACIC_SITES = {"ribs", "clavicle", "adipose tissue", "mitral valve", "aorta", "aorta, thoracic",
                       "blood vessels", "abdomen", "humerus", "thoracic vertebrae", "spine", "lumbar vertebrae",
                       "breast", "heart ventricles", "trachea, carina"}
_MEDIASTINAL_SITES = {"mediastinum", "paratracheal"}
# Heads read as costophrenic blunting: "Costophrenic Angle/blunted" is a finding, "Costophrenic Angle/obscured" says
# that the angle could not be assessed.
_ANGLE_HEADS = {"Costophrenic Angle", "Sulcus", "Pleura"}

_ZONE_QUALIFIERS = {"apex": UPPER, "upper lobe": UPPER, "middle lobe": MIDDLE, "lingula": MIDDLE,
                    "hilum": MIDDLE, "base": LOWER, "lower lobe": LOWER, "costophrenic angle": LOWER,
                    "retrocardiac": LOWER}
_MODIFIER_QUALIFIERS = {"diffuse": "diffuse", "multiple": "multiple", "scattered": "multiple",
                        "multilobar": "multiple", "focal": "focal", "interstitial": "interstitial",
                        "reticular": "reticular", "round": "round", "pulmonary alveoli": "airspace"}
_MORPHOLOGY_QUALIFIERS = {"irregular": "Irregular/Spiculated", "streaky": "Linear/Band-like",
                          "patchy": "Ill-defined"}


class UnknownMeshCode(ValueError):
    """A MeSH head that this mapping does not cover."""


def _kind_for(head: str, qualifiers: list[str]) -> str | None:
    """The finding kind of one code, or None when the code is incidental / other cardiopulmonary."""
    sites = set(qualifiers)
    if head == "Cardiac Shadow":
        return "cardiomegaly" if "enlarged" in sites else None
    if head in _ANGLE_HEADS and "obscured" in sites and "blunted" not in sites:
        return None  # the angle is not seen (outside the film, hidden on the lateral view): image quality
    if head in {"Thickening", "Cicatrix"}:
        if "pleura" in sites:
            return "pleural_thickening"
        if head == "Thickening" and "lung" not in sites:
            return None  # e.g. "Thickening/heart ventricles"
        return "interstitial_markings" if head == "Thickening" else "scarring"
    if head in {"Opacity", "Density", "Calcinosis", "Granuloma", "Lucency", "Cysts"}:
        if sites & _NON_THORACIC_SITES or (head in {"Lucency", "Cysts"} and "lung" not in sites):
            return None
        if head in {"Opacity", "Density"} and sites & _MEDIASTINAL_SITES:
            return None
        if head in {"Opacity", "Density"} and "round" in sites:
            return "nodule"  # a round opacity is a nodule
    if head == "Calcinosis" and not sites:
        return None
    return MESH_HEAD_KINDS[head]


def mesh_head(code: str) -> str:
    return code.split("/")[0].strip()


@dataclass
class MeshReference:
    """What the expert codes of one report say, in Step-CoT terms."""

    uid: str
    indexed: bool
    findings: list[Finding] = field(default_factory=list)
    other_cardiopulmonary: list[str] = field(default_factory=list)
    chain: list[dict] = field(default_factory=list)

    @property
    def detection_abnormal(self) -> bool | None:
        return None if not self.indexed else self.chain[0]["answer"] != self.chain[0]["options"][0]

    @property
    def detection(self) -> str | None:
        return self.chain[0]["answer"] if self.indexed else None

    @property
    def diagnosis(self) -> str | None:
        """The reference Diagnosis option, or None when the codes give none in the taxonomy."""
        if not self.indexed:
            return None
        answer = self.chain[DIAGNOSIS]["answer"]
        if answer == NO_ANSWER:
            return None
        if answer == self.chain[DIAGNOSIS]["options"][0] and self.other_cardiopulmonary:
            return None  # e.g. only "Lung/hyperdistention": abnormal, but no class for it
        return answer

    @property
    def side(self) -> str | None:
        return self.chain[LOCATION].get("laterality") if self.indexed else None

    @property
    def zone(self) -> str | None:
        if not self.indexed:
            return None
        answer = self.chain[LOCATION]["answer"]
        return None if answer == NO_ANSWER else answer


def parse_mesh(uid: str, codes: list[str]) -> MeshReference:
    """Map one report's `mesh_major` codes to Step-CoT findings and a reference chain.

    Raises `UnknownMeshCode` naming the report and the code when a head is not covered by the mapping.
    """
    heads = [mesh_head(code) for code in codes]
    if not codes or MESH_NOT_INDEXED in heads:
        return MeshReference(uid=uid, indexed=False)
    reference = MeshReference(uid=uid, indexed=True)
    for code, head in zip(codes, heads):
        qualifiers = [q.strip() for q in code.split("/")[1:]]
        if head == MESH_NORMAL or head in MESH_INCIDENTAL:
            continue
        if head not in MESH_HEAD_KINDS and head not in MESH_OTHER_CARDIOPULMONARY:
            raise UnknownMeshCode(f"report {uid}: MeSH code {code!r} has a head ({head!r}) that the mapping "
                                  "does not cover; add it to annotate_mesh.py")
        kind = _kind_for(head, qualifiers) if head in MESH_HEAD_KINDS or head == "Cardiac Shadow" else None
        if kind is None:
            # Low lung volumes and an azygos lobe are technique and anatomy, not disease.
            if head in MESH_OTHER_CARDIOPULMONARY and not (
                    head == "Lung" and {"hypoinflation", "azygos lobe"} & set(qualifiers)):
                reference.other_cardiopulmonary.append(code)
            continue
        finding = Finding(kind=kind, status=PRESENT, evidence=f"MeSH {code}")
        for qualifier in qualifiers:
            if qualifier in (LEFT, RIGHT):
                finding.sides.add(qualifier)
            elif qualifier == "bilateral":
                finding.sides |= {LEFT, RIGHT}
            if qualifier in _ZONE_QUALIFIERS:
                finding.zones.add(_ZONE_QUALIFIERS[qualifier])
            if qualifier in _MODIFIER_QUALIFIERS:
                finding.modifiers.add(_MODIFIER_QUALIFIERS[qualifier])
            if qualifier in _MORPHOLOGY_QUALIFIERS:
                finding.morphology = _MORPHOLOGY_QUALIFIERS[qualifier]
        if "lingula" in qualifiers:
            finding.sides.add(LEFT)  # the lingula is part of the left upper lobe
        if head == "Airspace Disease":
            finding.modifiers.add("airspace")
        reference.findings.append(finding)
    reference.findings = _merge_same_kind(reference.findings)
    reference.chain = build_chain(reference.findings)
    return reference


def _merge_same_kind(findings: list[Finding]) -> list[Finding]:
    merged: dict[str, Finding] = {}
    for finding in findings:
        if finding.kind in merged:
            kept = merged[finding.kind]
            kept.sides |= finding.sides
            kept.zones |= finding.zones
            kept.modifiers |= finding.modifiers
            kept.morphology = kept.morphology or finding.morphology
        else:
            merged[finding.kind] = finding
    return list(merged.values())
