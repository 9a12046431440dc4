"""`stepcot annotate`: radiology reports (JSONL / CSV / JSON list) -> Step-CoT records (a `data.json` list).

The library is imported inside `run`, not at the top: `stepcot --help` then imports no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "turn radiology reports into seven-step Step-CoT records"
EXAMPLES = [
    "stepcot annotate --reports ../shared/data/iu-xray-reports/reports.jsonl --out records.json --limit 50",
]



DEFAULT_CACHE_DIR = Path.home() / ".cache" / "stepcot" / "annotate"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `llm` backend (shared with `stepcot annotate-eval`)."""
    group = parser.add_argument_group("llm backend (any OpenAI-compatible chat endpoint)")
    group.add_argument("--base-url", help="endpoint root, e.g. https://api.deepseek.com/v1 or http://127.0.0.1:8000/v1")
    group.add_argument("--model", help="model name sent to the endpoint, e.g. deepseek-reasoner")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the API key (default: %(default)s; may be unset for "
                            "local servers)")
    group.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                       help="on-disk cache of validated replies (default: %(default)s); 'none' disables it")
    group.add_argument("--max-retries", type=int, default=3, help="retries per report (default: %(default)s)")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")
    group.add_argument("--requests-per-minute", type=float, default=60.0,
                       help="rate limit; 0 = unlimited (default: %(default)s)")
    group.add_argument("--tokens-per-minute", type=float, default=0.0,
                       help="token rate limit (prompt + completion); 0 = unlimited (default: %(default)s)")
    group.add_argument("--concurrency", type=_positive_int, default=8,
                       help="requests in flight at once, sharing the rate limits and honouring Retry-After "
                            "(default: %(default)s; 1 = one at a time)")
    group.add_argument("--max-reply-bytes", type=_positive_int, default=1_000_000,
                       help="largest reply body read; a larger one fails that report (default: %(default)s)")
    group.add_argument("--on-disagreement", choices=("hold", "mark", "keep"), default="hold",
                       help="an LLM chain the offline rule extractor contradicts on detection or diagnosis: hold it "
                            "back (written to OUT.held.jsonl for review), mark it (an 'annotation_check' field) or "
                            "keep it; counted in the summary either way (default: %(default)s)")
    group.add_argument("--price-prompt", type=float, default=0.0, help="cost per 1,000 prompt tokens")
    group.add_argument("--price-completion", type=float, default=0.0, help="cost per 1,000 completion tokens")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", required=True,
                        help="reports file: .jsonl, .json (list) or .csv with an id (patient_id / uid / id), "
                             "'findings' and 'impression' (or 'report'), optional 'image_path' and 'origin'")
    parser.add_argument("--out", required=True, help="output records file (a data.json-style JSON list)")
    parser.add_argument("--backend", choices=("rules", "llm"), default="rules",
                        help="rules: offline, negation/uncertainty-aware extraction (default); llm: chat endpoint")
    parser.add_argument("--origin", default="unknown", help="'origin' of records whose input row has none")
    parser.add_argument("--image-path-template",
                        help="image_path of rows without one, e.g. 'images/{patient_id}.png' (records need an image)")
    parser.add_argument("--lenient", action="store_true",
                        help="skip bad reports (written to OUT.skipped.jsonl) instead of stopping at the first")
    parser.add_argument("--limit", type=int, help="annotate only the first N reports")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_llm_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from dataset_script.annotate.annotator import annotate_rows
    from dataset_script.annotate.records import RecordJournal, ReportError, read_reports, write_records

    strict = not args.lenient
    journal = None
    try:
        read = read_reports(args.reports, strict=strict, default_origin=args.origin,
                            image_path_template=args.image_path_template)
        rows = read.rows[: args.limit] if args.limit else read.rows
        journal = RecordJournal(args.out, {
            "reports": str(Path(args.reports).resolve()), "backend": args.backend, "origin": args.origin,
            "image_path_template": args.image_path_template,
            "model": args.model if args.backend == "llm" else None,
            "base_url": args.base_url if args.backend == "llm" else None})
        resumed = len(journal.records)
        if resumed:
            print(f"resuming: {resumed} finished records from {journal.path}", file=sys.stderr)
        records, skipped, totals = annotate_rows(rows, args.backend, args, strict=strict,
                                                 progress=not args.no_progress, journal=journal)
    except (ReportError, ValueError, RuntimeError) as error:  # RuntimeError: LLMError in strict mode
        print(f"stepcot annotate: {error}{_kept(journal)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stepcot annotate: interrupted{_kept(journal)}", file=sys.stderr)
        return 130
    write_records(records, args.out)
    journal.remove()
    held = [item for item in skipped if item.get("held")]
    skipped = read.skipped + [item for item in skipped if not item.get("held")]
    message = f"wrote {len(records)} records to {args.out}"
    if held:
        held_path = Path(str(args.out) + ".held.jsonl")
        held_path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in held),
                             encoding="utf-8")
        message += (f"; held back {len(held)} whose LLM chain the rule extractor contradicts on detection or "
                    f"diagnosis (in {held_path}, for review)")
    if skipped:
        skipped_path = Path(str(args.out) + ".skipped.jsonl")
        skipped_path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in skipped),
                                encoding="utf-8")
        message += f"; skipped {len(skipped)} (reasons in {skipped_path})"
    print(message, file=sys.stderr)
    if totals is not None:
        print(f"llm: {totals.summary()}", file=sys.stderr)
    return 0


def _kept(journal) -> str:
    """What an interrupted or failed run leaves for the next one."""
    if journal is None or not journal.records:
        return ""
    return (f"; {len(journal.records)} finished records kept in {journal.path}: rerun the same command to resume "
            "without annotating them again")
