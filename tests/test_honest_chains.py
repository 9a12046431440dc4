"""Chains that do not mislead: untrained steps are unknown, the consistent repair keeps confident
answers, images far from the training data are flagged; and the honest baselines and intervals behind the figures
(Wilson intervals, majority class, linear probe)."""

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_student
from transformers import pipeline

import modeling_stepcot  # noqa: F401  (registers the task)
from modeling_stepcot.chain_stepcot import ChainChecker
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS, StepCoTStudentConfig
from modeling_stepcot.ood_stepcot import embedding_statistics
from modeling_stepcot.pipeline_stepcot import TASK
from trainers.evaluation.linear_probe import baseline_scores, majority_scores
from trainers.evaluation.metrics import compute_step_metrics, wilson_interval
from trainers.evaluation.report import markdown_table
from trainers.inference.predict import format_table

DIAGNOSIS_ONLY = [0, 0, 0, 0, 0, 0, 336]


def _image(seed=0, size=40):
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _log_probs(**answers):
    """Per-step log-probabilities: uniform, except the steps given as {step name: (option, probability)}."""
    result = []
    for name, options in zip(DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS):
        probabilities = np.full(len(options), 1.0 / len(options))
        if name in answers:
            option, p = answers[name]
            probabilities = np.full(len(options), (1 - p) / (len(options) - 1))
            probabilities[options.index(option)] = p
        result.append(np.log(probabilities))
    return result


def _kermany_like(diagnosis_probability):
    """Pneumonia at `diagnosis_probability`; every other step answers "nothing found" at 0.9."""
    nothing = {name: ("N/A", 0.9) for name in DEFAULT_STEP_NAMES[1:6]}
    nothing.update({"Detection": ("No abnormality", 0.9), "Secondary effects": ("None", 0.9)})
    return _log_probs(Diagnosis=("Pneumonia", diagnosis_probability), **nothing)


# -- untrained steps -------------------------------------------------------------------------------------------


def test_config_records_training_counts_and_validates_them():
    config = StepCoTStudentConfig(step_training_counts=DIAGNOSIS_ONLY)
    assert config.trained_steps == [False] * 6 + [True]
    assert StepCoTStudentConfig().trained_steps == [True] * 7  # not recorded: every step counts as trained
    reloaded = StepCoTStudentConfig.from_dict(config.to_dict())
    assert reloaded.step_training_counts == DIAGNOSIS_ONLY
    with pytest.raises(Exception, match="step_training_counts"):  # huggingface_hub's strict-dataclass error
        StepCoTStudentConfig(step_training_counts=[1, 2])


def test_rules_that_involve_an_untrained_step_are_left_out():
    # A Pneumonia diagnosis with untrained steps answering "No abnormality / N/A / None" is what flipped
    # correct Kermany diagnoses to Normal: with those steps untrained, no rule may fire.
    labels = [0, 3, 5, 6, 4, 0, DEFAULT_STEP_OPTIONS[6].index("Pneumonia")]
    everything = ChainChecker(DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS)
    assert "diagnosis-without-findings" in {v["rule"] for v in everything.violations(labels)}
    diagnosis_only = ChainChecker.from_config(StepCoTStudentConfig(step_training_counts=DIAGNOSIS_ONLY))
    assert diagnosis_only.rules == [] and diagnosis_only.violations(labels) == []
    log_probs = _kermany_like(0.7)
    assert everything.most_probable_consistent(log_probs)[0][6] != labels[6]  # the unconstrained search changes it
    assert diagnosis_only.repair(log_probs)["labels"][6] == labels[6]


def test_repair_keeps_confident_steps_and_changes_uncertain_ones():
    checker = ChainChecker(DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS)
    pneumonia = DEFAULT_STEP_OPTIONS[6].index("Pneumonia")
    # Confident diagnosis and location/secondary, uncertain detection: the unconstrained MAP flips the diagnosis.
    log_probs = _log_probs(Detection=("No abnormality", 0.55), Diagnosis=("Pneumonia", 0.92),
                           **{"Anatomical location": ("N/A", 0.99), "Secondary effects": ("None", 0.99)})
    unconstrained, _ = checker.most_probable_consistent(log_probs)
    assert unconstrained[6] != pneumonia
    repaired = checker.repair(log_probs)
    assert repaired["labels"][6] == pneumonia  # the confident diagnosis is never traded away
    assert repaired["unresolved"] or checker.is_consistent(repaired["labels"])
    # An uncertain diagnosis against confident (trained) normal findings may be repaired.
    repaired = checker.repair(_kermany_like(0.5))
    assert repaired["changed"] == [6] and checker.is_consistent(repaired["labels"])
    assert checker.repair(_kermany_like(0.95))["changed"] == []  # confident on both sides: left as it is
    # A consistent chain is returned unchanged.
    raw = [int(np.argmax(lp)) for lp in _log_probs(Detection=("No abnormality", 0.9))]
    if checker.is_consistent(raw):
        assert checker.repair(_log_probs(Detection=("No abnormality", 0.9)))["changed"] == []


@pytest.fixture(scope="module")
def diagnosis_only_student(tmp_path_factory):
    model = tiny_student(seed=7, step_training_counts=DIAGNOSIS_ONLY)
    with torch.no_grad():  # a confident raw chain that breaks rules through the (untrained) first steps
        model.step_heads[0].bias.fill_(0).data[0] = 30.0  # Detection: No abnormality
        model.step_heads[6].bias.fill_(0).data[5] = 30.0  # Diagnosis: Pneumonia
    folder = tmp_path_factory.mktemp("diagnosis_only")
    model.save_pretrained(folder)
    return folder


def test_pipeline_and_predict_show_untrained_steps_as_unknown(diagnosis_only_student):
    vqa = pipeline(TASK, model=str(diagnosis_only_student), device="cpu")
    result = vqa(_image(), consistent=True)
    untrained = [s for s in result["steps"] if not s["trained"]]
    assert [s["name"] for s in untrained] == DEFAULT_STEP_NAMES[:6] == result["untrained_steps"]
    assert all(s["answer"] is None and s["probabilities"] is None and s["score"] is None for s in untrained)
    assert result["chain"] == "Diagnosis: Pneumonia" == result["consistent_chain"]
    assert result["violations"] == [] and result["changed_steps"] == []
    table = format_table("x.png", result, "student")
    assert "No abnormality" not in table and table.count("unknown (not trained)") == 6
    assert "Not trained" in table and "Contradictions: not checked" in table


def test_model_card_lists_training_labels_per_step():
    from trainers.model_export.model_card import _steps_table

    table = _steps_table(StepCoTStudentConfig(step_training_counts=DIAGNOSIS_ONLY))
    assert table.count("none: not trained") == 6 and "| 336 |" in table and "Untrained steps" in table


# -- out of distribution -----------------------------------------------------------------------------------------


def test_pipeline_reports_out_of_distribution(tmp_path):
    model = tiny_student(seed=8)
    processor_embeds = []
    from modeling_stepcot.processing_stepcot import image_processor_for_config, image_to_rgb

    processor = image_processor_for_config(model.config)
    for seed in range(12):  # "training" images: low-contrast noise around mid grey
        image = (128 + np.random.default_rng(seed).normal(0, 5, (40, 40))).clip(0, 255).astype(np.uint8)
        pixels = processor(image_to_rgb(image, model.config.image_size), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            processor_embeds.append(model.encode_images(pixels)[0].numpy())
    embeds = np.stack(processor_embeds)
    model.config.embedding_statistics = embedding_statistics(embeds[:8], embeds[8:])
    model.save_pretrained(tmp_path)
    vqa = pipeline(TASK, model=str(tmp_path), device="cpu")
    similar = (128 + np.random.default_rng(99).normal(0, 5, (40, 40))).clip(0, 255).astype(np.uint8)
    far = np.zeros((40, 40), dtype=np.uint8)
    far[:, :20] = 255
    results = vqa([similar, far], batch_size=2)
    assert all(set(r["out_of_distribution"]) >= {"distance", "threshold", "flagged"} for r in results)
    assert results[1]["out_of_distribution"]["distance"] > results[0]["out_of_distribution"]["distance"]
    assert results[1]["out_of_distribution"]["flagged"]
    assert "!! UNRELIABLE" in format_table("far.png", results[1], "student")
    assert "out_of_distribution" not in pipeline(TASK, model=tiny_student(seed=8), device="cpu")(similar)


# -- intervals and baselines -------------------------------------------------------------------------------------


def test_wilson_interval_known_values_and_edges():
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(1.96 ** 2 / (10 + 1.96 ** 2), abs=1e-3)  # 0.2775
    low, high = wilson_interval(10, 10)
    assert high == 1 and low == pytest.approx(1 - 0.2775, abs=1e-3)
    low, high = wilson_interval(66, 72)  # 91.7 %: about [83.0, 96.1]
    assert low == pytest.approx(0.830, abs=2e-3) and high == pytest.approx(0.961, abs=2e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_all_correct_step_gets_a_wilson_interval_and_a_zero_width_note():
    labels = np.array([[0], [1], [0], [1], [1]])
    scores = [np.eye(2)[labels[:, 0]] * 0.9 + 0.05]
    result = compute_step_metrics(scores, labels, scores="probabilities", num_bootstrap=100)
    accuracy = result.steps[0].metrics["accuracy"]
    assert accuracy.value == 1 and accuracy.ci_low == accuracy.ci_high == 1  # the bootstrap collapses
    assert accuracy.wilson_low < 0.6 and accuracy.wilson_high == 1
    assert result.to_dict()["steps"][0]["metrics"]["accuracy"]["wilson_ci_low"] == accuracy.wilson_low
    table = markdown_table([("Model", result)])
    assert "(zero width)" in table and "Wilson interval" in table and "Few labelled examples" in table


def test_majority_and_linear_probe_baselines():
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 3, n)
        embeds = rng.normal(size=(n, 12)) + 2.5 * np.eye(3, 12)[labels]
        return embeds, np.stack([np.full(n, -100), labels], 1)

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = split(300), split(90), split(90)
    scores = baseline_scores(train_x, train_y, val_x, val_y, test_x, [4, 3])
    probe, info = scores["Linear probe"]
    majority, _ = scores["Majority"]
    probe_accuracy = np.mean(probe[1].argmax(1) == test_y[:, 1])
    majority_accuracy = np.mean(majority[1].argmax(1) == test_y[:, 1])
    assert probe_accuracy > majority_accuracy + 0.3
    assert info["chosen_c"][0] is None and info["chosen_c"][1] in info["c_grid"]
    assert np.allclose(probe[0], 0.25)  # a step without training labels gets no probe
    assert np.allclose(majority_scores(np.array([[0], [1], [1]]), 2, [2])[0], [[1 / 3, 2 / 3]] * 2)
