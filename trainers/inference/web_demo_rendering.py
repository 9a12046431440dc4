"""What the web demo (`web_demo.py`) shows, as text: the page's CSS and intro, plain-language step labels, and
the HTML of a result (models, steps, probability bars, banners, errors): functions of the JSON result."""

from __future__ import annotations

import html

import numpy as np

from trainers.inference.saliency import COLORMAP, colormap

OOD_BANNER = "This image is unlike the images this model was trained on; its answers are unreliable."

# Plain-language labels of the default schema's steps (a custom schema's steps keep their own names).
PLAIN_LABELS = {
    "Detection": "Anything abnormal in the lungs?",
    "Lesion distribution": "How is it spread?",
    "Radiographic pattern": "What does it look like?",
    "Anatomical location": "Where is it?",
    "Morphologic feature": "Its shape and edges",
    "Secondary effects": "Other effects on the chest",
    "Diagnosis": "Most likely diagnosis",
}
# Result and step fields drawn specially; any other field is listed generically.
KNOWN_RESULT_FIELDS = {"steps", "chain", "violations", "is_consistent", "probability_method", "image_size", "maps",
                       "consistent_chain", "changed_steps", "untrained_steps", "out_of_distribution",
                       "unresolved_contradiction", "image", "model", "trained_on", "test_accuracy", "reliable",
                       "warnings", "refused", "rules_checked"}
KNOWN_STEP_FIELDS = {"step", "name", "question", "answer", "label", "score", "probabilities", "is_na",
                     "consistent_answer", "consistent_label", "changed", "trained"}
UNTRAINED = "unknown (not trained)"


def colour_bar_css() -> str:
    stops = ", ".join(f"rgb({', '.join(str(round(255 * c)) for c in colormap(COLORMAP)(x)[:3])}) {100 * x:.0f}%"
                      for x in np.linspace(0, 1, 9))
    return f"linear-gradient(to right, {stops})"


CSS = """
.stepcot-columns {display: flex; gap: 16px; flex-wrap: wrap;}
.stepcot-model {flex: 1 1 340px; min-width: 0; max-width: 100%; box-sizing: border-box;}
.stepcot-model h3 {margin: 4px 0 2px 0;}
.stepcot-trained {color: #4b5563; font-size: 0.85em; margin-bottom: 6px;}
.stepcot-unreliable .stepcot-steps, .stepcot-unreliable .stepcot-flags {opacity: 0.45; filter: grayscale(1);}
.stepcot-banner {background: #fef3c7; color: #78350f; border: 2px solid #d97706; border-radius: 8px;
  padding: 10px 14px; font-weight: 700; margin-bottom: 10px;}
.stepcot-banner.refused {background: #fee2e2; color: #7f1d1d; border-color: #dc2626;}
.stepcot-banner .why {font-weight: 400; font-size: 0.85em;}
.stepcot-steps {list-style: none; padding: 0; margin: 0;}
.stepcot-step {display: grid; grid-template-columns: minmax(0, 1fr) auto; gap: 0 8px; padding: 5px 2px;
  border-bottom: 1px solid #e5e7eb;}
.stepcot-step .label {color: #4b5563; font-size: 0.85em; grid-column: 1 / -1;}
.stepcot-step .answer {font-weight: 600; overflow-wrap: anywhere;}
.stepcot-step .score {font-size: 0.85em; color: #374151; white-space: nowrap;}
.stepcot-step details {grid-column: 1 / -1; font-size: 0.8em;}
.stepcot-bar-row {display: flex; align-items: center; gap: 6px; line-height: 1.3;}
.stepcot-bar-row .option {flex: 0 1 140px; min-width: 0; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap;}
.stepcot-bar-row .track {flex: 1 1 60px; background: #eef0f3; border-radius: 3px; height: 8px;}
.stepcot-bar-row .fill {background: #3b82f6; height: 8px; border-radius: 3px;}
.stepcot-bar-row .value {flex: 0 0 34px; text-align: right;}
.stepcot-badge {display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 0.75em; margin-left: 6px;}
.stepcot-badge.na {background: #e5e7eb; color: #374151;}
.stepcot-badge.changed {background: #fef3c7; color: #92400e;}
.stepcot-badge.extra {background: #e0e7ff; color: #3730a3;}
.stepcot-flags {border-radius: 8px; padding: 6px 10px; margin: 6px 0;}
.stepcot-flags.bad {background: #fee2e2; color: #7f1d1d;}
.stepcot-flags.good {background: #f0fdf4; color: #14532d; font-size: 0.85em;}
.stepcot-flags ul {margin: 2px 0 0 0; padding-left: 18px;}
.stepcot-chain {font-size: 0.85em; margin: 6px 0; overflow-wrap: anywhere;}
.stepcot-error {background: #fee2e2; color: #7f1d1d; border-radius: 8px; padding: 8px 12px; font-weight: 600;}
.stepcot-info {color: #555; font-size: 0.85em;}
.stepcot-colourbar {height: 10px; border-radius: 3px; background: COLOURBAR;}
.stepcot-colourbar-labels {display: flex; justify-content: space-between; font-size: 0.75em; color: #4b5563;}
#stepcot-examples .thumbnail-item {max-width: 96px;}
@media (max-width: 640px) {
  #stepcot-step label, #stepcot-map-model label {padding: 3px 8px; font-size: 0.85em;}
  .stepcot-banner {padding: 8px 10px;}
}
"""



def _escape(value) -> str:
    return html.escape(str(value))


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    return str(value)


def _readable(key: str) -> str:
    return key.replace("_", " ").capitalize()


def plain_label(step: dict) -> str:
    return PLAIN_LABELS.get(step["name"], step["name"])


def _probability_bars(step: dict) -> str:
    rows = []
    for option, probability in step["probabilities"].items():
        rows.append(
            f'<div class="stepcot-bar-row"><span class="option" title="{_escape(option)}">{_escape(option)}'
            f'</span><span class="track"><div class="fill" style="width:{100 * probability:.1f}%"></div></span>'
            f'<span class="value">{probability:.2f}</span></div>'
        )
    return "".join(rows)


def render_step(step: dict) -> str:
    head = (f'<li class="stepcot-step" data-step="{_escape(step["step"])}">'
            f'<span class="label" title="{_escape(step["question"])}">{_escape(step["step"])}. '
            f'{_escape(plain_label(step))}</span>')
    if step.get("trained") is False:  # no training labels: the head's output is noise, never shown as an answer
        return f'{head}<span class="answer stepcot-info">{UNTRAINED}</span><span></span></li>'
    badges = '<span class="stepcot-badge na">N/A</span>' if step.get("is_na") else ""
    for key, value in step.items():  # fields added by newer pipelines
        if key not in KNOWN_STEP_FIELDS:
            badges += (f'<span class="stepcot-badge extra">{_escape(_readable(key))}: '
                       f'{_escape(_format_value(value))}</span>')
    if step.get("changed"):
        badges += (f'<span class="stepcot-badge changed">changed by consistent decoding to '
                   f'{_escape(step["consistent_answer"])}</span>')
    return (f'{head}<span class="answer">{_escape(step["answer"])}{badges}</span>'
            f'<span class="score">p = {step["score"]:.2f}</span>'
            f"<details><summary>all answers</summary>{_probability_bars(step)}</details></li>")


def render_model(entry: dict) -> str:
    """One model's column: name, what it was trained on, contradictions, its chain as compact steps."""
    violations = entry.get("violations") or []
    if violations:
        items = "".join(f"<li>{_escape(v.get('message', v))}</li>" for v in violations)
        flags = (f'<div class="stepcot-flags bad"><b>{len(violations)} contradiction(s) between the steps</b>'
                 f"<ul>{items}</ul></div>")
    elif entry.get("rules_checked") == 0:
        flags = '<div class="stepcot-info">Contradictions not checked: no consistency rule applies here.</div>'
    else:
        flags = '<div class="stepcot-flags good">The steps do not contradict each other.</div>'
    notes = []
    if entry.get("changed_steps"):
        notes.append(f"Consistent decoding changed: {', '.join(entry['changed_steps'])}.")
    elif "consistent_chain" in entry:
        notes.append("Consistent decoding changed nothing.")
    if entry.get("unresolved_contradiction"):
        notes.append("Consistent decoding could not remove every contradiction.")
    if entry.get("untrained_steps"):
        notes.append(f"Not trained (no answer): {', '.join(entry['untrained_steps'])}.")
    notes += [f"{_readable(key)}: {_format_value(value)}" for key, value in entry.items()
              if key not in KNOWN_RESULT_FIELDS and key != "unreliable"]
    notes_html = "".join(f'<div class="stepcot-info">{_escape(note)}</div>' for note in notes)
    accuracy = entry.get("test_accuracy")
    trained = _escape(entry.get("trained_on", ""))
    if accuracy is not None:
        trained += f" Test accuracy (mean over steps): {accuracy:.1%}."
    unreliable = " stepcot-unreliable" if entry.get("unreliable") else ""
    steps = "".join(render_step(step) for step in entry["steps"])
    return (f'<div class="stepcot-model{unreliable}" data-model="{_escape(entry["model"])}">'
            f'<h3>{_escape(entry["model"])}</h3><div class="stepcot-trained">{trained}</div>{flags}'
            f'<ol class="stepcot-steps">{steps}</ol>{notes_html}'
            f'<div class="stepcot-info">Probabilities: {_escape(entry.get("probability_method", ""))}</div></div>')


def render_banner(data: dict) -> str:
    flagged = [m for m in data["models"] if m.get("unreliable")]
    if not flagged:
        return ""
    details = "; ".join(f"{m['model']}: distance {m['out_of_distribution']['distance']:.1f}, typical up to "
                        f"{m['out_of_distribution']['threshold']:.1f}" for m in flagged)
    return (f'<div class="stepcot-banner" role="alert">{_escape(OOD_BANNER)}'
            f'<div class="why">{_escape(details)}</div></div>')


def render_refusal(name: str, problems: list[str]) -> str:
    return (f'<div class="stepcot-banner refused" role="alert">{_escape(name)} does not look like a chest '
            f'radiograph, so it is not answered: {_escape("; ".join(problems))}.</div>')


def render_error(message: str) -> str:
    return f'<div class="stepcot-error" role="alert">{_escape(message)}</div>'


def render_result(data: dict) -> str:
    return f'<div class="stepcot-columns">{"".join(render_model(entry) for entry in data["models"])}</div>'



def step_choices(data: dict | None, label: str | None) -> list[tuple[str, int]]:
    """The Grad-CAM step selector's choices: the radiograph, then each step with its answer."""
    choices = [("Radiograph only", 0)]
    entry = next((m for m in (data or {}).get("models", []) if m["model"] == label), None)
    for step in entry["steps"] if entry else []:
        answer = step["answer"] if step.get("trained") is not False else UNTRAINED
        choices.append((f"{step['step']}. {plain_label(step)} — {answer}", step["step"]))
    return choices


INTRO = """# Step-CoT: stepwise chest X-ray reasoning
Upload a frontal chest X-ray or click an example. Each model answers seven questions in turn (is anything abnormal
→ … → the most likely diagnosis); contradictions between its answers are flagged, and *consistent decoding* shows
the most probable chain without them. Choose a step under the image to see which regions drove its answer
(Grad-CAM). **A research demo, not a medical device.**"""
