"""`stepcot bench-efficiency`: the timing loop, the baseline inference path (image tower + shared MLP per step), the
table, the CLI, and benchmarks/inference.py as a wrapper; all on tiny random shapes."""

import importlib.util
import json
import sys
import time

import pytest
import torch

from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS
from trainers import cli
from trainers.paper import efficiency

CLASSES = [len(options) for options in DEFAULT_STEP_OPTIONS]


class Sleeper(torch.nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, pixel_values):
        self.calls += 1
        time.sleep(self.seconds)
        return pixel_values


def test_time_calls_is_the_median_after_two_warm_ups():
    model = Sleeper(0.01)
    milliseconds = efficiency.time_calls(model, torch.zeros(1), repeats=3)
    assert model.calls == 5
    assert 10 <= milliseconds < 200


@pytest.mark.parametrize("name", ["clip", "flava"])
def test_baseline_inference_is_image_tower_then_the_shared_mlp_per_step(name):
    torch.manual_seed(0)
    model, image_size = efficiency.build_model(name, tiny=True)
    pixel_values = torch.randn(3, 3, image_size, image_size)
    with torch.no_grad():
        logits = model(pixel_values)
        # By hand: FLAVA projects every token (its embedding is the CLS token's), CLIP returns the pooled projection.
        image_embeds = model.backbone.get_image_features(pixel_values=pixel_values).pooler_output
        image_embeds = image_embeds[:, 0] if image_embeds.dim() == 3 else image_embeds
        for step, count in enumerate(CLASSES):
            mlp_input = torch.cat([image_embeds, model.question_embeds[step].expand(3, -1)], dim=-1)
            torch.testing.assert_close(logits[step], model.head.mlp(mlp_input)[:, :count])
    assert [tuple(step.shape) for step in logits] == [(3, count) for count in CLASSES]
    total = sum(p.numel() for p in model.parameters())
    text_tower = sum(p.numel() for p in model.backbone.text_model.parameters())
    assert text_tower > 0 and total == sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.head.parameters())


@pytest.mark.slow  # times whole models end to end (about 20 s each on a loaded 2-core machine)
def test_rows_and_table_in_process():
    rows = efficiency.measure_all(["vision_encoder", "student", "teacher", "blip"], batch_size=2, repeats=1,
                                  tiny=True, isolate=False)
    assert [row["model"] for row in rows] == ["vision_encoder", "student", "teacher", "blip"]
    student, _ = efficiency.build_model("student", tiny=True)
    assert rows[1]["parameters_M"] == round(sum(p.numel() for p in student.parameters()) / 1e6, 2)
    for row in rows:
        assert row["ms_per_sample_batch1"] > 0 and row["ms_per_batch2"] > 0 and row["peak_rss_MB"] > 50
        # both are rounded from the same unrounded time: ms/batch to 0.1, ms/sample to 0.01
        assert row["ms_per_sample_in_batch"] == pytest.approx(row["ms_per_batch2"] / 2, abs=0.06)
        assert row["x_vision_encoder"] == pytest.approx(row["ms_per_batch2"] / rows[0]["ms_per_batch2"], abs=1e-3)
    table = efficiency.markdown(rows, 2, "cpu")
    assert table.startswith("| Model | Params (M) | Params as Table 11 (M) | ms/sample (batch 1) | ms/batch (2) |")
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + 4 and "× encoder (batch)" in table


@pytest.mark.slow  # times whole models end to end (about 20 s each on a loaded 2-core machine)
def test_command_measures_in_a_subprocess_and_writes_json(tmp_path, capsys):
    out = tmp_path / "eff.json"
    assert cli.main(["bench-efficiency", "--tiny", "--models", "student", "--repeats", "1", "--batch-size", "2",
                     "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| student |" in printed and ", 1 threads, cpu" in printed
    saved = json.loads(out.read_text())
    assert saved["tiny"] and saved["rows"][0]["model"] == "student" and saved["batch_size"] == 2


def test_unknown_model_and_missing_cuda_are_reported(capsys):
    assert cli.main(["bench-efficiency", "--tiny", "--in-process", "--models", "resnet"]) == 1
    assert "unknown model 'resnet'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["bench-efficiency", "--device", "cuda"]) == 1
        assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.slow  # times whole models end to end (about 20 s each on a loaded 2-core machine)
def test_benchmarks_inference_wrapper_keeps_its_output(monkeypatch, capsys, tmp_path):
    path = efficiency.__file__.replace("trainers/paper/efficiency.py", "benchmarks/inference.py")
    spec = importlib.util.spec_from_file_location("benchmark_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    def tiny_measure_all(models, **kwargs):  # the paper-size models take minutes on a CPU
        calls.append((tuple(models), kwargs))
        return efficiency.measure_all(models, batch_size=kwargs["batch_size"], repeats=1, tiny=True, isolate=False)

    monkeypatch.setattr(module, "measure_all", tiny_measure_all)
    monkeypatch.setattr(sys, "argv", ["inference.py", "--batch-size", "2", "--out", str(tmp_path / "r.json")])
    module.main()
    output = capsys.readouterr().out.splitlines()
    assert calls[0][0] == ("vision_encoder", "teacher", "student") and calls[0][1]["device"] == "cpu"
    assert output[1] == ("| model | parameters_M | paper_parameters_M | ms_per_sample_batch1 | ms_per_batch2 | "
                         "ms_per_sample_in_batch | "
                         "peak_rss_MB | x_vision_encoder |")
    assert output[-1].startswith("teacher ") and "(target <= 1.3)" in output[-1] and "(target <= 1.05)" in output[-1]
    assert [row["model"] for row in json.loads((tmp_path / "r.json").read_text())["rows"]] == list(module.MODELS)


def test_paper_comparable_parameter_counts_are_table_11s():
    """ViT-B/32 + BERT-base at the paper's widths with seven image projections: exactly Table 11's counts."""
    from modeling_stepcot import StepCoTConfig, StepCoTStudentConfig

    teacher = efficiency.paper_comparable_parameters(StepCoTConfig())
    student = efficiency.paper_comparable_parameters(StepCoTStudentConfig())
    assert round(teacher["paper_comparable"] / 1e6, 2) == 283.66
    assert round(student["paper_comparable"] / 1e6, 2) == 151.56
    assert teacher["unused_clip_text_tower"] == student["unused_clip_text_tower"] > 60e6
    shared = efficiency.paper_comparable_parameters(StepCoTConfig(per_step_image_projection=False))
    assert teacher["paper_comparable"] - shared["paper_comparable"] == 6 * 395_520  # six more 512->768 projections
