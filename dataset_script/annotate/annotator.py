"""Annotate parsed report rows with the rules or an LLM backend: records plus the reports that were skipped.

The LLM backend runs `--concurrency` requests at once (threads sharing one annotator: its rate limiter, deadline,
retries and cache). Records come back in input order whatever order the replies arrive in, and each finished record
is journaled as soon as it is done, so a killed run resumes without a repeated or lost record. Each LLM chain is
checked against the offline rule extractor: where they disagree on detection (abnormality or not) or diagnosis,
the record is held back, marked, or kept (`--on-disagreement`), and counted in the summary."""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from tqdm import tqdm

from dataset_script.annotate.llm import DEFAULT_MAX_REPLY_BYTES, LLMAnnotator, LLMError
from dataset_script.annotate.records import RecordJournal, make_record, validate_record
from dataset_script.annotate.rules import annotate_report
from modeling_stepcot.configuration_stepcot import DETECTION, DIAGNOSIS, NA_OPTION, NO_ANSWER

NO_ABNORMALITY = "No abnormality"
DISAGREEMENT_POLICIES = ("hold", "mark", "keep")


def make_llm_annotator(args: argparse.Namespace):
    if not args.base_url or not args.model:
        raise ValueError("the llm backend needs --base-url and --model")
    return LLMAnnotator(
        args.base_url, args.model, os.environ.get(args.api_key_env),
        cache_dir=None if str(args.cache_dir).lower() == "none" else args.cache_dir,
        max_retries=args.max_retries, timeout_s=args.timeout, requests_per_minute=args.requests_per_minute,
        price_per_1k_prompt=args.price_prompt, price_per_1k_completion=args.price_completion,
        tokens_per_minute=getattr(args, "tokens_per_minute", 0.0),
        max_reply_bytes=getattr(args, "max_reply_bytes", DEFAULT_MAX_REPLY_BYTES),
    )


def rule_disagreements(row, chain: list[dict]) -> list[str]:
    """Where the offline rule extractor contradicts `chain` on detection (abnormality found or not) or diagnosis;
    only steps the rules answer definitely (not "No Answer" / "N/A") count."""
    rules = annotate_report(row.findings, row.impression)
    found = []
    rule_detection, llm_detection = rules[DETECTION]["answer"], chain[DETECTION]["answer"]
    if rule_detection not in (NO_ANSWER, NA_OPTION) and (
            (rule_detection == NO_ABNORMALITY) != (llm_detection == NO_ABNORMALITY)):
        found.append(f"detection: LLM {llm_detection!r}, rules {rule_detection!r}")
    rule_diagnosis, llm_diagnosis = rules[DIAGNOSIS]["answer"], chain[DIAGNOSIS]["answer"]
    if rule_diagnosis not in (NO_ANSWER, NA_OPTION) and rule_diagnosis != llm_diagnosis:
        found.append(f"diagnosis: LLM {llm_diagnosis!r}, rules {rule_diagnosis!r}")
    return found


def _annotate_one(row, llm, policy: str):
    """("record", record) or ("held", skipped entry) for one row; raises what the backend raises."""
    if llm is None:
        chain = annotate_report(row.findings, row.impression)
    else:
        chain = llm.annotate(row.text, where=f"{row.source} (id {row.patient_id})")
    record = make_record(row, chain)
    validate_record(record, row.source)
    if llm is not None and policy != "keep":
        disagreements = rule_disagreements(row, chain)
        if disagreements:
            with llm._totals_lock:
                llm.totals.disagreements += 1
            if policy == "hold":
                return "held", {"source": row.source, "patient_id": row.patient_id, "held": True,
                                "reason": "held back: the LLM chain and the rule extractor disagree on "
                                          + "; ".join(disagreements), "record": record}
            record["annotation_check"] = {"rule_disagreements": disagreements}
    return "record", record


def annotate_rows(rows, backend: str, args: argparse.Namespace, *, strict: bool, progress: bool = True,
                  journal: RecordJournal | None = None):
    """(records, skipped, llm totals or None) for report rows, records in input order. With a `journal`, each
    finished record is appended to it at once, and rows it already holds are taken from it instead of being
    annotated again. Skipped entries with `"held": True` are chains held back by the rule cross-check."""
    llm = make_llm_annotator(args) if backend == "llm" else None
    policy = getattr(args, "on_disagreement", "hold")
    concurrency = max(1, int(getattr(args, "concurrency", 1) or 1)) if llm is not None else 1
    outcomes = [None] * len(rows)
    bar = tqdm(total=len(rows), desc=f"annotate ({backend})", unit="report", disable=not progress, file=sys.stderr)

    def settle(index, outcome, journaled=False):
        outcomes[index] = outcome
        if outcome[0] == "record" and journal is not None and not journaled:
            journal.add(outcome[1])
        bar.update(1)
        if llm is not None:
            bar.set_postfix_str(f"cost {llm.totals.cost:.4f}, {llm.totals.latency_s:.0f} s, "
                                f"cached {llm.totals.cache_hits}", refresh=False)

    def failed(index, error):
        if strict or not isinstance(error, (ValueError, LLMError)):
            raise error
        settle(index, ("skipped", {"source": rows[index].source, "patient_id": rows[index].patient_id,
                                   "reason": str(error)}))

    pending = []
    for index, row in enumerate(rows):
        finished = journal.finished(row) if journal is not None else None
        if finished is not None:
            settle(index, ("record", finished), journaled=True)
        else:
            pending.append(index)
    try:
        if concurrency == 1:
            for index in pending:
                try:
                    outcome = _annotate_one(rows[index], llm, policy)
                except Exception as error:  # noqa: BLE001 - reported per report; strict mode re-raises
                    failed(index, error)
                    continue
                settle(index, outcome)
        else:
            _run_concurrently(pending, rows, llm, policy, concurrency, settle, failed)
    finally:
        bar.close()
    records = [outcome[1] for outcome in outcomes if outcome is not None and outcome[0] == "record"]
    skipped = [outcome[1] for outcome in outcomes if outcome is not None and outcome[0] != "record"]
    return records, skipped, (llm.totals if llm else None)


def _run_concurrently(pending, rows, llm, policy, concurrency, settle, failed):
    """Up to `concurrency` rows in flight (and as many queued); results settled by the calling thread, so the
    journal has one writer. A strict failure or an interrupt cancels what has not started."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="annotate")
    in_flight, queue = {}, iter(pending)
    try:
        while True:
            while len(in_flight) < 2 * concurrency:
                index = next(queue, None)
                if index is None:
                    break
                in_flight[pool.submit(_annotate_one, rows[index], llm, policy)] = index
            if not in_flight:
                return
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=in_flight.get):
                index = in_flight.pop(future)
                error = future.exception()
                if error is not None:
                    failed(index, error)
                else:
                    settle(index, future.result())
    finally:
        for future in in_flight:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
