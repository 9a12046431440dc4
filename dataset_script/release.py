"""Read and validate a Step-CoT release folder.

A release (the Hub's `fl-15o/Step-CoT` files, a local copy, or `stepcot data demo`) looks like::

    data.json                 list of records: patient_id, image_path, origin, report, vqa_chain (7 steps)
    train.xlsx val.xlsx test.xlsx   split lists (a patient-id or image-path column; optional)
    images/  images_2/        the images

The reader is tolerant about *names* (field aliases, letter-style answers, step dicts keyed "Step 1"...) and strict
about *meaning*: every answer maps to a label or the record is reported. `strict=True` stops at the first problem;
`strict=False` skips bad records and lists each one in `release.report` (and a JSON file), so nothing is lost
silently.

    >>> release = StepCoTRelease("Step-CoT/", strict=False, report_path="skipped.json")
    >>> release.split("train")[0]["labels"]
    [1, 0, 2, 0, 1, 0, 5]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from dataset_script.images import NEAR_DUPLICATE_HASH_SIZE, NEAR_DUPLICATE_MAX_DISTANCE, near_duplicate_pairs
from dataset_script.record_stream import (
    JsonArrayRecords,
    compact_record,
    looks_like_json_array,
    slim_record,
    unpack_hash,
)
from dataset_script.records import StepCoTDataError, describe_record, format_problem, normalize_text, parse_record
from dataset_script.schema import SCHEMA_FILE, infer_schema, read_schema_file
from dataset_script.splits import (
    SPLIT_FILE_EXTENSIONS,
    SPLITS,
    find_split_files,
    read_split_file,
    stratified_group_split,
)
from dataset_script.user_files import read_json_file
from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from modeling_stepcot.processing_stepcot import MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

# Validating this many records or more shows a progress bar (each image is decoded: ~100 records/s).
PROGRESS_MIN_RECORDS = 500


def release_fingerprint(root) -> str:
    """SHA-256 over a release folder: the bytes of data.json / data.jsonl and the split files, and the name, size
    and modification time of every other file (the images), so that any change to the release changes it."""
    root = Path(root)
    digest = hashlib.sha256()
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            digest.update(relative.encode() + b"\0")
            if directory == str(root) and (name in ("data.json", "data.jsonl")
                                           or path.suffix.lower() in SPLIT_FILE_EXTENSIONS):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            else:
                stat = path.stat()
                digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def diagnosis_name(record: dict) -> str:
    """The final step's answer text ("Normal", "Nodule", ...; "unlabelled" when missing)."""
    last = record["vqa_chain"][-1]
    return last["answer"] or "unlabelled"


_listed_sets: dict = {}


def _listed(splits: frozenset) -> frozenset:
    """The split files a record is listed in, one shared frozenset per combination."""
    return _listed_sets.setdefault(splits, splits)


def _hash_words(hashes: list) -> np.ndarray:
    """Perceptual hashes (packed by `compact_record`, or bool arrays) as rows of uint64 words."""
    size = NEAR_DUPLICATE_HASH_SIZE ** 2
    if all(isinstance(value, tuple) and value[1] == size for value in hashes):
        data = np.frombuffer(b"".join(value[0] for value in hashes), dtype=np.uint8).reshape(-1, size // 8)
    else:
        data = np.packbits(np.array([unpack_hash(value) for value in hashes], dtype=bool).reshape(-1, size), axis=1)
    return np.ascontiguousarray(data).view(np.uint64)


def _format_entry(entry: dict) -> str:
    """A problem, warning or note as one line (release-level entries have no record index)."""
    return format_problem(entry) if entry["index"] is not None else f"{entry['field']}: {entry['message']}"


class StepCoTRelease:
    """A Step-CoT release folder, read, validated and split.

    Args:
        root: folder holding `data.json` (or `data.jsonl`), optional split lists and the image folders.
        config: step schema. Default: the release's `schema.json` if it has one, else the Step-CoT seven steps when
            the records fit them (partial chains included), else a schema inferred from the records
            (`infer_schema`). `schema_source` says which.
        strict: raise `StepCoTDataError` on the first problem (default), else skip and report.
        seed: seed of the 70/15/15 stratified patient split used when the release has no split files.
        report_path: where to write the JSON report of skipped records (lenient mode; also written when empty).
        check_images: open and verify every image (turn off only for fast metadata-only reads).
        keep_text: keep each record whole (default). False keeps, for a streamed `data.json`, only what the
            release-wide checks need (`slim_record`: ids, image, labels, options, answers), so that memory grows by
            a few hundred bytes a record; `full_records()` then re-reads the reports and reasoning from the file.

    Attributes: `records` (clean dicts with `split`), `report` (skipped records, notes, counts).
    """

    def __init__(self, root, config=None, strict=True, seed=0, report_path=None, check_images=True, keep_text=True):
        self.root = Path(root)
        self.strict = strict
        self.seed = seed
        self.skipped: list[dict] = []
        self.notes: list[dict] = []
        # Problems that lenient mode resolved without skipping a record (leakage kept in one split, options
        # re-ordered, unreadable split files): strict mode raises on each.
        self.warnings: list[dict] = []
        self.near_duplicates: list[dict] = []
        self._split_files: dict[str, Path] = {}
        if not self.root.is_dir():
            raise StepCoTDataError(f"release folder not found: {self.root}")
        self._line_problems: dict[int, dict] = {}
        raw_records = self._load_raw_records()
        self._source = raw_records if not keep_text and isinstance(raw_records, JsonArrayRecords) else None
        if config is not None:
            self.config, self.schema_source = config, "given by the caller"
        elif (self.root / SCHEMA_FILE).is_file():
            self.config, self.schema_source = read_schema_file(self.root / SCHEMA_FILE), SCHEMA_FILE
        else:
            self.config, self.schema_source = infer_schema(raw_records)
        records = []
        from tqdm.auto import tqdm

        progress = tqdm(enumerate(raw_records), total=len(raw_records), desc="validating records", unit="record",
                        disable=len(raw_records) < PROGRESS_MIN_RECORDS, file=sys.stderr)
        for index, raw in progress:
            if index in self._line_problems:
                self._reject([self._line_problems[index]])
                continue
            try:
                clean, problems, notes = parse_record(raw, index, self.config, self.root, check_image=check_images)
            except RecursionError:
                clean, notes = None, []
                problems = [dict(index=index, patient_id=None, field="record", message="nested too deeply to read")]
            self.notes.extend(notes)
            if problems:
                self._reject(problems)
                continue
            records.append(compact_record(clean) if self._source is None else slim_record(compact_record(clean)))
        if not len(raw_records):
            raise StepCoTDataError(f"{self.root / 'data.json'}: the release has no records")
        unanswered = sum(all(label == IGNORE_INDEX for label in record["labels"]) for record in records)
        if unanswered:  # kept (e.g. a report silent about the lungs), but they teach and score nothing
            self.notes.append(dict(index=None, patient_id=None, field="vqa_chain",
                                   message=f"{unanswered} records answer no step (all 'No Answer' / left out)"))
        records = self._check_image_claims(self._drop_exact_duplicates(records))
        self.split_source = self._assign_splits(records)
        self.records = [record for record in records if record.get("split") is not None]
        self._check_leakage()
        self._check_option_lists()
        if check_images:
            self._check_near_duplicates()
        else:
            self.notes.append(dict(index=None, patient_id=None, field="images",
                                   message="images not checked: near-duplicates across splits not looked for"))
        if self._source is not None:  # checked: the hashes are not needed any more
            for record in self.records:
                record["perceptual_hash"] = None
        self.report = self._build_report(len(raw_records))
        if report_path is not None:
            self.write_report(report_path)
        if not self.records:
            raise StepCoTDataError(
                f"{self.root}: no usable records ({len(raw_records)} in the release, {len(self.skipped)} skipped"
                + (f": see {report_path}" if report_path is not None and self.skipped else "") + ")"
            )
        if self.skipped or self.warnings:
            logger.warning("%d of %d records skipped, %d other problems (see the report%s).", len(self.skipped),
                           len(raw_records), len(self.warnings), f" in {report_path}" if report_path else "")

    # -- loading -------------------------------------------------------------------------------------------------

    def _load_raw_records(self) -> list:
        json_path, jsonl_path = self.root / "data.json", self.root / "data.jsonl"
        if json_path.is_file() and looks_like_json_array(json_path):  # streamed, one record at a time
            return JsonArrayRecords(json_path, error=StepCoTDataError)
        if json_path.is_file():
            data = read_json_file(json_path, StepCoTDataError)
            if isinstance(data, dict):  # {"data": [...]} or {"<id>": record, ...}
                data = data.get("data", data.get("records", list(data.values())))
            if not isinstance(data, list):
                raise StepCoTDataError(f"{json_path}: expected a list of records, got {type(data).__name__}")
            if not data:
                raise StepCoTDataError(f"{json_path}: the release has no records")
            return data
        if jsonl_path.is_file():
            return self._load_jsonl(jsonl_path)
        raise StepCoTDataError(f"{self.root}: no data.json (or data.jsonl) in the release folder")

    def _load_jsonl(self, path: Path) -> list:
        """One record per line; in lenient mode a bad line is skipped and listed (its record index is kept, so
        later records keep their numbers)."""
        records, offset = [], 0
        for line_number, raw_line in enumerate(path.read_bytes().splitlines(keepends=True), 1):
            line_offset, offset = offset, offset + len(raw_line)
            if not raw_line.strip():
                continue
            try:
                records.append(json.loads(raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")))
                continue
            except UnicodeDecodeError as error:
                message = f"not UTF-8 text (byte {line_offset + error.start} of the file)"
            except json.JSONDecodeError as error:
                message = f"not valid JSON ({error})"
            except RecursionError:
                message = "JSON nested too deeply to read"
            problem = dict(index=len(records), patient_id=None, field=f"{path.name} line {line_number}",
                           message=message)
            if self.strict:
                raise StepCoTDataError(f"{path}:{line_number}: {message}")
            self._line_problems[len(records)] = problem
            records.append(None)
        if not records:
            raise StepCoTDataError(f"{path}: the release has no records")
        return records

    def _reject(self, problems: list[dict]):
        if self.strict:
            raise StepCoTDataError(format_problem(problems[0]))
        index = problems[0]["index"]
        self.skipped.append({"index": index, "patient_id": problems[0]["patient_id"], "problems": problems})

    def _warn(self, problem: dict):
        """A problem lenient mode resolved without skipping the record: strict mode raises."""
        if self.strict:
            raise StepCoTDataError(format_problem(problem) if problem["index"] is not None
                                   else f"{problem['field']}: {problem['message']}")
        self.warnings.append(problem)

    def _drop_exact_duplicates(self, records: list[dict]) -> list[dict]:
        """A record with the same patient_id and image as an earlier one is a duplicate (it would count twice, and
        split files cannot tell the two apart): reported naming the first, skipped in lenient mode."""
        first, kept = {}, []
        for record in records:
            image = record.get("resolved_image_path")
            key = (record["patient_id"], str(Path(image).resolve()) if image else record["image_path"])
            if key in first:
                same = "same answers" if first[key]["labels"] == record["labels"] else "different answers"
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="record",
                                   message="exact duplicate of "
                                           f"{describe_record(first[key]['index'], record['patient_id'])}"
                                           f" (same patient_id and image, {same})")])
                continue
            first[key] = record
            kept.append(record)
        return kept

    def _check_image_claims(self, records: list[dict]) -> list[dict]:
        """An image found only by its file name (`missing_subdir/x.png` -> `images/x.png`) must not be another
        record's image: such a record is reported, never given the other record's image."""
        guessed_paths = {Path(r["resolved_image_path"]).resolve() for r in records
                         if r.get("resolved_image_path") and r["image_found_by_name"]}
        claims = defaultdict(list)  # only the files some record found by name: the others need no look
        for record in records if guessed_paths else ():
            if record.get("resolved_image_path"):
                path = Path(record["resolved_image_path"]).resolve()
                if path in guessed_paths:
                    claims[path].append(record)
        rejected, by_name = set(), 0
        for path, owners in claims.items():
            guessed = [record for record in owners if record["image_found_by_name"]]
            by_name += len(guessed)
            if not guessed or len(owners) == 1:
                continue
            for record in guessed:
                others = [o for o in owners if o is not record]
                relative = path.relative_to(self.root.resolve()) if path.is_relative_to(self.root.resolve()) else path
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="image_path",
                                   message=f"image file not found as given: {record['image_path']!r}; "
                                           f"the file of that name, {str(relative)!r}, is also the image of "
                                           + ", ".join(describe_record(o["index"], o["patient_id"]) for o in others)
                                           + ": not guessing across records")])
                rejected.add(id(record))
        if by_name - len(rejected) > 0:
            self.notes.append(dict(index=None, patient_id=None, field="image_path",
                                   message=f"{by_name - len(rejected)} image paths name a folder that does not hold "
                                           "the file; found by file name (unique, used by no other record)"))
        return [record for record in records if id(record) not in rejected]

    # -- splits --------------------------------------------------------------------------------------------------

    def _assign_splits(self, records: list[dict]) -> str:
        split_files = find_split_files(self.root)
        if not split_files:
            assignment = stratified_group_split(
                [diagnosis_name(r) for r in records], [r["patient_id"] for r in records], seed=self.seed
            )
            for record, split in zip(records, assignment):
                record["split"] = split
            return f"seeded 70/15/15 split stratified by diagnosis, grouped by patient (seed {self.seed})"
        patient_ids = {r["patient_id"] for r in records}
        image_paths = {r["image_path"] for r in records}
        by_patient, by_image, by_name = defaultdict(list), {}, defaultdict(list)
        for record in records:
            by_patient[record["patient_id"]].append(record)
            by_image[record["image_path"]] = record
            by_name[Path(record["image_path"]).name].append(record)
        for split in SPLITS:
            if split not in split_files:
                continue
            try:
                kind, values = read_split_file(split_files[split], patient_ids, image_paths)
            except StepCoTDataError as error:
                self._warn(dict(index=None, patient_id=None, field=split_files[split].name,
                                message=f"{error}; the file is ignored, so its records are in no split"))
                continue
            unmatched = 0
            for value in values:
                if kind == "patient_id":
                    matched = by_patient.get(value, [])
                else:
                    matched = [by_image[value]] if value in by_image else by_name.get(Path(value).name, [])
                unmatched += not matched
                for record in matched:
                    record["listed_in"] = _listed(record.get("listed_in", frozenset()) | {split})
                    if record.get("split") is None:
                        record["split"] = split
            if unmatched:
                self.notes.append(dict(index=None, patient_id=None, field=split_files[split].name,
                                       message=f"{unmatched} entries match no record of data.json"))
        self._split_files = split_files
        for record in records:
            if record.get("split") is None:
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="split",
                                   message="listed in no split file (" + ", ".join(
                                       p.name for p in split_files.values()) + ")")])
        return "split files: " + ", ".join(f"{split}={path.name}" for split, path in split_files.items())

    def _check_leakage(self):
        """A patient in two splits leaks, whether its records are listed in different split files or one record
        is listed in two. Strict mode raises; lenient mode keeps the patient in its first split (train, validation,
        test order), skips its records elsewhere and reports a record listed in several split files."""
        splits_of = defaultdict(set)
        for record in self.records:
            splits_of[record["patient_id"]].add(record["split"])
            splits_of[record["patient_id"]].update(record.get("listed_in", ()))
        leaking = {pid: splits for pid, splits in splits_of.items() if len(splits) > 1}
        kept = []
        for record in self.records:
            splits = leaking.get(record["patient_id"])
            if splits is None:
                kept.append(record)
                continue
            first = min(splits, key=SPLITS.index)
            ordered = sorted(splits, key=SPLITS.index)
            listed = sorted(record.get("listed_in", ()), key=SPLITS.index)
            where = (f", this record listed in {', '.join(self._split_files[s].name for s in listed)}"
                     if len(listed) > 1 else "")
            problem = dict(index=record["index"], patient_id=record["patient_id"], field="split",
                           message=f"patient appears in several splits {ordered}{where} (leakage); "
                                   f"kept only in {first!r}")
            if self.strict:
                raise StepCoTDataError(format_problem(problem).replace("; kept only in", "; would keep only in"))
            if record["split"] == first:
                kept.append(record)
                if len(listed) > 1:
                    self.warnings.append(problem)
            else:
                self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                     "problems": [problem]})
        self.records = kept

    def _check_option_lists(self):
        """Labels are option indices, so every record must list a step's options in the same order. A record
        whose list differs from the most common one is an error in strict mode; lenient mode re-orders a record
        with the same options in another order (labels follow, reported) and skips one with other options."""
        kept = []
        majority = []
        for step in range(self.config.num_steps):
            counts = Counter(tuple(map(normalize_text, r["vqa_chain"][step]["options"])) for r in self.records)
            common = counts.most_common(1)[0][0] if counts else ()
            display = next((r["vqa_chain"][step]["options"] for r in self.records
                            if tuple(map(normalize_text, r["vqa_chain"][step]["options"])) == common), [])
            majority.append((common, list(display), counts[common] if counts else 0))
        for record in self.records:
            skip = None
            for step, (common, display, count) in enumerate(majority):
                options = record["vqa_chain"][step]["options"]
                normalized = tuple(map(normalize_text, options))
                if normalized == common:
                    continue
                field = f"vqa_chain[{step}].options"
                same_set = sorted(normalized) == sorted(common)
                problem = dict(index=record["index"], patient_id=record["patient_id"], field=field,
                               message=f"{options} {'in another order than' if same_set else 'differ from'} the "
                                       f"options of the other {count} records {display} (labels index the options)")
                if self.strict:
                    raise StepCoTDataError(format_problem(problem))
                if not same_set:
                    skip = problem
                    break
                label = record["labels"][step]
                if label != IGNORE_INDEX:
                    record["labels"] = [common.index(normalized[label]) if position == step else value
                                        for position, value in enumerate(record["labels"])]  # a new list
                record["vqa_chain"][step] = dict(record["vqa_chain"][step], options=list(display))
                self.warnings.append(dict(problem, message=problem["message"] + "; re-ordered, label follows"))
            if skip is None:
                kept.append(record)
            else:
                self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                     "problems": [skip]})
        self.records = kept

    def _check_near_duplicates(self):
        """Near-duplicate images (perceptual hash within `NEAR_DUPLICATE_MAX_DISTANCE` bits) in different splits
        leak even across patient ids (sources re-use images). Strict mode raises; lenient mode keeps the image in
        its first split and skips the later copies."""
        hashed = [r for r in self.records if r.get("perceptual_hash") is not None]
        packed = {}
        for split in SPLITS:
            members = [r for r in hashed if r["split"] == split]
            packed[split] = (np.array(members, dtype=object), _hash_words([r["perceptual_hash"] for r in members]))
        dropped = set()
        for later_index, later in enumerate(SPLITS):
            later_records, later_hashes = packed[later]
            for earlier in SPLITS[:later_index]:
                earlier_records, earlier_hashes = packed[earlier]
                if not len(later_records) or not len(earlier_records):
                    continue
                for row, column, distance in near_duplicate_pairs(later_hashes, earlier_hashes).tolist():
                    record, original = later_records[row], earlier_records[column]
                    if id(record) in dropped or id(original) in dropped:
                        continue
                    self.near_duplicates.append({
                        "distance_bits": distance,
                        "kept": {"index": original["index"], "patient_id": original["patient_id"],
                                 "split": earlier, "image_path": original["image_path"]},
                        "skipped": {"index": record["index"], "patient_id": record["patient_id"],
                                    "split": later, "image_path": record["image_path"]},
                    })
                    problem = dict(index=record["index"], patient_id=record["patient_id"], field="image_path",
                                   message=f"{later} image {record['image_path']!r} is a near-duplicate of "
                                           f"{describe_record(original['index'], original['patient_id'])}'s "
                                           f"{earlier} image {original['image_path']!r} (perceptual hash "
                                           f"{distance} of {NEAR_DUPLICATE_HASH_SIZE ** 2} bits apart; leakage)")
                    if self.strict:
                        raise StepCoTDataError(format_problem(problem))
                    dropped.add(id(record))
                    self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                         "problems": [dict(problem, message=problem["message"]
                                                           + f"; kept only in {earlier!r}")]})
        self.records = [record for record in self.records if id(record) not in dropped]

    def full_records(self):
        """The records in order (all splits), each whole: as kept, or re-read from `data.json` and re-parsed when
        the release keeps slim records (`keep_text=False`), with the labels and option order the checks settled."""
        if self._source is None:
            yield from self.records
            return
        wanted = iter(self.records)
        slim = next(wanted, None)
        for index, raw in enumerate(self._source):
            if slim is None:
                break
            if index != slim["index"]:
                continue
            clean, problems, _ = parse_record(raw, index, self.config)
            if problems or (clean["patient_id"], clean["image_path"]) != (slim["patient_id"], slim["image_path"]):
                raise StepCoTDataError(f"{self._source.path}: record {index} changed while it was read; build again")
            chain = [dict(step, options=kept["options"]) for step, kept in zip(clean["vqa_chain"], slim["vqa_chain"])]
            yield {**clean, **slim, "vqa_chain": chain}
            slim = next(wanted, None)
        if slim is not None:
            raise StepCoTDataError(f"{self._source.path}: record {slim['index']} missing when read again; build again")

    # -- access --------------------------------------------------------------------------------------------------

    def split(self, name: str) -> list[dict]:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits are {SPLITS}")
        return [record for record in self.records if record["split"] == name]

    @property
    def splits(self) -> dict[str, list[dict]]:
        return {name: self.split(name) for name in SPLITS if self.split(name)}

    def step_class_counts(self, split: str | None = None) -> list[dict[str, int]]:
        """Per step: option -> number of records answering it (all splits, or one), in option order; steps left out
        or unanswered are not counted."""
        records = self.records if split is None else self.split(split)
        counts = []
        for step, options in enumerate(self.config.step_options):
            tally = Counter(r["labels"][step] for r in records)
            counts.append({option: tally.get(index, 0) for index, option in enumerate(options)})
        return counts

    def diagnosis_counts(self) -> dict[str, dict[str, int]]:
        """split -> diagnosis -> record count."""
        counts = {}
        for name, records in self.splits.items():
            counts[name] = dict(sorted(Counter(diagnosis_name(r) for r in records).items()))
        return counts

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def __repr__(self):
        sizes = {name: len(records) for name, records in self.splits.items()}
        total = Counter(diagnosis_name(r) for r in self.records)
        return (f"StepCoTRelease(root={str(self.root)!r}, records={len(self)}, splits={sizes}, "
                f"skipped={len(self.skipped)})\n" + "\n".join(f"  {d}: {n}" for d, n in total.most_common()))

    # -- report --------------------------------------------------------------------------------------------------

    def _build_report(self, num_raw: int) -> dict:
        return {
            "root": str(self.root),
            "strict": self.strict,
            "records_in_release": num_raw,
            "records_kept": len(self.records),
            "records_skipped": len(self.skipped),
            "split_source": self.split_source,
            "schema_source": self.schema_source,
            "schema": [{"name": name, "question": question, "options": list(options), "counts": counts}
                       for name, question, options, counts in zip(self.config.step_names, self.config.step_questions,
                                                                  self.config.step_options, self.step_class_counts())],
            "near_duplicate_rule": f"perceptual hash (imagehash.phash, {NEAR_DUPLICATE_HASH_SIZE ** 2} bits) at most "
                                   f"{NEAR_DUPLICATE_MAX_DISTANCE} bits apart",
            "max_image_pixels": MAX_IMAGE_PIXELS,
            "split_sizes": {name: len(records) for name, records in self.splits.items()},
            "skipped": [
                {**entry, "problems": [dict(p, text=format_problem(p)) for p in entry["problems"]]}
                for entry in self.skipped
            ],
            "warnings": [dict(w, text=_format_entry(w)) for w in self.warnings],
            "near_duplicates": self.near_duplicates,
            "notes": [dict(n, text=_format_entry(n)) for n in self.notes],
        }

    def write_report(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report, indent=2, default=str), encoding="utf-8")
        return path


__all__ = [
    "StepCoTRelease",
    "diagnosis_name",
    "release_fingerprint",
]
