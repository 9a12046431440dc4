"""`stepcot annotate-eval`: the command line over `trainers.evaluation.annotation_agreement`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import json
import sys
from pathlib import Path

from trainers.commands.annotate import add_llm_arguments

HELP = "score report annotation against IU X-Ray MeSH codes"
EXAMPLES = [
    "stepcot annotate-eval --reports ../shared/data/iu-xray-reports/reports.jsonl --bootstrap 200",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", required=True,
                        help="IU X-Ray reports JSONL with 'uid', 'findings', 'impression', 'mesh_major' "
                             "(e.g. ../shared/data/iu-xray-reports/reports.jsonl)")
    parser.add_argument("--backend", choices=("rules", "llm"), default="rules")
    parser.add_argument("--annotations", help="score these records (a data.json list keyed by patient_id = uid) "
                                              "instead of annotating the reports")
    parser.add_argument("--min-class-count", type=int, default=20,
                        help="diagnosis macro-F1 covers classes with at least this many reference reports "
                             "(default: %(default)s)")
    parser.add_argument("--num-bootstrap", "--bootstrap", dest="bootstrap", type=int, default=1000,
                        help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="write the full results (per-class scores, intervals) to this JSON file")
    add_llm_arguments(parser)


def _chains_from_annotations(path: str, uids: list[str]) -> dict[str, list[dict]]:
    from dataset_script.annotate.records import validate_record
    from dataset_script.user_files import read_json_file  # numpy: not at `--help` time

    records = read_json_file(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    chains = {}
    for index, record in enumerate(records):
        validate_record(record, f"{path} record {index}")
        chains[record["patient_id"]] = record["vqa_chain"]
    missing = [uid for uid in uids if uid not in chains]
    if missing:
        raise ValueError(f"{path}: no record for {len(missing)} report(s), e.g. {missing[:5]}")
    return chains


def run(args: argparse.Namespace) -> int:
    from dataset_script.annotate.mesh import UnknownMeshCode, parse_mesh
    from trainers.evaluation.annotation_agreement import evaluate, format_results, load_reference, to_jsonable

    try:
        reports = load_reference(Path(args.reports))
        # A MeSH head the mapping does not cover leaves its report out of the score (listed), never aborts.
        unknown_codes, unmapped = {}, set()
        for report in reports:
            try:
                parse_mesh(report["uid"], report["mesh_major"])
            except UnknownMeshCode as error:
                unmapped.add(report["uid"])
                unknown_codes.setdefault(error.code, []).append(report["uid"])
        # Scored: reports with MeSH codes (not "No Indexing") and some report text to annotate.
        indexed = [r for r in reports if r["uid"] not in unmapped and parse_mesh(r["uid"], r["mesh_major"]).indexed]
        no_text = [r["uid"] for r in indexed if not (r.get("findings") or "").strip()
                   and not (r.get("impression") or "").strip()]
        indexed = [r for r in indexed if r["uid"] not in set(no_text)]
        uids = [r["uid"] for r in indexed]
        if args.annotations:
            chains = _chains_from_annotations(args.annotations, uids)
        else:
            from dataset_script.annotate.annotator import annotate_rows
            from dataset_script.annotate.records import ReportRow

            rows = [ReportRow(r["uid"], r.get("findings") or "", r.get("impression") or "",
                              (r.get("images") or [r["uid"]])[0], "IU X-Ray",
                              f"{args.reports} uid {r['uid']}") for r in indexed]
            records, _, totals = annotate_rows(rows, args.backend, args, strict=True,
                                               progress=not args.no_progress)
            chains = {record["patient_id"]: record["vqa_chain"] for record in records}
            if totals is not None:
                print(f"llm: {totals.summary()}", file=sys.stderr)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"stepcot annotate-eval: {error}", file=sys.stderr)
        return 1
    results = evaluate(indexed, chains, min_class_count=args.min_class_count, num_bootstrap=args.bootstrap,
                       seed=args.seed)
    print(f"{len(reports)} reports; scored {len(indexed)} (left out: "
          f"{len(reports) - len(indexed) - len(no_text) - len(unmapped)} 'No Indexing', {len(unmapped)} with a MeSH "
          f"code the mapping does not cover, {len(no_text)} without findings or "
          f"impression text: {', '.join(no_text) or '-'}); backend "
          f"{'annotations file' if args.annotations else args.backend}; 95% bootstrap CIs ({args.bootstrap} "
          "resamples)")
    if unknown_codes:
        print(f"MeSH codes the mapping does not cover ({len(unknown_codes)}; their {len(unmapped)} reports are left "
              "out of the score; add them to dataset_script/annotate/mesh.py):")
        for code, uids in sorted(unknown_codes.items()):
            print(f"  {code!r}: {len(uids)} report(s), e.g. {', '.join(uids[:3])}")
    print(format_results(results, args.min_class_count))
    if args.out:
        Path(args.out).write_text(json.dumps({"reports": str(args.reports), "min_class_count": args.min_class_count,
                                              "bootstrap": args.bootstrap, "seed": args.seed,
                                              "unknown_mesh_codes": unknown_codes,
                                              "results": to_jsonable(results)}, indent=1) + "\n", encoding="utf-8")
    return 0
