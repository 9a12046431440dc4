"""Hyper-parameter search of a distillation run (`stepcot train --hp_search_trials N`) with
`Trainer.hyperparameter_search(backend="optuna")`.

Each trial trains a fresh teacher/student pair (the run's, with its dropout rescaled) on the cached features of the
training split and is scored on the validation split only: the objective is the mean of the teacher's and the
student's best validation mean accuracy over steps, i.e. the score of the models the run keeps
(`BestModelExportCallback` keeps each model's best epoch by that metric). The test split never reaches the search.
The searched knobs are the two learning rates, the weight decay, label smoothing, a dropout scale (multiplies every
dropout rate of both heads) and the number of distillation epochs (an upper bound when the run stops early). The
sampler is optuna's TPE seeded with `--seed` (its first 10 trials are random), every trial trains in full (no
pruning) and starts from the same seed, so a search is reproducible. Budget: N trials, each at most one run's
training on the cached features (no image is encoded again), plus the final run with the best values.
"""

import contextlib
import copy
import dataclasses
import logging
import math
from pathlib import Path

from trainers.training.checkpoints import TrainingError

logger = logging.getLogger("stepcot.train")

MAX_DROPOUT = 0.9
# name -> (low, high, log scale); the epochs' range is relative to the run's --num_train_epochs
SEARCH_SPACE = {
    "teacher_learning_rate": (1e-5, 1e-3, True),
    "student_learning_rate": (3e-5, 3e-3, True),
    "weight_decay": (1e-4, 0.3, True),
    "label_smoothing_factor": (0.0, 0.2, False),
    "dropout_scale": (0.0, 1.5, False),
}
OBJECTIVE = "mean of the teacher's and the student's best validation mean accuracy over steps"


def require_optuna():
    try:
        import optuna
    except ImportError as error:
        raise TrainingError("--hp_search_trials needs optuna: pip install stepcot[search]") from error
    return optuna


def epoch_range(max_epochs: float) -> tuple[int, int]:
    high = max(1, math.ceil(max_epochs))
    return max(1, round(high / 4)), high


def suggest(trial, name: str):
    low, high, log = SEARCH_SPACE[name]
    return trial.suggest_float(name, low, high, log=log)


def search_space(trial, max_epochs: float) -> dict:
    """The `TrainingArguments` values of one trial (the dropout scale is the model's: `model_init` asks for it)."""
    values = {name: suggest(trial, name) for name in SEARCH_SPACE if name != "dropout_scale"}
    values["num_train_epochs"] = trial.suggest_int("num_train_epochs", *epoch_range(max_epochs))
    return values


def rescaled_pair(pair, scale: float):
    """A new pair with `pair`'s weights and freezing, and every dropout rate of both heads multiplied by `scale`
    (at most `MAX_DROPOUT`); its configs record the rates, so exported models do too."""
    config = copy.deepcopy(pair.config)
    for sub in (config.teacher_config, config.student_config):
        for name, value in sub.to_dict().items():
            if name.endswith("_dropout") and isinstance(value, float):
                setattr(sub, name, min(MAX_DROPOUT, value * scale))
    fresh = type(pair)(config)
    fresh.load_state_dict(pair.state_dict())
    fresh.teacher._apply_freezing()
    fresh.student._apply_freezing()
    fresh.teacher_relation_projection.requires_grad_(pair.teacher_relation_projection.weight.requires_grad)
    return fresh


class _TrialRecorder:
    """`model_init` and `compute_objective` of the search: a fresh pair per trial, and each trial's objective (the
    best validation accuracies seen so far in that trial), recorded with its values."""

    def __init__(self, pair, callbacks):
        self.pair, self.callbacks, self.trials = pair, callbacks, []
        self.best = {}

    def model_init(self, trial=None):
        scale = 1.0 if trial is None else suggest(trial, "dropout_scale")
        if trial is not None:
            self.best = {"teacher": -math.inf, "student": -math.inf}
            self.trials.append({"number": trial.number, "values": None, "objective": None})
            for callback in self.callbacks:  # early stopping starts over in every trial
                if hasattr(callback, "early_stopping_patience_counter"):
                    callback.early_stopping_patience_counter = 0
        return rescaled_pair(self.pair, scale)

    def compute_objective(self, metrics: dict) -> float:
        for role in self.best:
            value = metrics.get(f"eval_{role}_mean_accuracy")
            if value is not None:
                self.best[role] = max(self.best[role], value)
        objective = sum(self.best.values()) / len(self.best)
        if self.trials:
            self.trials[-1]["objective"] = objective
        return objective


def search_hyperparameters(trainer_class, pair, training_args, n_trials: int, *, train_dataset, eval_dataset,
                           data_collator, compute_metrics, callbacks, class_weights, quiet=None) -> dict:
    """Run `n_trials` trials (see the module docstring) and return the record: the searched space, every trial's
    values and objective, and the best trial (`best["values"]` are what the final run trains with)."""
    optuna = require_optuna()
    if training_args.world_size > 1:
        raise TrainingError("--hp_search_trials runs in one process: launch it without torchrun/accelerate")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search_args = dataclasses.replace(training_args, save_strategy="no", load_best_model_at_end=False,
                                      output_dir=str(training_args.output_dir) + "/hp_search")
    recorder = _TrialRecorder(pair, callbacks)
    trainer = trainer_class(model_init=recorder.model_init, args=search_args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, data_collator=data_collator, compute_metrics=compute_metrics,
                            callbacks=list(callbacks), class_weights=class_weights)
    if quiet is not None:
        quiet(trainer)
    max_epochs = training_args.num_train_epochs

    def hp_space(trial):
        values = search_space(trial, max_epochs)
        recorder.trials[-1]["values"] = dict(trial.params)  # `model_init` has asked for the dropout scale already
        logger.info("search trial %d: %s", trial.number, recorder.trials[-1]["values"])
        return values

    best_run = trainer.hyperparameter_search(
        hp_space=hp_space, compute_objective=recorder.compute_objective, n_trials=n_trials, direction="maximize",
        backend="optuna", sampler=optuna.samplers.TPESampler(seed=training_args.seed),
        pruner=optuna.pruners.NopPruner(),
    )
    with contextlib.suppress(OSError):  # the trials save nothing; the Trainer may have made the folder
        Path(search_args.output_dir).rmdir()
    best = {"number": int(best_run.run_id), "objective": best_run.objective, "values": dict(best_run.hyperparameters)}
    return {"trials_requested": n_trials, "objective": OBJECTIVE, "scored_on": "validation",
            "space": {**{name: list(bounds) for name, bounds in SEARCH_SPACE.items()},
                      "num_train_epochs": list(epoch_range(max_epochs))},
            "trials": recorder.trials, "best": best}


def apply_best(record: dict, pair, training_args):
    """The final run's pair and arguments with the best trial's values; returns the pair."""
    values = dict(record["best"]["values"])
    scale = values.pop("dropout_scale", 1.0)
    for name, value in values.items():
        setattr(training_args, name, type(getattr(training_args, name))(value))
    return rescaled_pair(pair, scale)


def search_table(record: dict) -> str:
    """Markdown: every trial's values and objective, the chosen one marked."""
    names = list(record["best"]["values"])
    lines = [f"### Hyper-parameter search ({len(record['trials'])} trials; objective: {record['objective']}, "
             f"scored on the validation split)", "",
             "| trial | " + " | ".join(names) + " | objective |", "|---" * (len(names) + 2) + "|"]
    for trial in record["trials"]:
        mark = " (chosen)" if trial["number"] == record["best"]["number"] else ""
        values = trial["values"] or {}
        cells = [f"{values[name]:.4g}" if name in values else "" for name in names]
        objective = "" if trial["objective"] is None else f"{trial['objective']:.4f}"
        lines.append(f"| {trial['number']}{mark} | " + " | ".join(cells) + f" | {objective} |")
    return "\n".join(lines)
