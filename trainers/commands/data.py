"""`stepcot data ...`: build, validate and publish Step-CoT datasets, render the synthetic demo.

    stepcot data demo --out demo_release --n 1200 [--difficulty hard]
    stepcot data validate --source demo_release
    stepcot data build --source demo_release --out step_cot_hub      # then load_dataset("step_cot_hub")
    stepcot data push step_cot_hub --repo fl-15o/Step-CoT
"""

import argparse
import json
import sys

HELP = "build, validate, publish Step-CoT datasets and render the synthetic demo"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="data_command", metavar="{build,demo,push,validate}", required=True)

    build = commands.add_parser("build", help="release folder -> Parquet shards + dataset card (Hub layout)")
    build.add_argument("--source", required=True, help="release folder (data.json, split xlsx files, images/)")
    build.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True,
                       help="output folder; `load_dataset(DIR)` reads it")
    build.add_argument("--lenient", action="store_true",
                       help="skip bad records and list them in OUT/validation_report.json "
                            "(default: stop at the first)")
    build.add_argument("--seed", type=int, default=0, help="seed of the split when the release has no split files")
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
    from dataset_script.release import StepCoTDataError

    try:
        return _COMMANDS[args.data_command](args)
    except (StepCoTDataError, FileNotFoundError) as error:
        print(f"stepcot data {args.data_command}: error: {error}", file=sys.stderr)
        return 1


def _build(args) -> int:
    from dataset_script.hub import build_hub_dataset

    summary = build_hub_dataset(args.source, args.out, strict=not args.lenient, seed=args.seed,
                                max_shard_bytes=args.max_shard_mb * 2**20)
    print(json.dumps(summary, indent=2))
    if summary["records_skipped"]:
        print(f"{summary['records_skipped']} records skipped: see {summary['report']}", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from dataset_script.demo import write_demo_release

    summary = write_demo_release(args.out, n=args.n, seed=args.seed, image_size=args.image_size, workers=args.workers,
                                 difficulty=args.difficulty)
    print(f"wrote {summary['records']} synthetic records to {summary['out_dir']} in {summary['seconds']:.1f} s")
    return 0


def _push(args) -> int:
    from dataset_script.hub import push_to_hub

    commit = push_to_hub(args.folder, args.repo, private=not args.public, token=args.token,
                         commit_message=args.message)
    print(f"pushed {args.folder} to https://huggingface.co/datasets/{args.repo} ({commit})")
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


_COMMANDS = {"build": _build, "demo": _demo, "push": _push, "validate": _validate}
