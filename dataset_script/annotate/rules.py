"""Rules backend: negation- and uncertainty-aware extraction of findings from radiology report text.

The lexicon is general radiology language (finding terms, NegEx-style negation and hedging cues, side and zone
words); nothing in it refers to a particular report. Each finding keeps the sentence it came from, which the chain
quotes in its reasoning.

Laterality of a finding, in order:

* the side words describing it (up to the nearest comma / "and" / "with"; an "and" between site words does not
  end them: "bibasilar and right midlung opacities", "in the left and right mid lung zones"). Explicit bilateral
  wording ("bilateral", "both", "bibasilar", "right and left", "left greater than right") is both sides; plural
  sites ("bases", "lower lungs", "lower lobes") are both sides only when no single side is named with them;
* side words of a device, bone or vessel ("right PICC line", "left clavicle", unless a landmark: "over the left
  fourth rib") and the words of a negated finding ("no right effusion") never give a lesion's side;
* plural "effusions" / "pneumothoraces" with no side: both pleural spaces;
* otherwise the site of the nearest sited finding before it in the sentence ("blunting of the right costophrenic
  angle, likely a small effusion"), then the nearest side word before it;
* a sentence that refers back ("These opacities ...", "This may represent edema") takes the previous sentence's
  site; the same finding stated in several sentences adds its sides up ("Right ... . Left ..." is bilateral),
  but a hedged mention's site is not added to a stated one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dataset_script.annotate.findings import (
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
                              r"|\b(?:almost|nearly|partially|incompletely|not (?:completely|fully))"
                              r"(?: \w+)? resolved\b",
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
    r"|not (?:entirely |totally |completely )?excluded|is possible|are possible"
    r"|(?:would be|is|remains|are) (?:a |also a )?(?:consideration|considered))\b|\?", re.I)
# A clause boundary ends the scope of a cue.
_CLAUSE_END = re.compile(r"[;:]|\b(?:but|however|although|though|except|which|whereas|otherwise|while)\b"
                         r"|,\s*(?=(?:there|the|a|an|and there|with|likely|probably)\b)", re.I)

# Side words. Explicit bilateral wording ("bilateral", "both", "bibasilar", "right and left", "left greater than
# right") always means both sides; plural sites ("bases", "apices", "lower lungs", "lower lobes") mean both sides
# only when no single side is named with them ("right middle and lower lobes" is one lung).
_SIDE_WORDS = [
    (BILATERAL, re.compile(r"\bbilateral(?:ly)?\b|\bboth\b|\bbibasi?lar\b|\bbibasal\b|\bbiapical\b"
                           r"|\b(?:right|left)(?: (?:slightly |much |somewhat )?(?:greater|more|worse|larger|"
                           r"denser|higher) than| (?:and|&|as well as)(?: the| in the)?| ?[>/<] ?)"
                           r" (?:the )?(?:left|right)\b", re.I)),
    (LEFT, re.compile(r"\bleft\b|\blingula(?:r)?\b|\blevo", re.I)),
    (RIGHT, re.compile(r"\bright\b|\bazygos\b", re.I)),
]
_PLURAL_SITE = re.compile(r"\bbases\b|\bapices\b|\blungs\b(?= (?:bases|apices))|\blung (?:bases|apices)\b"
                          r"|\b(?:upper|lower|mid|middle)(?:[- ]lung)? (?:and (?:upper|lower|mid|middle) )?"
                          r"(?:lungs|lobes|lung zones)\b|\bthroughout (?:the|both) lungs\b", re.I)
# A side word that names a device, a bone, a vessel or the chest wall rather than a lung or pleural site
# ("right PICC line", "left-sided pacemaker", "left clavicle") says nothing about the lesion's side.
_NON_LESION_SIDE = re.compile(
    r"\b(?:right|left)(?:[- ]sided?)?\s+(?:(?!lobe|lung|base|apex|hil|upper|lower|mid)\w+\s+){0,2}?"
    r"(?:picc|catheters?|lines?|ports?|port-a-cath|pacemakers?|pacers?|generators?|devices?|leads?|tubes?"
    r"|clavicles?|ribs?|shoulders?|humer\w*|scapula\w*|breasts?|mastectomy|axilla\w*|chest wall|arm|neck"
    r"|internal jugular|ij|subclavian|jugular|innominate|brachiocephalic|veins?|arter\w*|atri\w+|ventric\w*)\b",
    re.I)
# ... unless the structure is a landmark for the lesion ("a nodule projecting over the left fifth rib").
_LANDMARK = re.compile(r"\b(?:over|overl(?:ying|ies|ie)|projecting|projects|projected|superimposed on|level of"
                       r"|adjacent to|near|along|at)(?: the)?\s*$", re.I)
# Site words that may be coordinated in front of one finding ("bibasilar and right midlung opacities",
# "opacities in the left and right mid lung zones"): an "and" between them does not end the finding's words.
_SITE_START = ("left|right|bilateral|bibasi?lar|basi?lar|biapical|apical|upper|lower|middle|mid|midlung|perihilar"
               "|hilar|lingula|lingular")  # words that can open a site description
_SITE_WORD = rf"(?:{_SITE_START}|base|bases|apex|apices|lobe|lobes|lung|lungs|zone|zones)"
_COORDINATED_SITES = re.compile(rf"\b{_SITE_WORD}\s+(?:and|&)\s+(?:the\s+|in\s+the\s+)?(?=(?:{_SITE_START})\b)", re.I)
# A sentence whose subject refers back to the previous sentence ("These opacities ...", "This may represent
# edema"): its findings are sited where the previous sentence's findings are.
_ANAPHORA = re.compile(r"^(?:this|these|that|those|it|they|(?:the |these |such )?(?:findings?|appearances?)"
                       r"|(?:the|these|such) changes)\b", re.I)
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


_WINDOW_BOUNDARY = re.compile(r",|\band\b|\bwith\b|\bin addition\b|;|\bas well as\b|\bplus\b", re.I)


def _local_window(sentence: str, start: int, end: int) -> str:
    left, right = _window_bounds(sentence, start, end)
    return sentence[left:right]


def _window_bounds(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The words describing one mention: up to the nearest comma / 'and' / 'with' on each side."""
    joined = [m.span() for m in _COORDINATED_SITES.finditer(sentence)]

    def is_boundary(match: re.Match) -> bool:
        return not any(a <= match.start() and match.end() <= b for a, b in joined)

    left = 0
    for match in _WINDOW_BOUNDARY.finditer(sentence, 0, start):
        if is_boundary(match):
            left = match.end()
    right = len(sentence)
    for match in _WINDOW_BOUNDARY.finditer(sentence, end):
        if is_boundary(match):
            right = match.start()
            break
    return left, right


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


_BOTH_PLEURAL_SPACES = re.compile(r"effusions|pneumothoraces|hydropneumothoraces", re.I)


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


def _lesion_text(sentence: str, mentions: list[Mention]) -> str:
    """The sentence with the words that cannot give a lesion's side blanked out (same length, so offsets hold):
    side words naming a device, bone or vessel, and the clauses of negated findings ("no right effusion")."""
    spans = [m.span() for m in _NON_LESION_SIDE.finditer(sentence) if not _LANDMARK.search(sentence[:m.start()])]
    spans += [_negated_span(sentence, m) for m in mentions if m.status == ABSENT]
    return _mask(sentence, spans)


def _negated_span(sentence: str, mention: Mention) -> tuple[int, int]:
    """The words of a negated finding: from its negation cue ("no", "without") through the words describing the
    term ("no pneumothorax on the right"); for a post-negation ("the right effusion has resolved"), the term's own
    words."""
    clause_start, clause_end = _clause_bounds(sentence, mention.start, mention.end)
    window_start, window_end = _window_bounds(sentence, mention.start, mention.end)
    cues = list(_PRE_NEGATION.finditer(sentence, clause_start, mention.start))
    if cues:
        return cues[-1].start(), max(mention.end, min(window_end, clause_end))
    return max(window_start, clause_start), min(window_end, clause_end)


def _describe(mention: Mention, alone_in_sentence: bool, mentions: list[Mention] | None = None) -> Finding:
    mentions = mentions or [mention]
    text = _lesion_text(mention.sentence, [m for m in mentions if m is not mention])
    window = _local_window(text, mention.start, mention.end)
    finding = Finding(kind=mention.kind, status=mention.status, evidence=mention.sentence)
    _read_site(finding, window)
    if not finding.sides and not finding.zones and alone_in_sentence:
        _read_site(finding, text)
    if not finding.sides and _BOTH_PLEURAL_SPACES.fullmatch(mention.sentence[mention.start:mention.end].split()[-1]):
        finding.sides |= {LEFT, RIGHT}  # "small pleural effusions": a patient has two pleural spaces
    if not finding.sides and finding.zones and re.search(r"\bbas(?:i?lar|al)\b", window, re.I):
        finding.sides |= {LEFT, RIGHT}  # "basilar atelectasis" with no side means both bases
    if not finding.sides:
        # "Bibasilar opacities, right greater than left, likely atelectasis" / "Blunting of the right
        # costophrenic angle, likely a small effusion": the finding is sited with the nearest finding before it
        # in the sentence that has a side; failing that, the nearest side word before the term.
        for other in sorted((m for m in mentions if m.end <= mention.start and m.status != ABSENT),
                            key=lambda m: -m.start):
            other_site = Finding(kind=other.kind)
            _read_site(other_site, _local_window(text, other.start, other.end))
            if other_site.sides:
                finding.sides |= other_site.sides
                break
    if not finding.sides:
        before = text[:mention.start]
        # (a "left greater than right" phrase ends where its "right" does, and wins over it)
        nearest = max(((m.end(), side == BILATERAL, side) for side, pattern in _SIDE_WORDS
                       for m in pattern.finditer(before)), default=None)
        if nearest is not None:
            finding.sides |= {LEFT, RIGHT} if nearest[2] == BILATERAL else {nearest[2]}
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
    sides: set[str] = set()
    for side, pattern in _SIDE_WORDS:
        if pattern.search(text):
            sides |= {LEFT, RIGHT} if side == BILATERAL else {side}
    if not sides and _PLURAL_SITE.search(text):
        sides = {LEFT, RIGHT}  # "atelectasis at the bases", "opacities in the lower lungs"
    finding.sides |= sides
    for zone, pattern in _ZONE_WORDS:
        if pattern.search(text):
            finding.zones.add(zone)


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per kind: a stated mention outranks a hedged one, which outranks a negated one.

    Mentions of the same status add up ("Right basilar atelectasis. Left basilar atelectasis." is bilateral); a
    hedged mention's site is used only when the stated one has none, since the hedge may concern another lesion
    ("Right upper lobe pneumonia. Left upper lobe nodule, possibly infectious.")."""
    order = {PRESENT: 0, UNCERTAIN: 1, ABSENT: 2}
    merged: dict[str, Finding] = {}
    for finding in findings:
        current = merged.get(finding.kind)
        if current is None or order[finding.status] < order[current.status]:
            if current is not None and current.status != ABSENT and finding.status != ABSENT:
                if not finding.sides and not finding.zones:
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
    previous_sited: list[Finding] = []
    for sentence in split_sentences(report_text):
        mentions = find_mentions(sentence)
        lesion_mentions = [m for m in mentions if m.kind in FINDING_KINDS]
        sentence_findings = [_describe(m, alone_in_sentence=len(lesion_mentions) == 1, mentions=mentions)
                             for m in mentions]
        if previous_sited and _ANAPHORA.match(sentence):
            # "These opacities have increased." / "This may represent edema.": the sentence speaks of the
            # previous sentence's findings, which give the site its own words do not.
            for finding in sentence_findings:
                if finding.status != ABSENT and not finding.sides:
                    finding.sides |= set().union(*(f.sides for f in previous_sited))
                    finding.zones = finding.zones or set().union(*(f.zones for f in previous_sited))
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
        elif (len(specific) == 1 and not generic and not specific[0].sides and not specific[0].zones
              and previous_generic):
            # "Bandlike opacities in the right lung. Appearance suggests atelectasis.": the sentence names what
            # the previous sentence's opacities are.
            for opacity in previous_generic:
                specific[0].sides |= opacity.sides
                specific[0].zones |= opacity.zones
                findings.remove(opacity)
        previous_generic = [f for f in sentence_findings if f.kind in _GENERIC_KINDS and f.status != ABSENT]
        previous_sited = [f for f in sentence_findings if f.kind in FINDING_KINDS and f.status != ABSENT and f.sides]
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
