"""The `stepcot` subcommands: one thin module each, exposing `HELP` and either `add_arguments(parser)` + `run(args)`
or `main(argv)` (the training scripts parse their own arguments with HfArgumentParser).

Command modules import their library inside their functions (start-up time): building this registry, and so
`stepcot --help`, then imports no torch."""

from trainers.commands import (
    annotate,
    annotate_eval,
    baseline,
    bench_ablations,
    bench_efficiency,
    data,
    demo,
    eval_model,
    eval_transfer,
    info,
    predict,
    report,
    train,
    train_teacher,
)

COMMANDS = {
    "info": info,
    "data": data,
    "annotate": annotate,
    "annotate-eval": annotate_eval,
    "train": train,
    "train-teacher": train_teacher,
    "report": report,
    "eval": eval_model,
    "predict": predict,
    "demo": demo,
    "baseline": baseline,
    "eval-transfer": eval_transfer,
    "bench-ablations": bench_ablations,
    "bench-efficiency": bench_efficiency,
}
