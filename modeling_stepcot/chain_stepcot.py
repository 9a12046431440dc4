"""Consistency of a seven-step Step-CoT chain: which answer combinations contradict each other, and the most
probable chain that does not.

A contradiction is a *forbidden pattern*: a conjunction "step a answers one of A and step b answers one of B (and
...)", e.g. "Detection = No abnormality and Lesion distribution != N/A". Because every pattern is a conjunction of
per-step option sets, checking a chain is a lookup, and the set of all consistent chains is a boolean tensor over
the product of the steps' options (4*4*6*7*5*7*9 = 211,680 cells for the paper's schema), so the most probable
consistent chain is found by exact search over it.

The rules name options by text and are written for the default schema of `configuration_stepcot.py`. A rule whose
steps or options are missing from a model's schema is left out (`chain_rules_for` reports which are active).

This file ships inside checkpoints (remote code): it imports only numpy and its sibling `configuration_stepcot`.
"""

from dataclasses import dataclass

import numpy as np

from .configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DETECTION,
    DIAGNOSIS,
    DISTRIBUTION,
    LOCATION,
    MORPHOLOGY,
    NA_OPTION,
    PATTERN,
    SECONDARY,
)

NO_ABNORMALITY = "No abnormality"
ABNORMAL_DENSITIES = ("Increased opacity", "Decreased opacity", "Mixed")
# Locations of a parenchymal or pleural lesion (everything but the heart/mediastinum and N/A).
LESION_LOCATIONS = ("Upper lung zone", "Middle lung zone", "Lower lung zone", "Multiple zones", "Pleura/Chest wall")
# Secondary effects that are themselves abnormal lung/pleural radiodensity or its direct consequence.
LUNG_SECONDARY_SIGNS = ("Pleural effusion", "Pneumothorax", "Volume loss", "Mediastinal shift")
NO_SECONDARY = ("None", NA_OPTION)
NORMAL_DIAGNOSIS = "Normal"

ANY_BUT_NA = "any option but N/A"  # marker resolved against each step's own options
ANY_BUT_NO_SECONDARY = "any option but None/N/A"
ANY_BUT_NORMAL = "any diagnosis but Normal"


@dataclass(frozen=True)
class ChainRule:
    """A forbidden pattern: the chain contradicts itself when, for every (step, options) in `when`, the step's
    answer is one of those options."""

    name: str
    message: str
    # ((step, option texts or an ANY_BUT_* marker), ...); a step is a name, or an index into the default schema
    # (`DETECTION` ...) that is matched by its name, so a reordered schema still gets the rule.
    when: tuple


# Each rule is a contradiction a reader would flag. The synthetic demo's ground-truth chains pass all of them
# (a test checks this), including cardiomegaly ("No abnormality" in the lungs, location Heart/Mediastinum).
DEFAULT_CHAIN_RULES = (
    ChainRule("normal-detection-with-distribution", "Detection found no abnormality, but a lesion distribution is "
              "given", ((DETECTION, (NO_ABNORMALITY,)), (DISTRIBUTION, ANY_BUT_NA))),
    ChainRule("normal-detection-with-pattern", "Detection found no abnormality, but a radiographic pattern is given",
              ((DETECTION, (NO_ABNORMALITY,)), (PATTERN, ANY_BUT_NA))),
    ChainRule("normal-detection-with-lesion-location", "Detection found no abnormality, but a lung/pleural lesion "
              "location is given", ((DETECTION, (NO_ABNORMALITY,)), (LOCATION, LESION_LOCATIONS))),
    ChainRule("normal-detection-with-morphology", "Detection found no abnormality, but a lesion morphology is given",
              ((DETECTION, (NO_ABNORMALITY,)), (MORPHOLOGY, ANY_BUT_NA))),
    ChainRule("normal-detection-with-lung-sign", "Detection found no abnormality, but a pleural/lung secondary sign "
              "is given", ((DETECTION, (NO_ABNORMALITY,)), (SECONDARY, LUNG_SECONDARY_SIGNS))),
    ChainRule("lesion-without-distribution", "Detection found a lesion, but its distribution is N/A",
              ((DETECTION, ABNORMAL_DENSITIES), (DISTRIBUTION, (NA_OPTION,)))),
    ChainRule("lesion-without-location", "Detection found a lesion, but its location is N/A",
              ((DETECTION, ABNORMAL_DENSITIES), (LOCATION, (NA_OPTION,)))),
    ChainRule("no-distribution-with-pattern", "Distribution is N/A (no lesion), but a radiographic pattern is given",
              ((DISTRIBUTION, (NA_OPTION,)), (PATTERN, ANY_BUT_NA))),
    ChainRule("no-distribution-with-lesion-location", "Distribution is N/A (no lesion), but a lung/pleural lesion "
              "location is given", ((DISTRIBUTION, (NA_OPTION,)), (LOCATION, LESION_LOCATIONS))),
    ChainRule("no-distribution-with-morphology", "Distribution is N/A (no lesion), but a lesion morphology is given",
              ((DISTRIBUTION, (NA_OPTION,)), (MORPHOLOGY, ANY_BUT_NA))),
    ChainRule("focal-lesion-in-multiple-zones", "Distribution is focal, but the location spans multiple zones",
              ((DISTRIBUTION, ("Focal",)), (LOCATION, ("Multiple zones",)))),
    ChainRule("normal-diagnosis-with-lesion", "Diagnosis is Normal, but Detection found a lesion",
              ((DIAGNOSIS, (NORMAL_DIAGNOSIS,)), (DETECTION, ABNORMAL_DENSITIES))),
    ChainRule("normal-diagnosis-with-location", "Diagnosis is Normal, but an abnormal location is given",
              ((DIAGNOSIS, (NORMAL_DIAGNOSIS,)), (LOCATION, ANY_BUT_NA))),
    ChainRule("normal-diagnosis-with-secondary-effect", "Diagnosis is Normal, but a secondary effect is given",
              ((DIAGNOSIS, (NORMAL_DIAGNOSIS,)), (SECONDARY, ANY_BUT_NO_SECONDARY))),
    ChainRule("diagnosis-without-findings", "A disease is diagnosed, but no step found anything",
              ((DIAGNOSIS, ANY_BUT_NORMAL), (DETECTION, (NO_ABNORMALITY,)), (LOCATION, (NA_OPTION,)),
               (SECONDARY, NO_SECONDARY))),
)

# Exact search materialises one boolean per combination of options; beyond this it would be too large.
MAX_EXACT_COMBINATIONS = 20_000_000


def _resolve_options(marker, options):
    if marker == ANY_BUT_NA:
        return [o for o in options if o != NA_OPTION]
    if marker == ANY_BUT_NO_SECONDARY:
        return [o for o in options if o not in NO_SECONDARY]
    if marker == ANY_BUT_NORMAL:
        return [o for o in options if o != NORMAL_DIAGNOSIS]
    return list(marker)


class ChainChecker:
    """The rules that apply to one schema (`step_names`, `step_options`), as per-step boolean option masks.

        >>> checker = ChainChecker.from_config(model.config)
        >>> checker.violations([0, 1, 5, 6, 4, 6, 0])       # labels, one per step
        [{'rule': 'normal-detection-with-distribution', 'steps': [...], 'message': ...}]
        >>> checker.most_probable_consistent(log_probs)      # per-step log-probabilities -> labels
    """

    def __init__(self, step_names, step_options, rules=DEFAULT_CHAIN_RULES):
        self.step_names = list(step_names)
        self.step_options = [list(options) for options in step_options]
        self.rules, self.skipped_rules, self._masks = [], [], []
        index = {name: i for i, name in enumerate(self.step_names)}
        for rule in rules:
            masks = {}
            for rule_step, marker in rule.when:
                step = index.get(DEFAULT_STEP_NAMES[rule_step] if isinstance(rule_step, int) else rule_step)
                if step is None:
                    break
                wanted = _resolve_options(marker, self.step_options[step])
                if not wanted or any(option not in self.step_options[step] for option in wanted):
                    break
                masks[step] = np.array([option in wanted for option in self.step_options[step]])
            else:
                self.rules.append(rule)
                self._masks.append(masks)
                continue
            self.skipped_rules.append(rule.name)
        self._consistent_table = None

    @classmethod
    def from_config(cls, config, rules=DEFAULT_CHAIN_RULES):
        return cls(config.step_names, config.step_options, rules)

    def violations(self, labels) -> list[dict]:
        """The rules a chain of labels (one option index per step) breaks, with the steps involved."""
        labels = [int(label) for label in labels]
        if len(labels) != len(self.step_names):
            raise ValueError(f"expected {len(self.step_names)} labels (one per step), got {len(labels)}")
        broken = []
        for rule, masks in zip(self.rules, self._masks):
            if all(masks[step][labels[step]] for step in masks):
                broken.append({"rule": rule.name, "message": rule.message,
                               "steps": [self.step_names[step] for step in sorted(masks)]})
        return broken

    def is_consistent(self, labels) -> bool:
        return not self.violations(labels)

    def consistent_table(self) -> np.ndarray:
        """Boolean tensor over all option combinations (one axis per step): True where no rule is broken."""
        if self._consistent_table is None:
            shape = [len(options) for options in self.step_options]
            if int(np.prod(shape)) > MAX_EXACT_COMBINATIONS:
                raise ValueError(f"{int(np.prod(shape))} option combinations are too many for exact search "
                                 f"(limit {MAX_EXACT_COMBINATIONS}).")
            table = np.ones(shape, dtype=bool)
            for masks in self._masks:
                forbidden = np.ones([1] * len(shape), dtype=bool)
                for step, mask in masks.items():
                    view = [1] * len(shape)
                    view[step] = len(mask)
                    forbidden = forbidden & mask.reshape(view)
                table &= ~forbidden
            self._consistent_table = table
        return self._consistent_table

    def most_probable_consistent(self, step_log_probs) -> tuple[list[int], float]:
        """Exact MAP over the consistent chains: argmax of the sum of per-step log-probabilities, treating the
        steps' (calibrated) distributions as independent. Returns (labels, joint log-probability)."""
        if len(step_log_probs) != len(self.step_names):
            raise ValueError(f"expected {len(self.step_names)} steps of log-probabilities, got {len(step_log_probs)}")
        table = self.consistent_table()
        total = np.zeros(table.shape, dtype=np.float64)
        for step, log_probs in enumerate(step_log_probs):
            log_probs = np.asarray(log_probs, dtype=np.float64)
            if log_probs.shape != (table.shape[step],):
                raise ValueError(f"step {step + 1}: expected {table.shape[step]} log-probabilities, "
                                 f"got shape {log_probs.shape}")
            view = [1] * table.ndim
            view[step] = table.shape[step]
            total = total + log_probs.reshape(view)
        total[~table] = -np.inf
        best = int(np.argmax(total))
        return [int(i) for i in np.unravel_index(best, table.shape)], float(total.flat[best])


__all__ = ["DEFAULT_CHAIN_RULES", "ChainChecker", "ChainRule"]
