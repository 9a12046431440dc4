"""`stepcot data ...`: build, validate and publish Step-CoT datasets, render the synthetic demo.

    stepcot data demo --output-dir demo_release --n 1200 [--difficulty hard]
    stepcot data validate --source demo_release
    stepcot data build --source demo_release --output-dir step_cot_hub      # then load_dataset("step_cot_hub")
    stepcot data build --source fl-15o/Step-CoT --output-dir step_cot_hub  # download the Hub release, unpack, build
    stepcot data push step_cot_hub --repo fl-15o/Step-CoT
    stepcot data import folders --source chest_xray/train --output-dir my_release --mapping labels.yaml
    stepcot data import table --source Data_Entry_2017.csv --images images/ --output-dir my_release --mapping nih.yaml
    stepcot data import reports --source reports.jsonl --output-dir my_release
"""

import argparse
import json
import sys

from trainers.console import print_command_error

HELP = "build, validate, publish Step-CoT datasets and render the synthetic demo"
EXAMPLES = [
    "stepcot data demo --output-dir demo_release --n 200 --image-size 128",
    "stepcot data validate --source demo_release",
    "stepcot data build --source demo_release --output-dir demo_hub",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="data_command", metavar="{build,demo,import,push,validate}", required=True)

    build = commands.add_parser("build", help="release folder -> Parquet shards + dataset card (Hub layout)")
    build.add_argument("--source", required=True,
                       help="release folder (data.json, split xlsx files, images/) or a Hub dataset id holding one "
                            "(downloaded, image archives unpacked)")
    build.add_argument("--revision", default=None,
                       help="Hub branch, tag or commit of a Hub --source (default main; the commit is pinned in the "
                            "built card)")
    build.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True,
                       help="output folder; `load_dataset(DIR)` reads it")
    build.add_argument("--lenient", action="store_true",
                       help="skip bad records and list them in OUT/validation_report.json "
                            "(default: stop at the first)")
    build.add_argument("--split-seed", "--seed", dest="seed", type=int, default=0,
                       help="seed of the split when the release has no split files")
    build.add_argument("--max-shard-mb", type=int, default=500, help="largest Parquet shard, in MiB of images")

    demo = commands.add_parser("demo", help="render the synthetic demo release (release layout)")
    demo.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, help="output release folder")
    demo.add_argument("--n", type=int, default=1200, help="number of records")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--image-size", type=int, default=224)
    demo.add_argument("--workers", type=int, default=1, help="rendering processes")
    demo.add_argument("--difficulty", choices=("easy", "hard"), default="easy",
                      help="easy (default): large high-contrast lesions; hard: subtle low-contrast lesions, "
                           "overlapping anatomy, more noise and 4%% label noise")

    imports = commands.add_parser(
        "import", help="your own images + labels or reports -> a release folder (data.json, images/, schema.json)",
        description="Layouts: 'folders' (ROOT/<label>/<image>, Kermany style), 'table' (CSV/JSONL with an image "
                    "and a labels column, NIH Data_Entry style 'A|B'), 'reports' (image + report pairs, annotated by "
                    "the rules annotator). A mapping file (JSON/YAML: labels -> step answers, optional own steps, "
                    "patient_id) says what labels mean; without one, the labels become the options of one "
                    "Diagnosis step. OUT/import_report.json lists what mapped and what was left out.")
    imports.add_argument("layout", choices=("folders", "table", "reports"))
    imports.add_argument("--source", required=True, help="class-folder root, table file, or reports file")
    imports.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, help="new release folder")
    imports.add_argument("--mapping", default=None, help="mapping file (.json / .yaml)")
    imports.add_argument("--images", default=None, help="folder the table's / reports' image paths are relative to "
                                                        "(default: the file's folder)")
    imports.add_argument("--patient-id", default=None,
                         help="grouping key: a column name, or a regex on the image file name (group 1), e.g. "
                              "'(person\\d+)'; overrides the mapping file's")
    imports.add_argument("--separator", default="|", help="between several labels in one cell (default '|')")
    imports.add_argument("--image-column", default=None, help="table column holding the image path")
    imports.add_argument("--label-column", default=None, help="table column holding the label(s)")
    imports.add_argument("--split", choices=("auto", "all", "none"), default="auto",
                         help="auto: `data build` splits 70/15/15 by patient (seeded); all (or none): the whole set "
                              "is one split, 'test', for scoring a labelled set with `stepcot eval`")
    imports.add_argument("--no-copy", action="store_true",
                         help="hard-link the images into OUT/images instead of copying them (a copy where the "
                              "file system cannot link); a release never points outside its folder")

    push = commands.add_parser("push", help="upload a built folder to a Hub dataset repo")
    push.add_argument("folder", help="folder made by `stepcot data build`")
    push.add_argument("--repo", default="fl-15o/Step-CoT", help="dataset repo id")
    push.add_argument("--public", action="store_true",
                      help="create the repo public (default private: Step-CoT states no license)")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.add_argument("--message", default=None, help="commit message")

    validate = commands.add_parser("validate", help="check a release folder and list every problem")
    validate.add_argument("--source", required=True, help="release folder")
    validate.add_argument("--report", default=None, help="write the JSON report here")
    validate.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from dataset_script.annotate.records import ReportError
    from dataset_script.records import StepCoTDataError

    try:
        return _COMMANDS[args.data_command](args)
    except (StepCoTDataError, ReportError, FileNotFoundError, HfHubHTTPError) as error:
        print_command_error(f"data {args.data_command}", error)
        return 1


def _build(args) -> int:
    from dataset_script.parquet_export import build_hub_dataset
    from dataset_script.release_download import build_from_hub, looks_like_hub_id

    if looks_like_hub_id(args.source):
        summary = build_from_hub(args.source, args.out, revision=args.revision, strict=not args.lenient,
                                 seed=args.seed)
    else:
        if args.revision is not None:
            raise FileNotFoundError(f"--revision applies to a Hub dataset id; {args.source} is a local folder")
        summary = build_hub_dataset(args.source, args.out, strict=not args.lenient, seed=args.seed,
                                    max_shard_bytes=args.max_shard_mb * 2**20)
    print(json.dumps(summary, indent=2))
    if summary["records_skipped"]:
        print(f"{summary['records_skipped']} records skipped: see {summary['report']}", file=sys.stderr)
    if summary["problems_reported"]:
        print(f"{summary['problems_reported']} other problems resolved leniently (leakage kept in one split, options "
              f"re-ordered, unreadable split files): see {summary['report']}", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from dataset_script.synthetic import write_demo_release

    summary = write_demo_release(args.out, n=args.n, seed=args.seed, image_size=args.image_size, workers=args.workers,
                                 difficulty=args.difficulty)
    print(f"wrote {summary['records']} synthetic records to {summary['out_dir']} in {summary['seconds']:.1f} s")
    return 0


def _import(args) -> int:
    from dataset_script import importers

    copy = not args.no_copy
    if args.layout == "folders":
        report = importers.import_folders(args.source, args.out, args.mapping, args.patient_id, copy, args.split)
    elif args.layout == "table":
        report = importers.import_table(args.source, args.out, args.mapping, args.images, args.separator,
                                        args.image_column, args.label_column, args.patient_id, copy, args.split)
    else:
        if args.mapping:
            raise FileNotFoundError("--mapping applies to labels (folders / table); reports go through the annotator")
        report = importers.import_reports(args.source, args.out, args.images, copy_images=copy, split=args.split)
    summary = {key: value for key, value in report.items() if key != "left_out_rows"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {report['records']} records to {args.out}; {report['left_out']} rows left out (listed in "
          f"{args.out}/{importers.IMPORT_REPORT}). Next: stepcot data build --source {args.out} --out DIR",
          file=sys.stderr)
    return 0


def _push(args) -> int:
    from dataset_script.parquet_export import push_to_hub

    commit = push_to_hub(args.folder, args.repo, private=not args.public, token=args.token,
                         commit_message=args.message)
    print(f"pushed {args.folder} to the dataset {args.repo}: {commit.commit_url}")
    return 0


def _validate(args) -> int:
    from dataset_script.release import StepCoTRelease

    release = StepCoTRelease(args.source, strict=False, seed=args.seed, report_path=args.report)
    print(release)
    for entry in release.report["skipped"]:
        for problem in entry["problems"]:
            print(f"  problem: {problem['text']}")
    for warning in release.report["warnings"]:
        print(f"  problem: {warning['text']}")
    for note in release.report["notes"]:
        print(f"  note: {note['text']}")
    return 1 if release.skipped or release.warnings else 0


_COMMANDS = {"build": _build, "demo": _demo, "import": _import, "push": _push, "validate": _validate}
