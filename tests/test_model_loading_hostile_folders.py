"""Hostile model folders: damaged safetensors, hostile configs, pickles, shard indexes pointing outside the folder,
absurd sizes and reordered step options. `info`, `predict` and the loader behind `eval` answer one line naming the
folder, before transformers (or torch.load) reads anything."""

import json
import struct
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_student  # noqa: E402

from trainers import cli  # noqa: E402
from trainers.model_loading import (  # noqa: E402
    ModelLoadError,
    load_model,
    stamp_step_options,
    step_options_fingerprint,
    stored_tensors,
)


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "student"
    tiny_student().save_pretrained(folder)
    return folder


@pytest.fixture
def student_dir(saved_student, tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    for path in saved_student.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _header(folder):
    raw = (folder / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def _write(folder, header, data):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _edit_header(folder, edit):
    header, data = _header(folder)
    edit(header)
    _write(folder, header, data)


def _first_two(header):
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])
    return header[names[0]], header[names[1]]


def _overlap(header):
    first, second = _first_two(header)
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + second["data_offsets"][1]
                              - second["data_offsets"][0]]


def _past_end(header):
    last = max((e for n, e in header.items() if n != "__metadata__"), key=lambda e: e["data_offsets"][1])
    last["data_offsets"] = [last["data_offsets"][0] + 1_000_000, last["data_offsets"][1] + 1_000_000]


def _huge_shape(header):
    entry = header["step_heads.0.weight"]
    entry["shape"] = [10**6, 10**6]


def _damage(kind, folder):
    path = folder / "model.safetensors"
    if kind == "header length 2^62":
        path.write_bytes(struct.pack("<Q", 2**62) + path.read_bytes()[8:])
    elif kind == "99,999,999-byte header, short file":
        path.write_bytes(struct.pack("<Q", 99_999_999) + path.read_bytes()[8:200])
    elif kind == "overlapping offsets":
        _edit_header(folder, _overlap)
    elif kind == "offsets past the end":
        _edit_header(folder, _past_end)
    elif kind == "shape 10^6 x 10^6":
        _edit_header(folder, _huge_shape)
    elif kind == "symlink to a text file":
        path.unlink()
        (folder / "notes.txt").write_text("these are not weights\n" * 50)
        path.symlink_to("notes.txt")


DAMAGE = ["header length 2^62", "99,999,999-byte header, short file", "overlapping offsets", "offsets past the end",
          "shape 10^6 x 10^6", "symlink to a text file"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_safetensors_are_one_line_errors_everywhere(student_dir, xray_png, capsys, kind):
    _damage(kind, student_dir)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_model(student_dir)
    for command in (["info", str(student_dir)], ["predict", str(xray_png), "--model", str(student_dir)]):
        assert cli.main(command) != 0
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and str(student_dir) in error, (command, error)


@pytest.mark.parametrize("change, field", [({"hidden_size": "abc"}, "hidden_size"),
                                           ({"step_options": "Normal"}, "step_options"),
                                           ({"step_options": {"a": 1}}, "step_options")])
def test_config_fields_of_the_wrong_type_are_one_line_errors(student_dir, xray_png, capsys, change, field):
    config = json.loads((student_dir / "config.json").read_text())
    config.update(change)
    (student_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=field):
        load_model(student_dir)
    assert cli.main(["predict", str(xray_png), "--model", str(student_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "config.json" in error


def test_a_config_nested_200000_deep_is_one_line(student_dir, xray_png, capsys):
    (student_dir / "config.json").write_text('{"model_type": "stepcot_student", "x": ' + "[" * 200_000
                                             + "]" * 200_000 + "}")
    for command in (["info", str(student_dir)], ["predict", str(xray_png), "--model", str(student_dir)]):
        assert cli.main(command) != 0
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "nested too deeply" in error


def test_a_config_nested_under_the_recursion_limit_is_refused_by_depth(student_dir):
    (student_dir / "config.json").write_text('{"model_type": "stepcot_student", "x": ' + "[" * 500 + "]" * 500 + "}")
    with pytest.raises(ModelLoadError, match="nested deeper than"):
        load_model(student_dir)


def test_only_a_pickle_is_refused_without_unpickling(student_dir, xray_png, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    import pickle
    (student_dir / "model.safetensors").unlink()
    (student_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError, match="only safetensors are read"):
        load_model(student_dir)
    assert cli.main(["predict", str(xray_png), "--model", str(student_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pytorch_model.bin" in error and "only safetensors" in error
    assert not marker.exists()


def test_an_absurd_vision_config_is_refused_before_anything_is_built(student_dir, xray_png, capsys):
    config = json.loads((student_dir / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 100_000
    (student_dir / "config.json").write_text(json.dumps(config))
    for command in (["info", str(student_dir)], ["predict", str(xray_png), "--model", str(student_dir)]):
        assert cli.main(command) != 0
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "num_hidden_layers" in error


def test_the_parameter_limit_is_configurable(student_dir, monkeypatch):
    config = json.loads((student_dir / "config.json").read_text())
    config["vision_config"].update(hidden_size=8192, intermediate_size=32768, num_hidden_layers=200,
                                   num_attention_heads=64)
    (student_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="STEPCOT_MAX_MODEL_PARAMETERS"):
        load_model(student_dir)
    monkeypatch.setenv("STEPCOT_MAX_MODEL_PARAMETERS", "1000")
    (student_dir / "config.json").write_text(json.dumps(json.loads((student_dir / "config.json").read_text())
                                                        | {"vision_config": _tiny_vision(student_dir)}))
    with pytest.raises(ModelLoadError, match="limit of 1,000"):
        load_model(student_dir)


def _tiny_vision(folder):
    from tiny_models import TINY_VISION

    return dict(json.loads((folder / "config.json").read_text())["vision_config"], **TINY_VISION)


def _shard(folder, target):
    weights = folder / "model.safetensors"
    names = list(load_file(weights))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {name: target for name in names}}))
    return weights


@pytest.mark.parametrize("target", ["../outside/model.safetensors", "/etc/passwd", "weights.bin"])
def test_a_shard_index_may_name_only_safetensors_inside_the_folder(student_dir, xray_png, capsys, target):
    weights = _shard(student_dir, target)
    outside = student_dir.parent / "outside"
    outside.mkdir()
    weights.rename(outside / "model.safetensors")
    for command in (["info", str(student_dir)], ["predict", str(xray_png), "--model", str(student_dir)]):
        assert cli.main(command) != 0
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and target in error
    with pytest.raises(ModelLoadError, match="outside the model folder|only safetensors"):
        load_model(student_dir)


def test_a_shard_symlinked_to_outside_is_refused(student_dir):
    outside = student_dir.parent / "elsewhere.safetensors"
    (student_dir / "model.safetensors").rename(outside)
    (student_dir / "model.safetensors").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        stored_tensors(student_dir)


def test_a_valid_shard_index_inside_the_folder_loads(student_dir):
    weights = _shard(student_dir, "shard-1.safetensors")
    weights.rename(student_dir / "shard-1.safetensors")
    assert type(load_model(student_dir)).__name__ == "StepCoTStudent"


def test_reordered_step_options_warn(student_dir, caplog):
    config = json.loads((student_dir / "config.json").read_text())
    stamp_step_options(student_dir, config["step_options"])
    with caplog.at_level("WARNING"):
        load_model(student_dir)
    assert "step options" not in caplog.text
    config["step_options"][6] = config["step_options"][6][::-1]
    (student_dir / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        load_model(student_dir)
    assert "step options" in caplog.text and "relabelled" in caplog.text


def test_stamping_keeps_the_weights_and_records_the_fingerprint(student_dir):
    before = load_file(student_dir / "model.safetensors")
    options = json.loads((student_dir / "config.json").read_text())["step_options"]
    stamp_step_options(student_dir, options)
    after = load_file(student_dir / "model.safetensors")
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    header, _ = _header(student_dir)
    assert header["__metadata__"]["stepcot_step_options_sha256"] == step_options_fingerprint(options)


def test_corrupt_embedding_statistics_name_the_config_field(student_dir, xray_png, capsys):
    config = json.loads((student_dir / "config.json").read_text())
    config["embedding_statistics"] = {"mean": ["x"] * 24, "scale": [1.0] * 24, "threshold": 2.0}
    (student_dir / "config.json").write_text(json.dumps(config))
    assert cli.main(["predict", str(xray_png), "--model", str(student_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert "embedding_statistics.mean" in error and "xray.png" not in error


def test_an_intact_folder_still_loads_after_the_checks(student_dir):
    save_file(load_file(student_dir / "model.safetensors"), student_dir / "model.safetensors",
              metadata={"format": "pt"})
    assert type(load_model(student_dir)).__name__ == "StepCoTStudent"
