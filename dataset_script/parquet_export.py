"""Hub layout of Step-CoT: Parquet shards + a dataset card, readable by `load_dataset(DIR)` and, once pushed,
`load_dataset("fl-15o/Step-CoT")` (datasets 5.x has no loading scripts).

    DIR/README.md                                card with YAML `configs` + `dataset_info`
    DIR/data/{split}-00000-of-0000N.parquet      image bytes inlined, features in the Parquet schema; written as the
                                                 records stream (`shard_writer`), at most MAX_SHARD_BYTES each
    DIR/validation_report.json                   skipped records and notes (not uploaded)
    DIR/build_info.json                          what the build was made from, its content digest (not uploaded)

Shard names end in a digest of their bytes (`train-00000-of-00001-<sha256[:16]>.parquet`), so a rebuild with other
content has other file names and `load_dataset` never serves the cached Arrow data of an earlier build.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from datasets import DatasetInfo, Features, Image, List, Value
from datasets.info import DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from dataset_script.records import StepCoTDataError
from dataset_script.release import StepCoTRelease, release_fingerprint
from dataset_script.shard_writer import ShardWriter
from dataset_script.splits import SPLITS
from dataset_script.synthetic import DEMO_ORIGIN
from dataset_script.user_files import read_json_file
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_NAMES, StepCoTSchemaConfig
from modeling_stepcot.processing_stepcot import image_to_8bit

DEFAULT_REPO_ID = "fl-15o/Step-CoT"
MAX_SHARD_BYTES = 500 * 2**20  # as push_to_hub
REPORT_NAME = "validation_report.json"
BUILD_INFO_NAME = "build_info.json"
STAGING_PREFIX = ".stepcot-build-"
UPLOAD_PATTERNS = ["README.md", "data/*.parquet"]


def step_cot_features(num_steps: int = len(DEFAULT_STEP_NAMES)) -> Features:
    """The dataset's features: image, ids, report text, the chain as a list of structs, and the label vector."""
    return Features({
        "image": Image(),
        "patient_id": Value("string"),
        "origin": Value("string"),
        "report": Value("string"),
        "vqa_chain": List({
            "question": Value("string"),
            "options": List(Value("string")),
            "answer": Value("string"),
            "reasoning": Value("string"),
        }),
        "labels": List(Value("int64"), length=num_steps),
    })


FEATURES = step_cot_features()


def image_bytes(path) -> tuple[bytes, bool]:
    """The file's bytes as stored (lossless), or an 8-bit PNG when the image is 16-bit / float.
    Returns (bytes, converted)."""
    from PIL import Image as PILImage

    path = Path(path)
    with PILImage.open(path) as image:
        if not (image.mode.startswith("I") or image.mode == "F"):
            return path.read_bytes(), False
        buffer = io.BytesIO()
        image_to_8bit(image).save(buffer, format="PNG")
    return buffer.getvalue(), True


def _row(record: dict) -> tuple[dict, bool]:
    data, converted = image_bytes(record["resolved_image_path"])
    name = Path(record["image_path"]).name
    if converted:
        name = str(Path(name).with_suffix(".png"))
    row = {
        "image": {"bytes": data, "path": name},
        "patient_id": record["patient_id"],
        "origin": record["origin"],
        "report": record["report"],
        "vqa_chain": record["vqa_chain"],
        "labels": record["labels"],
    }
    return row, converted


class BuildOutputError(StepCoTDataError):
    """An output folder that would overwrite or mix with the release it is built from."""


def check_output_folder(source, out_dir) -> None:
    """Refuse to build into the release folder, into a folder inside it, or into a folder that contains it: the
    card would overwrite the release's README.md and the build would read or replace its own output."""
    source, out = Path(source).resolve(), Path(out_dir).resolve()
    if out == source:
        raise BuildOutputError(f"the output folder {out_dir} is the release folder: the build would overwrite the "
                               "release's README.md; choose an output folder outside the release")
    if out.is_relative_to(source):
        raise BuildOutputError(f"the output folder {out_dir} is inside the release folder {source}; choose an output "
                               "folder outside the release")
    if source.is_relative_to(out):
        raise BuildOutputError(f"the output folder {out_dir} contains the release folder {source}; choose an output "
                               "folder outside the release")


def export_hub_layout(release: StepCoTRelease, out_dir, max_shard_bytes: int = MAX_SHARD_BYTES,
                      build_info: dict | None = None) -> dict:
    """Write `release` as Parquet shards + dataset card into `out_dir`. Returns a summary dict.

    Atomic: everything is written into a staging folder inside `out_dir` and moved into place only when complete,
    so a failed or killed rebuild leaves the previous build readable (never a mix of old and new shards)."""
    out_dir = Path(out_dir)
    check_output_folder(release.root, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(f"{STAGING_PREFIX}*"):  # from a build that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        summary = _write_build(release, staging, max_shard_bytes, build_info)
        old = staging / "previous-data"
        if (out_dir / "data").exists():
            os.replace(out_dir / "data", old)
        os.replace(staging / "data", out_dir / "data")
        for name in (REPORT_NAME, BUILD_INFO_NAME, "README.md"):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out_dir": str(out_dir), **summary}


def _write_build(release: StepCoTRelease, folder: Path, max_shard_bytes: int, build_info: dict | None) -> dict:
    data_dir = folder / "data"
    data_dir.mkdir()
    features = step_cot_features(release.config.num_steps)
    split_infos, converted, files, digests = {}, 0, [], hashlib.sha256()
    # One pass over the records (re-read from data.json when the release keeps them slim), each row to its split's
    # writer: one row group per split in memory at a time.
    writers = {split: ShardWriter(data_dir, split, features, max_shard_bytes) for split in release.splits}
    counts = Counter()
    try:
        for record in release.full_records():
            row, was_converted = _row(record)
            converted += was_converted
            writers[record["split"]].add(row)
            counts[record["split"]] += 1
        shards_of = {split: writer.close() for split, writer in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for split, shards in shards_of.items():
        for shard in shards:
            files.append(f"data/{shard.path.name}")
            digests.update(f"{shard.path.name}\n".encode())
        split_infos[split] = SplitInfo(name=split, num_bytes=sum(shard.num_bytes for shard in shards),
                                       num_examples=counts[split])
    content_digest = digests.hexdigest()
    shard_files = {split: [f for f in files if f.startswith(f"data/{split}-")] for split in split_infos}
    write_dataset_card(release, folder, features, split_infos, content_digest=content_digest, shard_files=shard_files,
                       hub_source=(build_info or {}).get("hub_source"))
    release.write_report(folder / REPORT_NAME)
    config = release.config  # the step schema, so that training names the data's steps (`built_step_schema`)
    schema = [{"name": name, "question": question, "options": list(options)}
              for name, question, options in zip(config.step_names, config.step_questions, config.step_options)]
    (folder / BUILD_INFO_NAME).write_text(json.dumps(
        {**(build_info or {}), "content_digest": content_digest, "files": files, "schema": schema}, indent=2),
        encoding="utf-8")
    return {
        "files": files,
        "content_digest": content_digest,
        "split_sizes": {split: info.num_examples for split, info in split_infos.items()},
        "images_converted_to_8bit": converted,
        "records_skipped": len(release.skipped),
        "problems_reported": len(release.warnings),
    }


def build_hub_dataset(source, out_dir, strict: bool = True, seed: int = 0, config: StepCoTSchemaConfig | None = None,
                      max_shard_bytes: int = MAX_SHARD_BYTES, hub_source: dict | None = None) -> dict:
    """Read the release folder `source` (validating it) and export it to `out_dir` in the Hub layout. `hub_source`
    (repo_id, revision, ...) names the Hub release it was downloaded from: written in the card and build_info.json.

    OUT/build_info.json records what the build was made from (release fingerprint, mode, seed, schema) so that
    `dataset_script.sources` rebuilds exactly when the release or the settings change."""
    started = time.perf_counter()
    check_output_folder(source, out_dir)
    report_path = Path(out_dir) / REPORT_NAME
    build_info = build_settings(source, strict=strict, seed=seed, config=config)
    if hub_source:
        build_info["hub_source"] = hub_source
    release = StepCoTRelease(source, config=config, strict=strict, seed=seed, report_path=report_path, keep_text=False)
    summary = export_hub_layout(release, out_dir, max_shard_bytes=max_shard_bytes, build_info=build_info)
    summary["seconds"] = time.perf_counter() - started
    summary["report"] = str(report_path)
    return summary


def build_settings(source, strict: bool, seed: int, config: StepCoTSchemaConfig | None = None) -> dict:
    """What a build of `source` depends on: the release's fingerprint and the build settings."""
    schema = (config or StepCoTSchemaConfig()).to_json_string(use_diff=False)
    return {"source": str(Path(source).resolve()), "source_fingerprint": release_fingerprint(source),
            "strict": bool(strict), "seed": int(seed), "schema_sha256": hashlib.sha256(schema.encode()).hexdigest()}


def read_build_info(folder) -> dict | None:
    """OUT/build_info.json of a build, or None (an older or foreign build)."""
    path = Path(folder) / BUILD_INFO_NAME
    try:
        return read_json_file(path)
    except ValueError:
        return None


def built_step_schema(folder) -> list[dict] | None:
    """The step schema a build recorded in its build_info.json (`[{"name", "question", "options"}, ...]`), or None
    (a build from before it was recorded, or a dataset loaded from the Hub)."""
    schema = (read_build_info(folder) or {}).get("schema")
    return schema if isinstance(schema, list) and all(isinstance(step, dict) for step in schema) else None


# ---------------------------------------------------------------------------------------------------------------
# Dataset card
# ---------------------------------------------------------------------------------------------------------------

_SOURCE_LICENSES = {
    "iu x-ray": "IU X-Ray (Open-i, Indiana University): CC BY-NC-ND 4.0",
    "padchest": "PadChest-GR: research use under the BIMCV PadChest-GR data-use agreement",
    "med-image-reports": "Med-Image-Reports (derived from Open-i): see its original terms (Open-i: CC BY-NC-ND 4.0)",
}


def _is_synthetic(release: StepCoTRelease) -> bool:
    return bool(release.records) and all(r["origin"] == DEMO_ORIGIN for r in release.records)


def _license_lines(origins: Counter, synthetic: bool) -> list[str]:
    if synthetic:
        return ["- Synthetic images and text generated by `stepcot data demo`; no patient data and no third-party "
                "content. Use freely for tests and tutorials; it has no clinical meaning."]
    lines = ["- Step-CoT annotations: the Step-CoT dataset card states no license. Treat them as **research-only**; "
             "do not redistribute publicly."]
    for origin in origins:
        text = next((value for key, value in _SOURCE_LICENSES.items() if key in origin.lower()), None)
        lines.append(f"- {origin}: " + (text.split(": ", 1)[1] if text else "terms of the original source (unknown "
                                                                               "to this tool): check before use"))
    return lines


def _card_body(release: StepCoTRelease, split_infos: dict, hub_source: dict | None = None) -> str:
    synthetic = _is_synthetic(release)
    config = release.config
    origins = Counter(r["origin"] or "unknown" for r in release.records)
    counts = release.diagnosis_counts()
    diagnoses = sorted({d for split in counts.values() for d in split})
    title = "Step-CoT: " + ("synthetic demo release" if synthetic
                            else "stepwise visual chain-of-thought for chest X-ray VQA")
    lines = [f"# {title}", ""]
    if synthetic:
        lines += ["> **SYNTHETIC DATA.** Computer-generated chest-radiograph-like images whose lesions are drawn from "
                  "each record's seven-step answers. Not real patients; for software tests, tutorials and smoke "
                  "training only.", ""]
    else:
        lines += ["Frontal chest X-rays, each with a radiology report and a seven-step visual chain of thought "
                  "(Detection -> Diagnosis) answered as multiple choice, from the Step-CoT release (arXiv "
                  "2603.13878).", ""]
    lines += ["## Usage", "", "```python", "from datasets import load_dataset",
              f'ds = load_dataset("{DEFAULT_REPO_ID}")  # or load_dataset("path/to/this/folder")',
              f'ds["train"][0]["labels"]  # {config.num_steps} option indices, -100 = missing', "```", "",
              "## Source datasets", ""]
    lines += [f"- {origin}: {count} records" for origin, count in origins.most_common()]
    lines += ["", "## Licenses", ""] + _license_lines(origins, synthetic)
    lines += ["", "## Label schema", "",
              "`labels[i]` is the index of step i's answer in that record's `options` (the same order as "
              "`vqa_chain[i].options`); `N/A` (clinically irrelevant, e.g. no lesion) is the last option of a step "
              "that has one; -100 marks a step the record leaves out or does not answer (neither trained nor scored).",
              "", f"Schema: {release.schema_source}. Counts: records answering each option, all splits.", "",
              "| step | name | question | options (count) |", "|---|---|---|---|"]
    class_counts = release.step_class_counts()
    for step in range(config.num_steps):
        options = " / ".join(f"{i}: {o} ({class_counts[step][o]})" for i, o in enumerate(config.step_options[step]))
        lines.append(f"| {step + 1} | {config.step_names[step]} | {config.step_questions[step]} | {options} |")
    lines += ["", "## Splits and diagnoses", "", f"Split source: {release.split_source}. Patients never cross "
              "splits.", "", "| diagnosis | " + " | ".join(counts) + " |", "|---|" + "---|" * len(counts)]
    for diagnosis in diagnoses:
        lines.append(f"| {diagnosis} | " + " | ".join(str(counts[s].get(diagnosis, 0)) for s in counts) + " |")
    lines.append("| **total** | " + " | ".join(str(split_infos[s].num_examples) for s in counts) + " |")
    lines += ["", "## Build", "",
              f"Built by `stepcot data build` from {release.report['records_in_release']} release records: "
              f"{release.report['records_kept']} kept, {release.report['records_skipped']} skipped (listed in "
              f"`{REPORT_NAME}`, which is not uploaded). 16-bit images are stored as 8-bit PNG.", ""]
    if hub_source:
        lines += [f"Source: the Hub dataset `{hub_source['repo_id']}` at revision `{hub_source['revision']}` "
                  f"(requested: `{hub_source.get('requested_revision', 'main')}`).", ""]
    return "\n".join(lines)


def write_dataset_card(release: StepCoTRelease, out_dir, features: Features, split_infos: dict,
                       content_digest: str | None = None, shard_files: dict | None = None,
                       hub_source: dict | None = None) -> Path:
    """README.md with the YAML the Hub and `load_dataset` read (`configs`, `dataset_info`) and a readable body.

    `shard_files` (split -> content-named shard paths) are listed by name rather than by a `data/{split}-*`
    pattern: `load_dataset` keys its cache on the card's configs and dataset_info, so only names that change with
    the content keep two builds with equal metadata (e.g. labels swapped between records) apart."""
    synthetic = _is_synthetic(release)
    card_data = DatasetCardData(
        pretty_name="Step-CoT (synthetic demo)" if synthetic else "Step-CoT",
        license="other",
        license_name="synthetic-demo" if synthetic else "research-only",
        language=["en"],
        task_categories=["visual-question-answering", "image-classification"],
        tags=["medical", "chest-x-ray", "chain-of-thought"] + (["synthetic"] if synthetic else []),
        size_categories=[_size_category(len(release))],
    )
    ordered = {split: split_infos[split] for split in SPLITS if split in split_infos}
    paths = {s: (shard_files[s] if shard_files else f"data/{s}-*") for s in ordered}
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": paths[s]} for s in ordered]}}) \
        .to_dataset_card_data(card_data)
    splits = SplitDict(dataset_name="step-cot")
    for split_info in ordered.values():
        splits.add(split_info)
    info = DatasetInfo(features=features, splits=splits)
    info.dataset_size = sum(s.num_bytes for s in ordered.values())
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    body = _card_body(release, ordered, hub_source)
    if content_digest:
        body += f"Content digest (SHA-256 over the shard names, which carry their own SHA-256): `{content_digest}`.\n"
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = Path(out_dir) / "README.md"
    card.save(path)
    return path


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


# ---------------------------------------------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------------------------------------------


def push_to_hub(folder, repo_id: str = DEFAULT_REPO_ID, private: bool = True, token=None,
                commit_message: str | None = None, api=None):
    """Upload a built folder (card + Parquet shards only) to a dataset repo; creates the repo if needed.
    Private by default: Step-CoT states no license, so a public copy needs the owner's permission."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file() or not list((folder / "data").glob("*.parquet")):
        raise FileNotFoundError(f"{folder} is not a built dataset (needs README.md and data/*.parquet); "
                                "run `stepcot data build` first")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=UPLOAD_PATTERNS,
        delete_patterns=["data/*.parquet"],  # shards of an older build must not linger next to the new ones
        commit_message=commit_message or "Upload Step-CoT dataset (stepcot data push)",
    )


__all__ = [
    "DEFAULT_REPO_ID",
    "FEATURES",
    "BuildOutputError",
    "build_hub_dataset",
    "build_settings",
    "check_output_folder",
    "read_build_info",
    "export_hub_layout",
    "image_bytes",
    "push_to_hub",
    "step_cot_features",
    "built_step_schema",
    "write_dataset_card",
]
