"""A user's files read with every problem named: table files (CSV, JSONL or a JSON list) one row at a time, text
files whole, and documents (a YAML or JSON mapping) with a bound on their size once YAML aliases are expanded.

`table_file_rows(path, error)` yields `(number, row)`: the CSV line a row starts on, the JSONL line, or the JSON
list element (from 1). `row` is a dict, or an `error` instance for one row that cannot be used (a JSONL line that is
not valid JSON, an element that is not an object): the caller leaves that row out and lists it, or raises it. A
problem with the file as a whole raises `error("PATH:LINE: what")`: an unsupported type, text that is not UTF-8, a
CSV field over `MAX_CSV_FIELD_CHARS`, a JSON file whose top level is not a list.

`read_utf8_text(path, error)` is a whole file's text, `read_json_file(path, error)` its parsed JSON;
`check_document_size(value, where, error)` refuses a parsed document of more than `MAX_DOCUMENT_VALUES` values
counted as code that walks it meets them (a YAML "billion laughs" is a few hundred bytes whose aliases expand to
10^9 values).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dataset_script.record_stream import JsonArrayRecords, looks_like_json_array

TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")
# Python's csv default (128 KiB) refuses long free-text columns such as whole reports; larger is a broken file.
MAX_CSV_FIELD_CHARS = 16 * 2**20
MAX_DOCUMENT_VALUES = 1_000_000


def table_file_rows(path, error=ValueError):
    """(number, dict or `error` instance) per row of a CSV / JSONL / JSON-list file (module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path, error)
    elif suffix in (".jsonl", ".ndjson"):
        for number, text in _utf8_lines(path, error):
            if text.strip():
                yield number, _json_object(text, f"{path}:{number}", error)
    elif suffix == ".json":
        if not looks_like_json_array(path):
            raise error(f"{path}: expected a JSON list of rows")
        for number, value in enumerate(JsonArrayRecords(path, error=error), 1):
            yield number, (value if isinstance(value, dict) else
                           error(f"{path}:{number}: expected an object, got {type(value).__name__}"))
    else:
        raise error(f"{path}: unsupported table type {suffix!r}; use {', '.join(TABLE_SUFFIXES)}")


def _utf8_lines(path: Path, error):
    """(line number, text) of each line, decoded one line at a time so that bad bytes are named by their line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as problem:
                raise error(f"{path}:{number}: not UTF-8 text (byte {problem.start} of the line: "
                            f"{raw[problem.start:problem.start + 1]!r}); re-save the file as UTF-8") from None


def _csv_rows(path: Path, error):
    lines = _utf8_lines(path, error)
    reader = csv.reader(text for _, text in lines)
    if csv.field_size_limit() < MAX_CSV_FIELD_CHARS:
        csv.field_size_limit(MAX_CSV_FIELD_CHARS)
    header, start = None, 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as problem:
            raise error(f"{path}:{start}: not a readable CSV row ({problem})") from None
        if header is None:
            header = cells or None  # blank lines before the header are skipped
        elif any(cell.strip() for cell in cells):  # a row of empty cells says nothing
            row = dict(zip(header, cells + [None] * (len(header) - len(cells))))
            if len(cells) > len(header):
                row[None] = cells[len(header):]  # as csv.DictReader keeps cells beyond the header
            yield start, row
        start = reader.line_num + 1


def _json_object(text: str, where: str, error):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as problem:
        return error(f"{where}: not valid JSON ({problem.msg})")
    except RecursionError:
        return error(f"{where}: JSON nested too deeply to read")
    return value if isinstance(value, dict) else error(f"{where}: expected an object, got {type(value).__name__}")


def read_utf8_text(path, error=ValueError) -> str:
    """The file's text (a leading byte-order mark dropped); a file that cannot be read, or text that is not UTF-8,
    raises `error` naming the file (and the first bad byte)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as problem:
        raise error(f"{path}: cannot be read ({problem.strerror or problem})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start}: {data[problem.start:problem.start + 1]!r}); "
                    "re-save it as UTF-8") from None


def read_json_file(path, error=ValueError):
    """The parsed JSON of a file; a file that cannot be read, is not UTF-8, is not JSON or is nested too deeply to
    parse raises `error("PATH: why")`, one line."""
    text = read_utf8_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to read") from None


def check_document_size(value, where, error=ValueError, limit: int = MAX_DOCUMENT_VALUES) -> None:
    """Raise `error` when `value` (parsed YAML / JSON) holds more than `limit` values, each shared (aliased) part
    counted every time it occurs, as code that walks or prints the document meets it."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        count += 1
        if count > limit:
            raise error(f"{where}: the document expands to more than {limit:,} values (YAML anchors and aliases "
                        "repeated inside each other?); write it out plainly")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
