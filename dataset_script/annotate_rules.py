"""Rules backend: negation- and uncertainty-aware extraction of findings from radiology report text.

The lexicon is general radiology language (finding terms, NegEx-style negation and hedging cues, side and zone
words); nothing in it refers to a particular report. Each finding keeps the sentence it came from, which the chain
quotes in its reasoning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .annotate_findings import (
    ABSENT,
    BILATERAL,
    FINDING_KINDS,
    LEFT,
    LOWER,
    MIDDLE,
    PRESENT,
    RIGHT,
    UNCERTAIN,
    UPPER,
    Finding,
    build_chain,
)

# Finding terms, most specific first: an earlier pattern claims its words, so "calcified granuloma" is not also
# read as a generic nodule and "hydropneumothorax" not also as "pneumothorax". Kind None claims words that look
# like a finding term but are not a lung finding (pericardial effusion, aortic calcification).
_HEART = r"(?:heart|cardiac(?: silhouette| size| shadow)?|cardiomediastinal silhouette|heart size)"
_DEGREE = r"(?:mildly|moderately|markedly|severely|slightly|minimally|borderline|again|stably|now|significantly)"
FINDING_TERMS: list[tuple[str | None, str]] = [
    (None, r"pericardial effusions?"),
    (None, r"(?:aortic|aorta|vascular|valvular|annular|costal cartilage|arterial|coronary|atherosclerotic)"
           r"(?: \w+)? calcifications?"),
    ("hydropneumothorax", r"hydropneumothora(?:x|ces)"),
    ("pneumothorax", r"pneumothora(?:x|ces)|pleural air"),
    ("calcified_granuloma", r"calcified (?:granulomas?|granulomata|nodules?|(?:hilar |mediastinal |lymph )+nodes?)"
                            r"|granulomatous (?:disease|sequela|sequelae|changes?|process|infection)"
                            r"|granulomas?|granulomata|calcifications?|calcific (?:densit(?:y|ies)|foci|focus)"),
    ("mass", r"\bmass(?:es)?\b(?! effect)|\btumou?rs?\b"),
    ("pneumonia", r"pneumonia|pneumonitis|infectious process|\binfection\b|bronchopneumonia"),
    ("effusion", r"(?:pleural )?effusions?|pleural fluid|hydrothorax"),
    ("atelectasis", r"atelecta(?:sis|ses|tic)|\bcollaps(?:e|ed)\b"),
    ("consolidation", r"consolidat(?:ion|ions|ive|ed)"),
    ("edema", r"o?edema\b"),
    ("cavity", r"cavit(?:y|ies|ary|ation)"),
    ("emphysema", r"emphysema(?:tous)?|bullae|\bbulla\b|bullous|hyperluc(?:ent|ency)"),
    ("fibrosis", r"fibrosis|fibrotic(?! scar)"),
    ("interstitial_markings", r"(?:interstitial|bronchovascular|reticular|lung|pulmonary) markings"
                              r"|interstitial (?:prominence|thickening|changes?|lung disease|disease|pattern)"),
    ("congestion", r"(?:vascular|venous|pulmonary) congestion|congestive|vascular (?:prominence|engorgement)"
                   r"|cephalization|(?:prominent|increased|engorged) (?:pulmonary )?vascula(?:r|ture|rity)"),
    ("scarring", r"scar(?:s|ring|red)?\b|cicatri\w*|pleuro-?parenchymal|pleural-parenchymal"),
    ("pleural_thickening", r"pleural thickening|thickening of the pleura|apical (?:pleural )?capping"),
    ("costophrenic_blunting", r"blunt(?:ing|ed)"),
    ("cardiomegaly", r"cardiomegaly"
                     rf"|{_HEART}(?: is| are| appears?| remains?| was)?(?: {_DEGREE})*(?: in size)?"
                     r" (?:enlarged|enlargement|increased|large)"
                     rf"|enlarge(?:d|ment of the) (?:the )?{_HEART}"
                     rf"|borderline (?:enlarged )?{_HEART}|{_HEART} (?:is |are )?borderline"),
    ("nodule", r"nodul(?:e|es|ar)"),
    ("infiltrate", r"infiltrat(?:e|es|ion|ive)"),
    ("opacity", r"opacit(?:y|ies)|opacification|densit(?:y|ies)|air ?space (?:disease|process)"),
    ("volume_loss", r"volume loss|loss of volume"),
    ("mediastinal_shift", r"(?:mediastinal|tracheal) (?:shift|deviation)|shift of the mediastinum"),
]
_TERM_PATTERNS = [(kind, re.compile(pattern, re.I)) for kind, pattern in FINDING_TERMS]

# NegEx-style cues. A pre-negation covers the rest of its clause ("no effusion, pneumothorax or consolidation");
# a post-negation covers what precedes it in the clause ("the effusion has resolved").
_PSEUDO_NEGATION = re.compile(r"\bno (?:significant |interval |substantial )?(?:change|increase|decrease)\b"
                              r"|\bnot (?:only|necessarily)\b|\bwithout (?:significant )?change\b"
                              r"|\b(?:almost|nearly|partially|incompletely|not (?:completely|fully))(?: \w+)? resolved\b",
                              re.I)
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|resolution of|resolved|removal of"
    r"|rather than|ruled out|nor)\b", re.I)
_POST_NEGATION = re.compile(
    r"\b(?:(?:is|are|was|were|has|have)(?: been)? (?:not|no longer) (?:seen|identified|present|visualized|"
    r"appreciated|demonstrated|evident|visible|noted)|(?:has|have)(?: since| now)? resolved|resolved|absent"
    r"|cleared|no longer (?:seen|present|visible))\b", re.I)
# Hedges: a pre-cue covers what follows it in the clause, a post-cue what precedes it. "versus" hedges only what
# follows it: the first-listed item of a differential is the favoured one.
_PRE_UNCERTAIN = re.compile(
    r"\b(?:may|might|could|possibl[ey]|questionabl[ey]|question of|cannot (?:be )?(?:excluded?|ruled? out)"
    r"|can ?not (?:exclude|rule out)|can't (?:exclude|rule out)|difficult to exclude|concern(?:ing)? for"
    r"|suspicious (?:for|of)|versus|vs\.?|differential|equivocal|uncertain|indeterminate|perhaps|suspected"
    r"|rule out|exclude|evaluate for)\b", re.I)
_POST_UNCERTAIN = re.compile(
    r"\b(?:(?:is|are) (?:not|difficult to be) excluded|(?:cannot|can not|can't) be (?:excluded|ruled out)"
    r"|not (?:entirely |totally |completely )?excluded|is possible|are possible)\b|\?", re.I)
# A clause boundary ends the scope of a cue.
_CLAUSE_END = re.compile(r"[;:]|\b(?:but|however|although|though|except|which|whereas|otherwise|while)\b"
                         r"|,\s*(?=(?:there|the|a|an|and there|with|likely|probably)\b)", re.I)

_SIDE_WORDS = [
    (BILATERAL, re.compile(r"\bbilateral(?:ly)?\b|\bboth\b|\bbibasi?lar\b|\bbibasal\b|\bbiapical\b|\bbases\b"
                           r"|\bapices\b|\bbilaterally\b|\blungs\b(?= (?:bases|apices))", re.I)),
    (LEFT, re.compile(r"\bleft\b|\blingula(?:r)?\b|\blevo", re.I)),
    (RIGHT, re.compile(r"\bright\b|\bazygos\b", re.I)),
]
_ZONE_WORDS = [
    (UPPER, re.compile(r"\bupper (?:lobes?|lungs?|zones?|lung zones?)\b|\bapex\b|\bapices\b|\bapical\b"
                       r"|\bbiapical\b|\bapicoposterior\b", re.I)),
    (MIDDLE, re.compile(r"\bmiddle (?:lobe|lung|zone)\b|\blingula(?:r)?\b|\bmid[- ]?(?:lungs?|zones?|lung zones?)\b"
                        r"|\bperihilar\b|\bhil(?:ar|um|a)\b|\bmidlung\b|\bmid and (?:lower|upper)\b", re.I)),
    (LOWER, re.compile(r"\blower (?:lobes?|lungs?|zones?|lung zones?)\b|\bbases?\b|\bbasi?lar\b|\bbasal\b"
                       r"|\bbibasi?lar\b|\bbibasal\b|\bcostophrenic\b|\bretrocardiac\b|\binfrahilar\b"
                       r"|\bhemidiaphragm\b|\blung base\b", re.I)),
]
_MODIFIER_WORDS = {
    "diffuse": re.compile(r"\bdiffuse(?:ly)?\b|\bwidespread\b|\bthroughout (?:both|the) lungs\b", re.I),
    "multiple": re.compile(r"\bmultiple\b|\bscattered\b|\bmultifocal\b|\bseveral\b|\bnumerous\b", re.I),
    "focal": re.compile(r"\bfocal\b|\bsolitary\b|\bsingle\b", re.I),
    "interstitial": re.compile(r"\binterstitial\b", re.I),
    "reticular": re.compile(r"\breticul", re.I),
    "airspace": re.compile(r"\bair ?space\b|\balveolar\b|\bconsolidat", re.I),
    "round": re.compile(r"\bround(?:ed)?\b|\bnodular\b", re.I),
}
_MORPHOLOGY_WORDS = [
    ("Well-circumscribed", re.compile(r"\bwell[- ](?:circumscribed|defined|marginated)\b|\bsharply\b", re.I)),
    ("Irregular/Spiculated", re.compile(r"\birregular\b|\bspiculat\w*|\blobulated\b", re.I)),
    ("Linear/Band-like", re.compile(r"\blinear\b|\bstreaky\b|\bband(?:-like)?\b|\bplate[- ]?like\b|\bdiscoid\b"
                                    r"|\bstrand", re.I)),
    ("Ill-defined", re.compile(r"\bill[- ]defined\b|\bpoorly[- ]defined\b|\bhazy\b|\bfluffy\b|\bpatchy\b", re.I)),
]
# A "density" or "calcification" in bone or soft tissue is not a lung finding.
_NON_LUNG_CONTEXT = re.compile(r"\b(?:bone|bony|osseous|rib|ribs|spine|vertebra\w*|sclerotic|clavicle|humer\w*|"
                               r"breast|nipple|soft tissue|shoulder|abdomen|abdominal|gallbladder|granulation|"
                               r"aort\w*|vascular|valve|annulus|mitral|knob|catheter|device|surgical|clips?)\b", re.I)
_GENERIC_KINDS = {"opacity", "infiltrate"}


@dataclass
class Mention:
    kind: str
    status: str
    start: int
    end: int
    sentence: str
    clause: str


def split_sentences(text: str) -> list[str]:
    """Report sentences; numbered impression items ("1. ...") and run-on sentences ("apex.There") are split."""
    text = re.sub(r"\s+", " ", text or "").strip()
    pieces = re.split(r"(?<=[.!?;])\s+(?=\S)|(?<=[a-z]\.)(?=[A-Z])|\s(?=\d{1,2}[.)]\s)", text)
    sentences = []
    for piece in pieces:
        piece = re.sub(r"^\d{1,2}[.)]\s*", "", piece).strip(" .")
        if re.search(r"[A-Za-z]", piece):
            sentences.append(piece)
    return sentences


def _clause_bounds(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The clause around a mention: from the previous clause boundary (or comma list start) to the next."""
    left = 0
    for match in _CLAUSE_END.finditer(sentence, 0, start):
        left = match.end()
    right_match = _CLAUSE_END.search(sentence, end)
    right = right_match.start() if right_match else len(sentence)
    return left, right


def _local_window(sentence: str, start: int, end: int) -> str:
    """The words describing one mention: up to the nearest comma / 'and' / 'with' on each side."""
    boundary = re.compile(r",|\band\b|\bwith\b|\bin addition\b|;|\bas well as\b|\bplus\b", re.I)
    left = 0
    for match in boundary.finditer(sentence, 0, start):
        left = match.end()
    right_match = boundary.search(sentence, end)
    return sentence[left:right_match.start() if right_match else len(sentence)]


def _status(sentence: str, clause_start: int, clause_end: int, start: int, end: int) -> str:
    before = sentence[clause_start:start]
    after = sentence[end:clause_end]
    hedged = bool(_PRE_UNCERTAIN.search(before) or _POST_UNCERTAIN.search(after))
    # Hedges such as "cannot exclude" or "not excluded" contain a negation word: remove them before looking
    # for a negation, so that they read as uncertainty.
    before_clean = _PRE_UNCERTAIN.sub(" ", _PSEUDO_NEGATION.sub(" ", before))
    after_clean = _POST_UNCERTAIN.sub(" ", after)
    if _PRE_NEGATION.search(before_clean) or _POST_NEGATION.search(after_clean):
        return ABSENT
    return UNCERTAIN if hedged else PRESENT


def find_mentions(sentence: str) -> list[Mention]:
    """Finding terms in one sentence, each with its negation / uncertainty status."""
    claimed = [False] * len(sentence)
    mentions = []
    for kind, pattern in _TERM_PATTERNS:
        for match in pattern.finditer(sentence):
            start, end = match.span()
            if any(claimed[start:end]):
                continue
            for i in range(start, end):
                claimed[i] = True
            if kind is None:
                continue
            clause_start, clause_end = _clause_bounds(sentence, start, end)
            # An explicit "granuloma" / "nodule" is a lung finding even when it overlies a rib.
            if kind in {"opacity", "calcified_granuloma"} and not re.search(r"granulom|nodul", match.group(0), re.I) \
                    and _NON_LUNG_CONTEXT.search(
                    sentence[max(0, start - 30):start] + match.group(0) + sentence[end:end + 40]):
                continue
            status = _status(sentence, clause_start, clause_end, start, end)
            mentions.append(Mention(kind, status, start, end, sentence, sentence[clause_start:clause_end]))
    return sorted(mentions, key=lambda m: m.start)


def _describe(mention: Mention, alone_in_sentence: bool) -> Finding:
    window = _local_window(mention.sentence, mention.start, mention.end)
    finding = Finding(kind=mention.kind, status=mention.status, evidence=mention.sentence)
    _read_site(finding, window)
    if not finding.sides and not finding.zones and alone_in_sentence:
        _read_site(finding, mention.sentence)
    if not finding.sides and finding.zones and re.search(r"\bbas(?:i?lar|al)\b", window, re.I):
        finding.sides |= {LEFT, RIGHT}  # "basilar atelectasis" with no side means both bases
    if not finding.sides:
        # "Blunting of the right costophrenic angle, likely a small effusion": the nearest side word before
        # the term, within the sentence.
        before = mention.sentence[:mention.start]
        nearest = max(((m.start(), side) for side, pattern in _SIDE_WORDS for m in pattern.finditer(before)),
                      default=None)
        if nearest is not None:
            finding.sides |= {LEFT, RIGHT} if nearest[1] == BILATERAL else {nearest[1]}
    for name, pattern in _MODIFIER_WORDS.items():
        if pattern.search(window):
            finding.modifiers.add(name)
    if re.search(r"\w+s\b", mention.sentence[mention.start:mention.end]) and mention.kind in {
            "nodule", "calcified_granuloma", "opacity", "infiltrate", "mass"}:
        finding.modifiers.add("multiple")  # a plural term ("opacities") describes several lesions
    for option, pattern in _MORPHOLOGY_WORDS:
        if pattern.search(window):
            finding.morphology = option
            break
    return finding


def _read_site(finding: Finding, text: str) -> None:
    for side, pattern in _SIDE_WORDS:
        if pattern.search(text):
            finding.sides |= {LEFT, RIGHT} if side == BILATERAL else {side}
    for zone, pattern in _ZONE_WORDS:
        if pattern.search(text):
            finding.zones.add(zone)


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per kind: a stated mention outranks a hedged one, which outranks a negated one."""
    order = {PRESENT: 0, UNCERTAIN: 1, ABSENT: 2}
    merged: dict[str, Finding] = {}
    for finding in findings:
        current = merged.get(finding.kind)
        if current is None or order[finding.status] < order[current.status]:
            if current is not None and current.status != ABSENT and finding.status != ABSENT:
                finding.sides |= current.sides
                finding.zones |= current.zones
                finding.modifiers |= current.modifiers
            merged[finding.kind] = finding
        elif order[finding.status] == order[current.status] and finding.status != ABSENT:
            current.sides |= finding.sides
            current.zones |= finding.zones
            current.modifiers |= finding.modifiers
            current.morphology = current.morphology or finding.morphology
    return list(merged.values())


def extract_findings(report_text: str) -> list[Finding]:
    """All findings of a report (stated, hedged and negated), one per kind."""
    findings: list[Finding] = []
    previous_generic: list[Finding] = []
    for sentence in split_sentences(report_text):
        mentions = find_mentions(sentence)
        lesion_mentions = [m for m in mentions if m.kind in FINDING_KINDS]
        sentence_findings = [_describe(m, alone_in_sentence=len(lesion_mentions) == 1) for m in mentions]
        # "Left basilar opacity, likely atelectasis": the generic opacity is explained by the specific finding,
        # which takes over its site.
        specific = [f for f in sentence_findings if f.kind in FINDING_KINDS and f.kind not in _GENERIC_KINDS
                    and f.status == PRESENT]
        generic = [f for f in sentence_findings if f.kind in _GENERIC_KINDS and f.status != ABSENT]
        if specific and generic:
            for finding in specific:
                for opacity in generic:
                    finding.sides = finding.sides or set(opacity.sides)
                    finding.zones = finding.zones or set(opacity.zones)
            sentence_findings = [f for f in sentence_findings if f not in generic]
        elif len(specific) == 1 and not generic and not specific[0].sides and not specific[0].zones and previous_generic:
            # "Bandlike opacities in the right lung. Appearance suggests atelectasis.": the sentence names what
            # the previous sentence's opacities are.
            for opacity in previous_generic:
                specific[0].sides |= opacity.sides
                specific[0].zones |= opacity.zones
                findings.remove(opacity)
        previous_generic = [f for f in sentence_findings if f.kind in _GENERIC_KINDS and f.status != ABSENT]
        findings.extend(sentence_findings)
    return _merge(findings)


def report_text(findings_text: str | None, impression_text: str | None) -> str:
    parts = [p.strip() for p in (findings_text, impression_text) if p and p.strip()]
    return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts)


def annotate_report(findings_text: str | None, impression_text: str | None) -> list[dict]:
    """The seven-step chain for one report (rules backend)."""
    findings = extract_findings(report_text(findings_text, impression_text))
    negated_signs = [f for f in findings if f.status == ABSENT and f.kind in {"effusion", "pneumothorax",
                                                                               "cardiomegaly", "mediastinal_shift"}]
    return build_chain([f for f in findings if f.status != ABSENT], negated_signs)
