"""A release's records read one at a time, and kept compact once validated.

`JsonArrayRecords(path)` iterates the elements of a `data.json` whose top level is a list without holding the parsed
file (it decodes 1 MiB blocks and `raw_decode`s one element at a time), and can be iterated again (the schema
inference reads the records once before the validation does). `compact_record` shares the strings that repeat across
records (questions, options, answers, step names, origin, view) and packs the perceptual hash into bytes, so that a
validated record holds little more than its own report, reasoning and ids. `slim_record` keeps only what the
release-wide checks look at (ids, image, labels, each step's options and answer); the build re-reads the rest from
`data.json` when it writes the record's row (`StepCoTRelease.full_records`).
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from pathlib import Path

import numpy as np

_BLOCK = 2**20
_WHITESPACE = " \t\r\n"


class _Invalid(Exception):
    pass


class JsonArrayRecords:
    """The elements of the JSON list in `path`; a problem raises `error("PATH: what")`."""

    def __init__(self, path, error=ValueError):
        self.path = Path(path)
        self.error = error
        self._length = None

    def __iter__(self):
        try:
            yield from self._elements()
        except _Invalid as problem:
            raise self.error(f"{self.path}: {problem}") from None

    def _elements(self):
        decoder, count = json.JSONDecoder(), 0
        text_decoder = codecs.getincrementaldecoder("utf-8-sig")()
        buffer, position, offset, started, finished, separated = "", 0, 0, False, False, True
        with open(self.path, "rb") as handle:
            while True:
                block = handle.read(_BLOCK)
                try:
                    buffer = buffer[position:] + text_decoder.decode(block, final=not block)
                except UnicodeDecodeError as error:
                    raise _Invalid(f"not UTF-8 text (byte {offset + error.start}: "
                                   f"{block[error.start:error.start + 1]!r}); re-save it as UTF-8") from None
                offset += len(block)
                position = 0
                while True:
                    while position < len(buffer) and buffer[position] in _WHITESPACE:
                        position += 1
                    if position >= len(buffer):
                        break
                    if not started:
                        if buffer[position] != "[":
                            raise _Invalid("the top level is not a list")
                        started, position = True, position + 1
                        continue
                    if finished:
                        raise _Invalid("extra data after the list")
                    if buffer[position] == "]":
                        if count and separated:
                            raise _Invalid("not valid JSON (a ',' before the closing ']')")
                        finished, position = True, position + 1
                        continue
                    if count and buffer[position] == "," and not separated:
                        position, separated = position + 1, True
                        continue
                    if not separated:
                        raise _Invalid(f"not valid JSON (expected ',' or ']' after element {count})")
                    try:
                        value, end = decoder.raw_decode(buffer, position)
                    except json.JSONDecodeError as error:
                        if block:  # maybe cut by the block boundary: read more
                            break
                        raise _Invalid(f"not valid JSON ({error})") from None
                    except RecursionError:
                        raise _Invalid("JSON nested too deeply to read") from None
                    if end == len(buffer) and block:  # a number may go on in the next block
                        break
                    position, separated = end, False
                    count += 1
                    yield value
                if not block:
                    break
        if not finished:
            raise _Invalid("not valid JSON (the list is not closed)" if started else "the file is empty")
        self._length = count

    def __len__(self):
        if self._length is None:
            for _ in self:
                pass
        return self._length


class JsonArrayWriter:
    """A `data.json` written one element at a time, byte for byte as `json.dumps(values, indent=1,
    ensure_ascii=False)` writes the whole list. Written to a hidden partial file and moved into place by `close()`;
    an exception inside `with JsonArrayWriter(path) as out:` (or `abort()`) leaves no file."""

    def __init__(self, path):
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.count = 0
        self._handle = open(self.partial, "w", encoding="utf-8")

    def write(self, value) -> None:
        text = json.dumps(value, indent=1, ensure_ascii=False)  # JSON text holds no raw newline inside a string
        self._handle.write(("[\n " if not self.count else ",\n ") + text.replace("\n", "\n "))
        self.count += 1

    def close(self) -> Path:
        self._handle.write("\n]" if self.count else "[]")
        self._handle.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self._handle.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()


def looks_like_json_array(path) -> bool:
    """Whether the first non-blank character of the file is `[`."""
    with open(path, "rb") as handle:
        head = handle.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    return head.startswith("[")


_shared: dict = {}


def _share(value):
    if isinstance(value, str) and len(value) <= 200:
        return sys.intern(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        key = tuple(value)
        if key not in _shared:
            _shared[key] = [sys.intern(item) for item in value]
        return _shared[key]  # never changed in place: an option list is replaced, not edited
    return value


def compact_record(record: dict) -> dict:
    """The record with its repeated strings shared and its perceptual hash packed (`unpack_hash` reverses it)."""
    for key in ("origin", "view", "split"):
        if isinstance(record.get(key), str):
            record[key] = sys.intern(record[key])
    chain = record.get("vqa_chain")
    if isinstance(chain, list):
        record["vqa_chain"] = [{key: value if key == "reasoning" else _share(value) for key, value in step.items()}
                               if isinstance(step, dict) else step for step in chain]
    digest = record.get("perceptual_hash")
    if isinstance(digest, np.ndarray):
        record["perceptual_hash"] = (np.packbits(digest.astype(bool).ravel()).tobytes(), digest.size)
    return record


def unpack_hash(value) -> np.ndarray | None:
    """A perceptual hash as `compact_record` stored it (or as `parse_record` made it) -> a flat bool array."""
    if value is None or isinstance(value, np.ndarray):
        return value
    packed, size = value
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[:size].astype(bool)


_shared_steps: dict = {}
_shared_labels: dict = {}
SLIM_KEYS = ("index", "patient_id", "image_path", "resolved_image_path", "image_found_by_name", "perceptual_hash",
             "origin", "view", "labels")


def slim_record(record: dict) -> dict:
    """A compacted record reduced to `SLIM_KEYS` and, per step, its options and answer (one shared dict per
    distinct step, one shared label list per distinct labels: never changed in place, a re-ordered step and its
    labels are replaced)."""
    slim = {key: record[key] for key in SLIM_KEYS if key in record}
    chain = []
    for step in record["vqa_chain"]:
        key = (tuple(step["options"]), step["answer"])
        if key not in _shared_steps:
            _shared_steps[key] = {"options": step["options"], "answer": step["answer"]}
        chain.append(_shared_steps[key])
    slim["vqa_chain"] = chain
    labels = tuple(slim["labels"])  # shared too: the checks replace a record's labels, never edit them
    slim["labels"] = _shared_labels.setdefault(labels, slim["labels"])
    return slim
