"""The web demo's API as a client program uses it: one named endpoint, `/predict(image, models, consistent)`,
returning the result as JSON data; 20 visitors at once all get complete answers."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from local_ports import free_port
from PIL import Image
from tiny_models import save_tiny_pair

from trainers.inference import web_demo

pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')
client_module = pytest.importorskip("gradio_client")



@pytest.fixture(scope="module")
def url(tmp_path_factory):
    folder = save_tiny_pair(tmp_path_factory.mktemp("api_models"), seed=4)
    demo = web_demo.build_demo(str(folder / "student"), str(folder / "teacher"))
    port = free_port()
    web_demo.launch(demo, port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("api_image") / "chest.png"
    Image.fromarray((np.random.default_rng(0).random((128, 112)) * 255).astype(np.uint8), mode="L").save(path)
    return path


def test_one_named_endpoint_with_named_parameters(url):
    api = client_module.Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/predict"] and not api["unnamed_endpoints"]
    parameters = api["named_endpoints"]["/predict"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == ["image", "models", "consistent"]


def test_predict_returns_the_result_as_data(url, image):
    client = client_module.Client(url, verbose=False)
    result = client.predict(image=client_module.handle_file(str(image)), models=["Teacher"], consistent=True,
                            api_name="/predict")
    assert isinstance(result, dict) and result["image"] == "chest.png"
    (model,) = result["models"]
    assert model["model"] == "Teacher" and len(model["steps"]) == 7 and "consistent_chain" in model
    assert {"trained_on", "test_accuracy", "unreliable", "chain", "violations"} <= set(model)
    both = client.predict(image=client_module.handle_file(str(image)), api_name="/predict")
    assert [m["model"] for m in both["models"]] == ["Student", "Teacher"]


def test_bad_input_is_one_line_error(url, tmp_path):
    dot = tmp_path / "dot.png"
    Image.new("L", (1, 1)).save(dot)
    client = client_module.Client(url, verbose=False)
    with pytest.raises(Exception, match="dot.png does not look like a chest radiograph") as error:
        client.predict(image=client_module.handle_file(str(dot)), api_name="/predict")
    assert "Traceback" not in str(error.value)


@pytest.mark.slow
def test_20_concurrent_requests_all_complete(url, image):
    def one(index):
        client = client_module.Client(url, verbose=False)
        return client.predict(image=client_module.handle_file(str(image)), consistent=bool(index % 2),
                              api_name="/predict")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    for result in results:
        assert [m["model"] for m in result["models"]] == ["Student", "Teacher"]
        assert all(len(m["steps"]) == 7 and m["chain"] for m in result["models"])
    assert len({r["models"][0]["chain"] for r in results}) == 1  # the same image gives the same answer
