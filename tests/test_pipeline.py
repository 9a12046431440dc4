"""The stepcot-vqa pipeline on tiny models: output schema, batching, N/A, calibration, chain consistency and
consistent decoding, input errors, and loading the pipeline as remote code in a fresh process."""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_student, tiny_teacher
from transformers import pipeline

import modeling_stepcot  # noqa: F401  (registers the task)
from modeling_stepcot import NA_OPTION
from modeling_stepcot.chain_stepcot import DEFAULT_CHAIN_RULES, ChainChecker
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS
from modeling_stepcot.pipeline_stepcot import TASK, UNCALIBRATED
from trainers.evaluation.calibration import fit_calibration, fit_temperature
from trainers.inference.predict import add_pipeline_to_checkpoint

STEP_KEYS = {"step", "name", "question", "answer", "label", "score", "probabilities", "is_na"}


def _images(count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48 + 8 * i, 40), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module", params=["student", "teacher"])
def saved_model(request, tmp_path_factory):
    model = (tiny_student if request.param == "student" else tiny_teacher)(seed=3)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return folder


def test_output_schema_and_probabilities(saved_model):
    vqa = pipeline(TASK, model=str(saved_model), device="cpu")
    result = vqa(_images(1)[0])
    config = vqa.model.config
    assert [s["name"] for s in result["steps"]] == config.step_names
    for step, options in zip(result["steps"], config.step_options):
        assert STEP_KEYS <= set(step)
        assert list(step["probabilities"]) == options  # every option of that step, in order
        assert sum(step["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert step["answer"] == options[step["label"]]
        assert step["score"] == max(step["probabilities"].values())
        assert step["is_na"] == (step["answer"] == NA_OPTION)
    assert result["chain"] == " → ".join(f"{s['name']}: {s['answer']}" for s in result["steps"])
    assert result["probability_method"] == UNCALIBRATED
    assert result["image_size"] == (48, 40)
    assert "maps" not in result and "consistent_chain" not in result


def test_batch_equals_one_by_one(saved_model):
    vqa = pipeline(TASK, model=str(saved_model), device="cpu")
    images = _images(3) + [Image.fromarray(_images(1, seed=5)[0]).convert("RGB")]
    batched = vqa(images, batch_size=4, maps=True)
    assert isinstance(batched, list) and len(batched) == 4
    for image, result in zip(images, batched):
        single = vqa(image, maps=True)
        assert [s["label"] for s in single["steps"]] == [s["label"] for s in result["steps"]]
        for a, b in zip(single["steps"], result["steps"]):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
        np.testing.assert_allclose(single["maps"], result["maps"], atol=1e-4)


def test_matches_the_model_forward(saved_model):
    vqa = pipeline(TASK, model=str(saved_model), device="cpu")
    image = _images(1)[0]
    pixel_values = vqa.preprocess(image)["pixel_values"]
    with torch.no_grad():
        logits = vqa.model(pixel_values=pixel_values).step_logits
    result = vqa(image)
    for step, step_logits in zip(result["steps"], logits):
        expected = step_logits[0].softmax(-1).numpy()
        np.testing.assert_allclose(list(step["probabilities"].values()), expected, atol=1e-5)


def test_na_answers_are_reported_and_flagged(tmp_path):
    model = tiny_student(seed=1)
    distribution = DEFAULT_STEP_NAMES.index("Lesion distribution")
    with torch.no_grad():  # force "Increased opacity" at Detection and "N/A" at Lesion distribution
        model.step_heads[0].bias.fill_(0).data[1] = 50.0
        model.step_heads[distribution].bias.fill_(0).data[-1] = 50.0
    model.save_pretrained(tmp_path)
    result = pipeline(TASK, model=str(tmp_path), device="cpu")(_images(1)[0], consistent=True)
    step = result["steps"][distribution]
    assert step["answer"] == NA_OPTION and step["is_na"] and step["label"] == len(step["probabilities"]) - 1
    assert "Lesion distribution: N/A" in result["chain"]
    rules = {v["rule"] for v in result["violations"]}
    assert "lesion-without-distribution" in rules and not result["is_consistent"]
    # Both steps are certain (p ~ 1): the repair does not trade one confident answer for another; the
    # contradiction is shown as unresolved and nothing is changed.
    assert result["steps"][distribution]["answer"] == NA_OPTION
    assert result["unresolved_contradiction"] and result["changed_steps"] == []
    assert result["consistent_chain"] == result["chain"]


def test_consistent_decoding_passes_the_check_on_many_images(saved_model):
    vqa = pipeline(TASK, model=str(saved_model), device="cpu")
    checker = ChainChecker.from_config(vqa.model.config)
    results = vqa(_images(6, seed=2), consistent=True, batch_size=3)
    for result in results:
        labels = [s["consistent_label"] for s in result["steps"]]
        assert checker.is_consistent(labels) or result["unresolved_contradiction"], result["consistent_chain"]
        if result["is_consistent"]:  # nothing to fix: decoding keeps the argmax chain
            assert result["changed_steps"] == []


def _brute_force_best(checker, log_probs):
    """Walk all chains in order of decreasing score, checking each with the per-chain rule evaluation."""
    scores = log_probs[0]
    for step_log_probs in log_probs[1:]:
        scores = np.add.outer(scores, step_log_probs)
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        labels = [int(i) for i in np.unravel_index(flat, scores.shape)]
        if checker.is_consistent(labels):
            return labels, float(scores.flat[flat])
    raise AssertionError("no consistent chain")


def test_exact_consistent_search_matches_brute_force():
    checker = ChainChecker(DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS)
    assert not checker.skipped_rules and len(checker.rules) == len(DEFAULT_CHAIN_RULES)
    rng = np.random.default_rng(0)
    for _ in range(4):
        log_probs = [np.log(rng.dirichlet(np.full(len(o), 0.3))) for o in DEFAULT_STEP_OPTIONS]
        labels, score = checker.most_probable_consistent(log_probs)
        expected_labels, expected_score = _brute_force_best(checker, log_probs)
        assert score == pytest.approx(expected_score)
        assert labels == expected_labels


def test_chain_rules_accept_the_demo_ground_truth_and_catch_contradictions():
    from dataset_script.synthetic import DIAGNOSIS_PRIOR, diagnosis_from_findings, sample_findings

    checker = ChainChecker(DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS)
    rng = np.random.default_rng(0)
    for diagnosis, _ in itertools.product(DIAGNOSIS_PRIOR, range(20)):
        answers = sample_findings(diagnosis, rng)
        answers.append(diagnosis_from_findings(answers))
        labels = [options.index(a) for options, a in zip(DEFAULT_STEP_OPTIONS, answers)]
        assert checker.violations(labels) == [], answers

    def labels_of(*answers):
        return [options.index(a) for options, a in zip(DEFAULT_STEP_OPTIONS, answers)]

    normal_with_lesion = labels_of("No abnormality", NA_OPTION, NA_OPTION, "Upper lung zone", NA_OPTION, "None",
                                   "Nodule")
    assert [v["rule"] for v in checker.violations(normal_with_lesion)] == ["normal-detection-with-lesion-location",
                                                                           "no-distribution-with-lesion-location"]
    normal_diagnosis_with_findings = labels_of("Increased opacity", "Focal", "Nodular", "Upper lung zone",
                                               "Well-circumscribed", "None", "Normal")
    rules = {v["rule"] for v in checker.violations(normal_diagnosis_with_findings)}
    assert rules == {"normal-diagnosis-with-lesion", "normal-diagnosis-with-location"}
    violation = checker.violations(normal_diagnosis_with_findings)[0]
    assert violation["steps"] == ["Detection", "Diagnosis"] and "Normal" in violation["message"]


def test_rules_for_a_custom_schema_skip_missing_options():
    options = [list(o) for o in DEFAULT_STEP_OPTIONS]
    options[0] = ["Clear", "Abnormal"]  # Detection options renamed: rules naming them cannot apply
    checker = ChainChecker(DEFAULT_STEP_NAMES, options)
    assert "lesion-without-distribution" in checker.skipped_rules
    assert "no-distribution-with-pattern" not in checker.skipped_rules


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 5))
    true_temperature = 2.5
    probabilities = np.exp(logits / true_temperature)
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    labels[:50] = -100  # missing labels are ignored
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.1)
    calibration = fit_calibration([logits, logits * 0.2], np.stack([labels, labels], 1), split="validation")
    assert calibration["temperatures"][1] == pytest.approx(true_temperature * 0.2, rel=0.1)
    assert all(after <= before + 1e-9 for before, after in zip(calibration["nll_before"], calibration["nll_after"]))


def test_pipeline_applies_stored_temperatures(tmp_path):
    model = tiny_student(seed=2)
    image = _images(1)[0]
    model.save_pretrained(tmp_path / "plain")
    plain = pipeline(TASK, model=str(tmp_path / "plain"), device="cpu")(image)
    temperatures = [0.5, 1.0, 2.0, 3.0, 1.5, 4.0, 0.8]
    model.config.calibration = {"method": "temperature", "temperatures": temperatures, "split": "demo:validation"}
    model.save_pretrained(tmp_path / "calibrated")
    calibrated = pipeline(TASK, model=str(tmp_path / "calibrated"), device="cpu")(image)
    assert calibrated["probability_method"] == "temperature scaling (fitted on demo:validation)"
    for before, after, temperature in zip(plain["steps"], calibrated["steps"], temperatures):
        assert before["label"] == after["label"]  # scaling never changes the prediction
        logits = np.log(np.array(list(before["probabilities"].values())))
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        np.testing.assert_allclose(list(after["probabilities"].values()), expected, atol=1e-6)


def test_clear_errors_for_bad_inputs(saved_model, tmp_path):
    vqa = pipeline(TASK, model=str(saved_model), device="cpu")
    with pytest.raises(FileNotFoundError, match="image not found"):
        vqa(str(tmp_path / "missing.png"))
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png is not a readable image"):
        vqa(str(text_file))
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)).save(tmp_path / "full.jpg")
    full = (tmp_path / "full.jpg").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])  # header intact, pixel data cut
    with pytest.raises(ValueError, match="truncated.jpg could not be decoded"):
        vqa(str(truncated))
    with pytest.raises(TypeError, match="expected an image path"):
        vqa(12)
    with pytest.raises(TypeError, match="unexpected arguments"):
        vqa(_images(1)[0], top_k=3)


def test_rejects_a_non_stepcot_model():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16))
    with pytest.raises(ValueError, match="needs a Step-CoT teacher or student.*'bert'"):
        pipeline(TASK, model=bert, device="cpu")


REMOTE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.modules["modeling_stepcot"] = None  # the package is not importable: remote code only
    from transformers import pipeline
    vqa = pipeline(model=sys.argv[1], trust_remote_code=True, device="cpu")
    assert type(vqa).__module__.startswith("transformers_modules."), type(vqa).__module__
    image = np.random.default_rng(0).integers(0, 256, (40, 36), dtype=np.uint8)
    result = vqa(image, maps=True, consistent=True)
    print(json.dumps({"chain": result["chain"], "maps": list(result["maps"].shape), "class": type(vqa).__name__}))
    """
)


@pytest.mark.slow  # a fresh process imports transformers
def test_pipeline_ships_with_the_checkpoint_as_remote_code(tmp_path):
    model = tiny_student(seed=4)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    add_pipeline_to_checkpoint(checkpoint)
    shipped = {"pipeline_stepcot.py", "chain_stepcot.py", "processing_stepcot.py", "ood_stepcot.py",
               "gradcam_stepcot.py"}
    assert shipped <= {p.name for p in checkpoint.iterdir()}
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_stepcot.StepCoTVQAPipeline"

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    completed = subprocess.run([sys.executable, "-c", REMOTE, str(checkpoint)], cwd=workdir, env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    remote = json.loads(completed.stdout.strip().splitlines()[-1])
    # A checkpoint that names its pipeline code asks for trust_remote_code even in-process (transformers' rule).
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline(TASK, model=str(checkpoint), device="cpu")
    local = pipeline(TASK, model=model, device="cpu")(
        np.random.default_rng(0).integers(0, 256, (40, 36), dtype=np.uint8))
    assert remote["class"] == "StepCoTVQAPipeline" and remote["maps"] == [7, 40, 36]
    assert remote["chain"] == local["chain"]


def test_calibrate_checkpoint_writes_temperatures_the_pipeline_uses(tmp_path):
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    from trainers.evaluation.calibration import calibrate_checkpoint

    rng = np.random.default_rng(0)
    images = [Image.fromarray(image) for image in _images(12, seed=7)]
    labels = [[int(rng.integers(n)) for n in [4, 4, 6, 7, 5, 7, 9]] for _ in images]
    data = Dataset.from_dict({"image": images, "labels": labels},
                             features=Features({"image": ImageFeature(), "labels": List(Value("int64"))}))
    (tmp_path / "data" / "data").mkdir(parents=True)
    data.to_parquet(tmp_path / "data" / "data" / "validation-00000-of-00001.parquet")
    tiny_student(seed=5).save_pretrained(tmp_path / "model")

    calibration = calibrate_checkpoint(tmp_path / "model", str(tmp_path / "data"), split="val")
    assert len(calibration["temperatures"]) == 7 and min(calibration["temperatures"]) > 0
    assert calibration["examples"] == 12 and calibration["split"].endswith(":validation")
    stored = json.loads((tmp_path / "model" / "config.json").read_text())["calibration"]
    assert stored["temperatures"] == calibration["temperatures"]
    result = pipeline(TASK, model=str(tmp_path / "model"), device="cpu")(images[0])
    assert result["probability_method"].startswith("temperature scaling (fitted on ")
