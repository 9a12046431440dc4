"""Annotate parsed report rows with the rules or an LLM backend: records plus the reports that were skipped."""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from dataset_script.annotate.llm import LLMAnnotator, LLMError
from dataset_script.annotate.records import RecordJournal, make_record, validate_record
from dataset_script.annotate.rules import annotate_report


def make_llm_annotator(args: argparse.Namespace):
    if not args.base_url or not args.model:
        raise ValueError("the llm backend needs --base-url and --model")
    return LLMAnnotator(
        args.base_url, args.model, os.environ.get(args.api_key_env),
        cache_dir=None if str(args.cache_dir).lower() == "none" else args.cache_dir,
        max_retries=args.max_retries, timeout_s=args.timeout, requests_per_minute=args.requests_per_minute,
        price_per_1k_prompt=args.price_prompt, price_per_1k_completion=args.price_completion,
    )



def annotate_rows(rows, backend: str, args: argparse.Namespace, *, strict: bool, progress: bool = True,
                  journal: RecordJournal | None = None):
    """(records, skipped, llm totals or None) for report rows. With a `journal`, each finished record is appended
    to it at once, and rows it already holds are taken from it instead of being annotated again."""
    llm = make_llm_annotator(args) if backend == "llm" else None
    records, skipped = [], []
    bar = tqdm(rows, desc=f"annotate ({backend})", unit="report", disable=not progress, file=sys.stderr)
    for row in bar:
        finished = journal.finished(row) if journal is not None else None
        if finished is not None:
            records.append(finished)
            continue
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
            if strict or not isinstance(error, (ValueError, LLMError)):
                raise
            skipped.append({"source": row.source, "patient_id": row.patient_id, "reason": str(error)})
            continue
        if journal is not None:
            journal.add(record)
        records.append(record)
    return records, skipped, (llm.totals if llm else None)
