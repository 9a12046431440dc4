"""The Space folder (`stepcot demo --write-space DIR`) where a Space runs it: a fresh venv holding only what its
requirements.txt names (tests/cleanroom.py; torch held to the CPU build as a Space's CPU hardware would get),
`python app.py` from the folder, bound where $GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT say, and one real
/predict request answered. The two served models use the two vision backbones (CLIP and EfficientNet-Lite0)."""

import socket
import subprocess
import time

import pytest
from cleanroom import assert_project_absent, clean_env, clean_venv
from local_ports import free_port
from tiny_models import tiny_student

from trainers import cli

pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')
client_module = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def space(tmp_path_factory):
    models = tmp_path_factory.mktemp("space_models")
    tiny_student(seed=5).save_pretrained(models / "clip")
    tiny_student(seed=5, vision_backbone="efficientnet_lite0", vision_config=None).save_pretrained(
        models / "efficientnet")
    folder = tmp_path_factory.mktemp("space") / "space"
    assert cli.main(["demo", "--model", str(models / "clip"), "--compare", str(models / "efficientnet"),
                     "--write-space", str(folder)]) == 0
    return folder


def test_the_space_folder_is_self_contained(space):
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert "torch" in requirements and not [line for line in requirements if "+" in line]
    assert {line.split("==")[0] for line in requirements} >= {"torch", "transformers", "gradio", "matplotlib"}
    for package in ("modeling_stepcot", "trainers", "dataset_script"):  # whole packages, not a partial copy
        assert (space / package / "__init__.py").is_file()
    assert (space / "trainers" / "model_loading.py").is_file()
    assert sorted(p.name for p in (space / "models").iterdir()) == ["clip", "efficientnet"]
    assert list((space / "examples").glob("*.png"))
    assert "GRADIO_SERVER_PORT" in (space / "app.py").read_text()


def test_the_space_runs_in_a_fresh_venv_and_answers(space, tmp_path):
    venv = clean_venv([], files=[space / "requirements.txt"])
    assert_project_absent(venv, tmp_path)
    port = free_port()
    env = clean_env(tmp_path / "home", GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
                    GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen([str(venv / "bin" / "python"), "app.py"], cwd=space, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the Space did not start:\n" + (tmp_path / "app.log").read_text()[-4000:])
                time.sleep(1)
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
        example = sorted((space / "examples").glob("*.png"))[0]
        result = client.predict(image=client_module.handle_file(str(example)), consistent=True, api_name="/predict")
        assert [m["model"] for m in result["models"]] == ["Student", "Student (efficientnet)"]
        assert all(len(m["steps"]) == 7 and m["chain"] for m in result["models"])
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    assert "Traceback" not in (tmp_path / "app.log").read_text()
