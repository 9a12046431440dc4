"""Findings extracted from a radiology report, and the seven-step Step-CoT chain built from them.

Both the rules annotator (report text -> findings) and the MeSH evaluation (expert codes -> findings) produce the
same `Finding` objects, so one documented function, `build_chain`, turns either into step answers. Option texts
always come from the schema in `modeling_stepcot.configuration_stepcot` (never copied here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    DETECTION,
    DIAGNOSIS,
    DISTRIBUTION,
    LOCATION,
    NA_OPTION,
    NO_ANSWER,
    PATTERN,
    SECONDARY,
)

LEFT, RIGHT, BILATERAL = "left", "right", "bilateral"
UPPER, MIDDLE, LOWER = "upper", "middle", "lower"

INCREASED, DECREASED = "increased", "decreased"
PRESENT, UNCERTAIN, ABSENT = "present", "uncertain", "absent"


@dataclass(frozen=True)
class FindingKind:
    """What the chain needs to know about one kind of finding."""

    name: str
    diagnosis: str | None  # one of the Diagnosis options, or None when the taxonomy has no class for it
    density: str  # INCREASED / DECREASED / "mixed"
    region: str  # "lung" (parenchyma: zones apply), "pleura" or "heart"
    pattern: str | None  # Radiographic-pattern option; None = decided from the wording, or unknown
    secondary_sign: str | None = None  # Secondary-effects option this finding *is*, if any
    inferred_morphology: str | None = None  # margin a radiologist implies by the term itself


# Diagnosis priority: when a report has several findings, the chain describes the first one in this order
# (acute / clinically decisive findings before chronic or incidental ones; a named cause such as atelectasis
# before the generic "opacity" it explains). Kinds without a diagnosis class come last.
FINDING_KINDS: dict[str, FindingKind] = {
    kind.name: kind
    for kind in [
        FindingKind("pneumothorax", "Pneumothorax", DECREASED, "pleura", None, "Pneumothorax"),
        FindingKind("hydropneumothorax", "Pneumothorax", "mixed", "pleura", None, "Pneumothorax"),
        FindingKind("mass", "Mass", INCREASED, "lung", "Nodular"),
        FindingKind("pneumonia", "Pneumonia", INCREASED, "lung", "Consolidation", None, "Ill-defined"),
        FindingKind("effusion", "Effusion", INCREASED, "pleura", None, "Pleural effusion"),
        FindingKind("atelectasis", "Atelectasis", INCREASED, "lung", "Atelectatic"),
        FindingKind("consolidation", "Infiltration", INCREASED, "lung", "Consolidation", None, "Ill-defined"),
        FindingKind("infiltrate", "Infiltration", INCREASED, "lung", None),
        FindingKind("edema", "Infiltration", INCREASED, "lung", "Interstitial"),
        FindingKind("opacity", "Infiltration", INCREASED, "lung", None),
        FindingKind("cardiomegaly", "Cardiomegaly", INCREASED, "heart", None, "Cardiac enlargement"),
        FindingKind("nodule", "Nodule", INCREASED, "lung", "Nodular"),
        FindingKind("calcified_granuloma", "Nodule", INCREASED, "lung", "Nodular", None, "Well-circumscribed"),
        # No Diagnosis class: the chain still describes them, the Diagnosis step answers "No Answer".
        FindingKind("cavity", None, "mixed", "lung", "Cavity"),
        FindingKind("pneumomediastinum", None, DECREASED, "heart", None),  # air in the mediastinum
        FindingKind("emphysema", None, DECREASED, "lung", None),
        FindingKind("fibrosis", None, INCREASED, "lung", "Interstitial"),
        FindingKind("interstitial_markings", None, INCREASED, "lung", "Interstitial"),
        FindingKind("congestion", None, INCREASED, "lung", "Interstitial"),
        FindingKind("scarring", None, INCREASED, "lung", None, None, "Linear/Band-like"),
        FindingKind("pleural_thickening", None, INCREASED, "pleura", None),
        FindingKind("costophrenic_blunting", None, INCREASED, "pleura", None),
    ]
}
KIND_PRIORITY = {name: rank for rank, name in enumerate(FINDING_KINDS)}

# Findings that are not abnormal radiodensities but matter to the chain or to the reader.
SIGN_KINDS = {
    "volume_loss": "Volume loss",
    "mediastinal_shift": "Mediastinal shift",
}
# Secondary-effects options in order of clinical weight.
SECONDARY_ORDER = ["Pneumothorax", "Pleural effusion", "Mediastinal shift", "Volume loss", "Cardiac enlargement"]


@dataclass
class Finding:
    """One finding of one report, with the words (or codes) it came from."""

    kind: str  # a key of FINDING_KINDS or SIGN_KINDS
    status: str = PRESENT  # PRESENT / UNCERTAIN / ABSENT
    sides: set[str] = field(default_factory=set)  # subset of {LEFT, RIGHT}
    zones: set[str] = field(default_factory=set)  # subset of {UPPER, MIDDLE, LOWER}
    modifiers: set[str] = field(default_factory=set)  # e.g. "diffuse", "multiple", "interstitial", "round"
    morphology: str | None = None  # a Morphologic-feature option stated in the source
    evidence: str = ""  # the report sentence (or MeSH code) it came from

    @property
    def is_lesion(self) -> bool:
        return self.kind in FINDING_KINDS and self.status != ABSENT

    @property
    def side(self) -> str | None:
        if self.sides >= {LEFT, RIGHT}:
            return BILATERAL
        return next(iter(self.sides), None)


def lesion_rank(finding: Finding) -> tuple[int, int]:
    """Sort key: stated findings before uncertain ones, then the diagnosis priority."""
    return (finding.status == UNCERTAIN, KIND_PRIORITY[finding.kind])


def diagnosis_of(findings: list[Finding]) -> str | None:
    """The Diagnosis option for a list of findings; None when the lesions have no class in the taxonomy."""
    lesions = [f for f in findings if f.is_lesion]
    if not lesions:
        return DEFAULT_STEP_OPTIONS[DIAGNOSIS][0]  # "Normal"
    classified = [f for f in lesions if FINDING_KINDS[f.kind].diagnosis]
    if not classified:
        return None
    return FINDING_KINDS[min(classified, key=lesion_rank).kind].diagnosis


def _quote(finding: Finding) -> str:
    certainty = " (stated with uncertainty)" if finding.status == UNCERTAIN else ""
    return f'"{finding.evidence}"{certainty}'


def _kind_text(finding: Finding) -> str:
    return finding.kind.replace("_", " ")


def _zone_answer(primary: Finding) -> str:
    options = DEFAULT_STEP_OPTIONS[LOCATION]
    region = FINDING_KINDS[primary.kind].region
    if region == "pleura":
        return options[4]  # Pleura/Chest wall
    if region == "heart":
        return options[5]  # Heart/Mediastinum
    if len(primary.zones) > 1 or "diffuse" in primary.modifiers:
        return options[3]  # Multiple zones
    if len(primary.zones) == 1:
        return options[[UPPER, MIDDLE, LOWER].index(next(iter(primary.zones)))]
    return NO_ANSWER


def _distribution_answer(primary: Finding) -> str:
    focal, multifocal, diffuse = DEFAULT_STEP_OPTIONS[DISTRIBUTION][:3]
    if FINDING_KINDS[primary.kind].region == "heart":
        return NA_OPTION  # an enlarged organ has no lesion distribution
    if "diffuse" in primary.modifiers:
        return diffuse
    sites = max(len(primary.zones), 1) * max(len(primary.sides), 1)
    if "multiple" in primary.modifiers or sites > 1:
        return multifocal
    if primary.zones or primary.sides or "focal" in primary.modifiers:
        return focal
    return NO_ANSWER


def _pattern_answer(primary: Finding) -> str:
    kind = FINDING_KINDS[primary.kind]
    if kind.region != "lung":
        return NA_OPTION  # parenchymal patterns do not apply to pleural or cardiac findings
    if kind.pattern:
        return kind.pattern
    consolidation, interstitial, nodular = DEFAULT_STEP_OPTIONS[PATTERN][:3]
    if "interstitial" in primary.modifiers or "reticular" in primary.modifiers:
        return interstitial
    if "round" in primary.modifiers:
        return nodular
    if "airspace" in primary.modifiers or primary.kind == "infiltrate":
        return consolidation
    return NO_ANSWER


def _morphology_answer(primary: Finding) -> tuple[str, str]:
    kind = FINDING_KINDS[primary.kind]
    if kind.region != "lung":
        return NA_OPTION, "margin morphology applies to parenchymal lesions"
    if primary.morphology:
        return primary.morphology, f"the margin is described in {_quote(primary)}"
    if kind.inferred_morphology:
        return kind.inferred_morphology, f"inferred from the term {_kind_text(primary)!r} itself"
    return NO_ANSWER, "the report does not describe the margin"


def build_chain(findings: list[Finding], negated_signs: list[Finding] | None = None,
                lungs_described: bool = True) -> list[dict]:
    """The seven step dicts (question, options, answer, reasoning; `laterality` on the location step).

    `negated_signs` are explicitly negated findings ("no pleural effusion"): they let the secondary-effects step
    answer "None" rather than "No Answer". `lungs_described=False` says the source neither names a finding nor
    says the chest is normal ("Fever and cough."): with no lesion, every step then answers "No Answer" (unknown),
    never "No abnormality" / "Normal" by default.
    """
    options = DEFAULT_STEP_OPTIONS
    lesions = sorted((f for f in findings if f.is_lesion), key=lesion_rank)
    primary = lesions[0] if lesions else None
    if primary is None and not lungs_described:
        return _chain_entries([(NO_ANSWER, "The report neither describes a finding nor calls the chest normal, so "
                                           "this step is unknown.")] * len(options), None)
    answers: list[tuple[str, str]] = []

    # Step 1: detection.
    if primary is None:
        answers.append((options[DETECTION][0], "No abnormal radiodensity is described in the report."))
    else:
        densities = {FINDING_KINDS[f.kind].density for f in lesions}
        if "mixed" in densities or densities == {INCREASED, DECREASED}:
            detection = options[DETECTION][3]
        else:
            detection = options[DETECTION][1] if densities == {INCREASED} else options[DETECTION][2]
        cited = "; ".join(f"{_kind_text(f)}: {_quote(f)}" for f in lesions[:3])
        answers.append((detection, f"The report describes {cited}."))

    if primary is None:
        for step in range(DISTRIBUTION, DIAGNOSIS):
            answers.append((NA_OPTION, "Not applicable: Step 1 found no lesion."))
    else:
        lead = f"Primary lesion from Step 1: {_kind_text(primary)} ({_quote(primary)})."
        distribution = _distribution_answer(primary)
        answers.append((distribution, f"{lead} Sides: {sorted(primary.sides) or 'not stated'}, "
                                      f"zones: {sorted(primary.zones) or 'not stated'}."))
        pattern = _pattern_answer(primary)
        answers.append((pattern, f"The {distribution.lower()} {_kind_text(primary)} of Step 2 "
                                 f"{'has no parenchymal pattern' if pattern == NA_OPTION else 'shows this pattern'};"
                                 f" wording: {_quote(primary)}."))
        zone = _zone_answer(primary)
        side = primary.side
        answers.append((zone, f"Side: {side or 'not stated'}; the {_kind_text(primary)} is located from "
                              f"{_quote(primary)}."))
        morphology, why = _morphology_answer(primary)
        answers.append((morphology, f"For the {_kind_text(primary)} ({pattern} pattern, Step 3): {why}."))

        signs = sorted(
            ({FINDING_KINDS[f.kind].secondary_sign for f in lesions}
             | {SIGN_KINDS[f.kind] for f in findings if f.kind in SIGN_KINDS and f.status != ABSENT})
            - {None},
            key=SECONDARY_ORDER.index,
        )
        if signs:
            sources = [f for f in findings if (FINDING_KINDS.get(f.kind) and FINDING_KINDS[f.kind].secondary_sign
                                               == signs[0]) or SIGN_KINDS.get(f.kind) == signs[0]]
            answers.append((signs[0], f"Associated with the Step 4 finding: {_quote(sources[0])}."))
        elif negated_signs:
            answers.append((options[SECONDARY][0],
                            f"The report excludes associated signs: {_quote(negated_signs[0])}."))
        else:
            answers.append((NO_ANSWER, "The report does not say whether there are associated signs."))

    # Step 7: diagnosis.
    diagnosis = diagnosis_of(findings)
    if primary is None:
        answers.append((diagnosis, "Steps 1-6 found no lesion, so the radiograph reads as normal."))
    elif diagnosis is None:
        answers.append((NO_ANSWER, f"The findings ({', '.join(_kind_text(f) for f in lesions)}) have no class "
                                   "among the diagnosis options."))
    else:
        top = next(f for f in lesions if FINDING_KINDS[f.kind].diagnosis == diagnosis)
        answers.append((diagnosis, f"Synthesis of Steps 1-6: {_kind_text(top)} ({_quote(top)}) is the leading "
                                   f"finding, so the diagnosis is {diagnosis}."))

    return _chain_entries(answers, primary)


def _chain_entries(answers: list[tuple[str, str]], primary: Finding | None) -> list[dict]:
    chain = []
    for step, (answer, reasoning) in enumerate(answers):
        entry = {
            "step": f"Step {step + 1}",
            "question": DEFAULT_STEP_QUESTIONS[step],
            "options": list(DEFAULT_STEP_OPTIONS[step]),
            "answer": answer,
            "reasoning": reasoning,
        }
        if step == LOCATION:
            entry["laterality"] = primary.side if primary is not None else None
        chain.append(entry)
    return chain

