"""Offline checks of model-card YAML metadata against the rules the Hugging Face Hub applies.

The Hub validates card metadata server-side (`ModelCard.validate()` posts it to `/api/validate-yaml`), which needs a
network connection; these checks catch the mistakes our cards could make (an unknown license or pipeline tag, a
local path as `base_model`, a malformed dataset id) before a push.
"""

from __future__ import annotations

import re

# Licence identifiers the Hub accepts (subset of https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m",
    "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda",
    "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2",
    "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c",
    "ms-pl", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "gemma", "unknown", "other",
})

# Hub task ids usable as `pipeline_tag` for vision / multimodal models (subset of huggingface.co/tasks).
HUB_PIPELINE_TAGS = frozenset({
    "image-classification", "image-feature-extraction", "image-segmentation", "image-text-to-text",
    "image-to-image", "image-to-text", "object-detection", "visual-question-answering",
    "document-question-answering", "zero-shot-image-classification", "zero-shot-object-detection",
    "depth-estimation", "mask-generation", "feature-extraction", "text-classification", "other",
})

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")
LICENSE_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
TAG = re.compile(r"^[\w.:+-]+$")


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def metadata_problems(metadata: dict) -> list[str]:
    """Everything in a card's YAML metadata (as a dict) that the Hub would reject or flag; empty when valid."""
    problems = []
    license_id = metadata.get("license")
    if license_id is None:
        problems.append("license: missing")
    elif license_id not in HUB_LICENSES:
        problems.append(f"license: {license_id!r} is not a Hub licence identifier")
    elif license_id == "other":
        name = metadata.get("license_name")
        if not name or not LICENSE_NAME.match(str(name)):
            problems.append(f"license_name: license 'other' needs a lowercase slug name, got {name!r}")
    tag = metadata.get("pipeline_tag")
    if tag is not None and tag not in HUB_PIPELINE_TAGS:
        problems.append(f"pipeline_tag: {tag!r} is not a Hub task id")
    for field in ("datasets", "base_model"):
        for repo_id in _as_list(metadata.get(field)):
            if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
                problems.append(f"{field}: {repo_id!r} is not a Hub repo id (owner/name)")
    for field in ("tags", "metrics"):
        values = metadata.get(field)
        if values is not None and not isinstance(values, list):
            problems.append(f"{field}: must be a list, got {type(values).__name__}")
            continue
        for value in _as_list(values):
            if not isinstance(value, str) or not TAG.match(value):
                problems.append(f"{field}: {value!r} must be a single word of letters, digits, - _ . : +")
    library = metadata.get("library_name")
    if library is not None and not isinstance(library, str):
        problems.append(f"library_name: must be a string, got {library!r}")
    return problems


__all__ = ["HUB_LICENSES", "HUB_PIPELINE_TAGS", "metadata_problems"]
