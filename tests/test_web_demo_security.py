"""Hostile visitors of the web demo: a visitor can only choose among the models fixed at launch. Each request
below goes through the public API (gradio_client against a served app) and through the page's handler, and the
test asserts that the server neither loads nor even looks at the path it names (no stat, open or listing)."""

import builtins
import json
import os
import threading
import time

import numpy as np
import pytest
from local_ports import free_port
from PIL import Image
from tiny_models import save_tiny_pair, tiny_student

from trainers.inference import web_demo

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("served"), seed=3)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Folders an attacker could name: /etc, another checkpoint on the server, a sharded index pointing at
    /etc/passwd, a config with 100,000 layers."""
    root = tmp_path_factory.mktemp("hostile")
    elsewhere = root / "someone_elses_checkpoint"
    tiny_student(seed=9).save_pretrained(elsewhere)
    sharded = root / "sharded_to_passwd"
    tiny_student(seed=9).save_pretrained(sharded)
    (sharded / "model.safetensors").unlink()
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"head.weight": "../../../../../../etc/passwd"}}))
    deep = root / "deep_config"
    tiny_student(seed=9).save_pretrained(deep)
    config = json.loads((deep / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 100_000
    (deep / "config.json").write_text(json.dumps(config))
    return {"etc": "/etc", "elsewhere": str(elsewhere), "sharded": str(sharded), "deep": str(deep)}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "chest.png"
    Image.fromarray((np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8), mode="L").save(path)
    return path


class FileSystemWatch:
    """Records every stat, open, listing and model load whose path contains one of `needles`."""

    def __init__(self, monkeypatch, needles):
        self.needles = [str(n) for n in needles]
        self.seen = []
        for module, name in [(os, "stat"), (os, "lstat"), (os, "listdir"), (os, "scandir"), (builtins, "open"),
                             (os.path, "exists"), (os.path, "isdir"), (os.path, "isfile")]:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), name))
        loader = self._wrap(web_demo.load_model, "load_model")
        monkeypatch.setattr(web_demo, "load_model", loader)
        monkeypatch.setattr("trainers.model_loading.load_model", loader)

    def _wrap(self, function, name):
        def watched(path=None, *args, **kwargs):
            text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if any(needle in text or text.rstrip("/") == needle.rstrip("/") for needle in self.needles if text):
                self.seen.append((name, text))
            return function(path, *args, **kwargs) if path is not None else function(*args, **kwargs)

        return watched


def spellings(path: str) -> list[str]:
    """16 spellings of one folder."""
    head, name = os.path.split(path.rstrip("/"))
    parent = os.path.basename(head)
    return [path, path + "/", path + "//", path + "/.", f"{head}/./{name}", f"{head}//{name}",
            f"{head}/../{parent}/{name}", f"{head}/{name}/./", f" {path}", f"{path} ", f"{head}/././{name}",
            f"{head}/./../{parent}/{name}", f"{head}/../{parent}/./{name}/", f"{head}/{name}/../{name}",
            f"{head}///{name}", f"{head}/./{name}/."]


# ---------------------------------------------------------------------------------------------------------------
# the page's handler


@pytest.fixture(scope="module")
def choice(checkpoints):
    served = web_demo.load_served_models([str(checkpoints / "student"), str(checkpoints / "teacher")])
    return web_demo.ModelChoice(served)


@pytest.mark.parametrize("case", ["etc", "elsewhere", "sharded", "deep"])
def test_the_handler_never_looks_at_a_named_path(choice, hostile, image, monkeypatch, case):
    watch = FileSystemWatch(monkeypatch, [hostile[case]])
    message, page, pictures, data = web_demo.respond(str(image), [hostile[case]], False, choice)
    assert "unknown model" in message and "this demo serves Student, Teacher" in message
    assert page == "" and data is None
    assert watch.seen == []
    assert "has no config.json" not in message  # no file-existence probe answered


def test_16_spellings_of_one_path_load_nothing_and_keep_no_copies(choice, checkpoints, image, monkeypatch):
    target = str(checkpoints / "student")
    watch = FileSystemWatch(monkeypatch, [target])
    before = dict(choice.served)
    for spelling in spellings(target):
        message, *_ = web_demo.respond(str(image), [spelling], False, choice)
        assert "unknown model" in message
    assert choice.served == before and not choice._extra
    assert watch.seen == []


def test_the_operator_opt_in_loads_one_copy_per_folder_and_stays_bounded(checkpoints, hostile, image, monkeypatch):
    served = web_demo.load_served_models([str(checkpoints / "student")])
    opt_in = web_demo.ModelChoice(served, allow_any_model_path=True)
    loads = []
    real = web_demo.load_demo_pipeline
    monkeypatch.setattr(web_demo, "load_demo_pipeline", lambda source, device="cpu": loads.append(source) or real(
        source, device))
    for spelling in spellings(hostile["elsewhere"]):
        (model,) = opt_in.choose([spelling.strip()])
    assert len(loads) == 1 and len(opt_in._extra) == 1
    opt_in.choose([str(checkpoints / "teacher")])
    opt_in.choose([str(checkpoints / "student")])
    opt_in.choose([hostile["elsewhere"]])
    assert len(opt_in._extra) <= web_demo.OPT_IN_CACHE_SIZE


def test_a_slow_opt_in_load_blocks_no_other_request(checkpoints, image, monkeypatch):
    """No lock is shared between models: while a visitor-named checkpoint loads (e.g. a huge config), requests
    for the served models are answered."""
    served = web_demo.load_served_models([str(checkpoints / "student")])
    opt_in = web_demo.ModelChoice(served, allow_any_model_path=True)
    release = threading.Event()
    monkeypatch.setattr(web_demo, "load_demo_pipeline",
                        lambda source, device="cpu": release.wait(60) and served[0].pipe)
    loader = threading.Thread(target=lambda: opt_in._load_extra("/nonexistent/huge"), daemon=True)
    loader.start()
    time.sleep(0.2)
    start = time.monotonic()
    message, page, _, data = web_demo.respond(str(image), ["Student"], False, opt_in, maps=False)
    assert message == "" and data["models"][0]["model"] == "Student"
    assert time.monotonic() - start < 30 and loader.is_alive()
    release.set()
    loader.join(5)


def test_the_page_has_no_path_box(checkpoints):
    demo = web_demo.build_demo(str(checkpoints / "student"), str(checkpoints / "teacher"))
    boxes = [block for block in demo.blocks.values() if isinstance(block, gradio.Textbox) and block.visible]
    assert boxes == []
    assert demo.stepcot_models.labels == ["Student", "Teacher"]


# ---------------------------------------------------------------------------------------------------------------
# the public API



@pytest.fixture(scope="module")
def served_url(checkpoints):
    demo = web_demo.build_demo(str(checkpoints / "student"), str(checkpoints / "teacher"))
    port = free_port()
    web_demo.launch(demo, port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.mark.parametrize("case", ["etc", "elsewhere", "sharded", "deep", "spellings"])
def test_the_api_never_looks_at_a_named_path(served_url, hostile, checkpoints, image, monkeypatch, case):
    from gradio_client import Client, handle_file

    client = Client(served_url, verbose=False)
    names = spellings(str(checkpoints / "student")) if case == "spellings" else [hostile[case]]
    watch = FileSystemWatch(monkeypatch, [n.strip() for n in names])
    for name in names:
        with pytest.raises(Exception, match="unknown model"):
            client.predict(image=handle_file(str(image)), models=[name], api_name="/predict")
    assert watch.seen == []


def test_the_api_refuses_a_server_path_as_the_image(served_url):
    import httpx

    payload = {"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, None, False]}
    event = httpx.post(served_url + "gradio_api/call/predict", json=payload, timeout=30).json()["event_id"]
    stream = httpx.get(f"{served_url}gradio_api/call/predict/{event}", timeout=30).text
    assert "event: error" in stream and "root:" not in stream


def test_uploads_over_the_cap_are_refused_before_decoding(served_url):
    import httpx

    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 1024 * 1024)
    response = httpx.post(served_url + "gradio_api/upload", files={"files": ("big.png", big, "image/png")},
                          timeout=60)
    assert response.status_code == 413, response.text[:200]


def test_the_watch_sees_a_probe(hostile, monkeypatch):
    """The watch above is not blind: loading a named folder the way an open path box would is recorded."""
    watch = FileSystemWatch(monkeypatch, [hostile["etc"]])
    with pytest.raises(web_demo.DemoError):
        web_demo.load_demo_pipeline(hostile["etc"])
    assert {name for name, _ in watch.seen} >= {"stat", "load_model"}


@pytest.mark.slow
def test_memory_stays_flat_over_requests(choice, checkpoints, image):
    """20 requests (with maps, consistent decoding on and off) and 16 spellings of a served folder: the resident
    memory after them is within 60 MB of what it was after 5 warm-up requests."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()

    def requests(count):
        for index in range(count):
            message, *_ = web_demo.respond(str(image), ["Student", "Teacher"], index % 2, choice)
            assert message == ""

    requests(5)
    before = process.memory_info().rss
    requests(20)
    for spelling in spellings(str(checkpoints / "student")):
        web_demo.respond(str(image), [spelling], False, choice)
    growth = (process.memory_info().rss - before) / 2**20
    assert growth < 60, f"resident memory grew by {growth:.0f} MB over 20 requests"
