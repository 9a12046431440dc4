"""`stepcot bench-ablations`: three `stepcot train` runs (full, w/o Memory, w/o Text) on one prepared dataset and
one feature cache, collected into Table 6. A tiny configuration: 120 demo records at 64 px, one epoch."""

import json

import numpy as np
import pytest

from trainers import cli
from trainers.evaluation.report import load_metrics
from trainers.training.offline_encoders import offline_encoders_available

pytestmark = pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")

TINY_TRAIN = ["--image_size", "64", "--num_train_epochs", "1", "--teacher_pretrain_epochs", "0",
              "--teacher_hidden_size", "32", "--student_hidden_size", "16", "--relation_dim", "16",
              "--num_bootstrap", "20", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "50"]


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    code = cli.main(["bench-ablations", "--dataset", "demo", "--out", str(out), "--demo_size", "120",
                     "--demo_image_size", "64", "--", *TINY_TRAIN])
    assert code == 0
    return out


@pytest.mark.slow
def test_each_variant_trains_the_ablated_teacher_on_shared_data_and_features(ablation_run):
    out = ablation_run
    flags = {}
    for variant in ("full", "no_memory", "no_text"):
        config = json.loads((out / variant / "teacher" / "config.json").read_text())
        flags[variant] = (config["use_memory"], config["use_text"], config["hidden_size"])
        results = json.loads((out / variant / "results.json").read_text())
        assert results["run_args"]["data"]["dataset"] == str(out / "data" / "dataset")
        assert results["run_args"]["distillation_epochs"] == 1
    assert flags == {"full": (True, True, 32), "no_memory": (False, True, 32), "no_text": (True, False, 32)}
    # One encoder pass per split for all three runs: the image encoder and the data are the same.
    assert len([folder for folder in (out / "cache").glob("image_embeds-*") if folder.is_dir()]) == 3


@pytest.mark.slow
def test_table6_rows_are_the_variants_metrics(ablation_run):
    out = ablation_run
    table = (out / "table6.md").read_text().splitlines()
    assert table[0].startswith("| Model | Detection | Lesion distribution |")
    assert [line.split(" | ")[0] for line in table[2:6]] == ["| w/o Memory", "| w/o Text", "| Teacher", "| Student"]
    sources = {"w/o Memory": "no_memory/metrics/teacher", "w/o Text": "no_text/metrics/teacher",
               "Teacher": "full/metrics/teacher", "Student": "full/metrics/student"}
    for line in table[2:6]:
        name, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        metrics = load_metrics(out / sources[name])
        shown = [float(cell.split(" ")[0]) for cell in cells]
        expected = [100 * step.metrics["accuracy"].value for step in metrics.steps]
        expected.append(100 * metrics.mean["accuracy"].value)
        np.testing.assert_allclose(shown, expected, atol=0.05)
    report = (out / "ablations.md").read_text()
    assert all(f"| {name} |" in report for name in sources) and (out / "ablations.csv").is_file()


@pytest.mark.slow
def test_the_exported_ablated_teacher_reproduces_its_reported_metrics(ablation_run, tmp_path):
    from trainers.evaluation.evaluate_model import evaluate

    out = ablation_run
    result = evaluate(out / "no_text" / "teacher", str(out / "data" / "dataset"), split="test", num_bootstrap=0,
                      plots=False)
    reported = load_metrics(out / "no_text" / "metrics" / "teacher")
    assert result.metadata["model"] == "Teacher w/o Text"
    np.testing.assert_allclose([s.metrics["accuracy"].value for s in result.steps],
                               [s.metrics["accuracy"].value for s in reported.steps], atol=1e-9)


def test_flags_that_would_change_more_than_the_ablation_are_refused(tmp_path, capsys):
    code = cli.main(["bench-ablations", "--out", str(tmp_path), "--", "--use_memory", "False", "--output_dir=x"])
    assert code == 2
    assert "--output_dir, --use_memory are set by this command" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before rendering or training anything
