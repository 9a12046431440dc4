"""`stepcot annotate`: radiology reports (JSONL / CSV / JSON list) -> Step-CoT records (a `data.json` list)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .annotate_io import ReportError, make_record, read_reports, validate_record, write_records

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "stepcot" / "annotate"


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
    group.add_argument("--price-prompt", type=float, default=0.0, help="cost per 1,000 prompt tokens")
    group.add_argument("--price-completion", type=float, default=0.0, help="cost per 1,000 completion tokens")


def make_llm_annotator(args: argparse.Namespace):
    from .annotate_llm import LLMAnnotator

    if not args.base_url or not args.model:
        raise ValueError("the llm backend needs --base-url and --model")
    return LLMAnnotator(
        args.base_url, args.model, os.environ.get(args.api_key_env),
        cache_dir=None if str(args.cache_dir).lower() == "none" else args.cache_dir,
        max_retries=args.max_retries, timeout_s=args.timeout, requests_per_minute=args.requests_per_minute,
        price_per_1k_prompt=args.price_prompt, price_per_1k_completion=args.price_completion,
    )


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


def annotate_rows(rows, backend: str, args: argparse.Namespace, *, strict: bool, progress: bool = True):
    """(records, skipped, llm totals or None) for report rows."""
    from tqdm import tqdm

    from .annotate_rules import annotate_report

    llm = make_llm_annotator(args) if backend == "llm" else None
    records, skipped = [], []
    bar = tqdm(rows, desc=f"annotate ({backend})", unit="report", disable=not progress, file=sys.stderr)
    for row in bar:
        try:
            if llm is None:
                chain = annotate_report(row.findings, row.impression)
            else:
                chain = llm.annotate(row.text, where=f"{row.source} (id {row.patient_id})")
                bar.set_postfix_str(f"cost {llm.totals.cost:.4f}, {llm.totals.latency_s:.0f} s, "
                                    f"cached {llm.totals.cache_hits}", refresh=False)
            record = make_record(row, chain)
            validate_record(record, row.source)
        except Exception as error:  # noqa: BLE001 - reported per report; strict mode re-raises
            from .annotate_llm import LLMError

            if strict or not isinstance(error, (ValueError, LLMError)):
                raise
            skipped.append({"source": row.source, "patient_id": row.patient_id, "reason": str(error)})
            continue
        records.append(record)
    return records, skipped, (llm.totals if llm else None)


def run(args: argparse.Namespace) -> int:
    strict = not args.lenient
    try:
        read = read_reports(args.reports, strict=strict, default_origin=args.origin,
                            image_path_template=args.image_path_template)
        rows = read.rows[: args.limit] if args.limit else read.rows
        records, skipped, totals = annotate_rows(rows, args.backend, args, strict=strict,
                                                 progress=not args.no_progress)
    except (ReportError, ValueError) as error:
        print(f"stepcot annotate: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # LLMError in strict mode
        print(f"stepcot annotate: {error}", file=sys.stderr)
        return 1
    write_records(records, args.out)
    skipped = read.skipped + skipped
    message = f"wrote {len(records)} records to {args.out}"
    if skipped:
        skipped_path = Path(str(args.out) + ".skipped.jsonl")
        skipped_path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in skipped),
                                encoding="utf-8")
        message += f"; skipped {len(skipped)} (reasons in {skipped_path})"
    print(message, file=sys.stderr)
    if totals is not None:
        print(f"llm: {totals.summary()}", file=sys.stderr)
    return 0
