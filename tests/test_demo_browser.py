"""The web demo in a real headless browser (Debian's chromium, driven by Selenium through chromedriver).

Starts the Gradio app on a loopback port with two tiny random checkpoints, uploads a real radiograph (a generated
one when ../shared/data is absent), waits for the chain, checks the seven steps of each model and the Grad-CAM
gallery, then uploads a text file and checks the message in the page. Screenshots are saved under the test's
tmp dir and copied to outputs/test-artifacts/demo/ (see the README's "Tests" section): look at them.
"""

import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_pair

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts" / "demo"
REAL_RADIOGRAPH = "kermany-pediatric-cxr/person1946_bacteria_4874.jpeg"
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    from trainers.inference.demo_app import build_demo, launch

    folder = save_tiny_pair(tmp_path_factory.mktemp("demo_models"), seed=1)
    demo = build_demo(str(folder / "student"), str(folder / "teacher"))
    port = _free_port()
    launch(demo, port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian chromium / chromium-driver not installed (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture
def radiograph(tmp_path, request):
    import os

    from conftest import SHARED_DATA

    real = Path(os.environ.get("STEPCOT_SHARED_DATA", SHARED_DATA)) / REAL_RADIOGRAPH
    if real.is_file():
        return real
    rng = np.random.default_rng(0)  # a fresh clone: a generated radiograph-like image
    path = tmp_path / "generated_chest.png"
    Image.fromarray((rng.random((320, 320)) * 255).astype(np.uint8), mode="L").save(path)
    return path


def _screenshot(driver, tmp_path, name: str) -> Path:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(height + 100, 1000), 6000))
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    _wait_for(driver, lambda d: d.execute_script(  # lazily loaded gallery images
        "return [...document.querySelectorAll('#stepcot-maps img')].every(i => i.complete && i.naturalWidth > 0)"),
        "the gallery images to load")
    driver.execute_script("window.scrollTo(0, 0)")
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    driver.set_window_size(1400, 1000)
    return path


def _wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.5).until(lambda d: condition(d))
    except Exception:  # noqa: BLE001  (say what was awaited, with the page's text)
        page = driver.find_element("tag name", "body").text[:2000]
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{page}") from None


def _upload(driver, url: str, path: Path) -> None:
    driver.get(url)
    field = _wait_for(driver, lambda d: d.find_elements("css selector", "#stepcot-upload input[type=file]"),
                      "the upload field")
    field[0].send_keys(str(path))


def test_demo_shows_the_chain_maps_and_errors_in_a_browser(demo_url, browser, radiograph, tmp_path):
    _upload(browser, demo_url, radiograph)
    _wait_for(browser, lambda d: len(d.find_elements("css selector", "#stepcot-result .stepcot-step")) == 14
              and len(d.find_elements("css selector", "#stepcot-maps img")) == 16, "the two chains and 2 x 8 maps")
    models = browser.find_elements("css selector", "#stepcot-result .stepcot-model")
    assert [m.find_element("tag name", "h3").text.split(" ")[0] for m in models] == ["Student", "Teacher"]
    for model in models:
        step_boxes = model.find_elements("css selector", ".stepcot-step")
        assert [box.get_attribute("data-step") for box in step_boxes] == [str(n) for n in range(1, 8)]
        assert "Detection" in step_boxes[0].text and "Diagnosis" in step_boxes[6].text
        assert model.find_elements("css selector", ".stepcot-bar-row .fill")  # probability bars
        assert model.find_elements("css selector", ".stepcot-flags")  # contradictions or "none"
    time.sleep(1)  # let the gallery's images render before the screenshot
    maps = browser.find_elements("css selector", "#stepcot-maps img")
    assert maps and all(m.get_attribute("src") for m in maps)
    assert browser.find_elements("css selector", "#stepcot-json a, #stepcot-json [href]"), "no JSON download link"
    _screenshot(browser, tmp_path, "1_chain_and_maps")

    browser.find_element("css selector", "#stepcot-consistent input[type=checkbox]").click()
    _wait_for(browser, lambda d: "consistent decoding" in d.find_element("id", "stepcot-result").text,
              "consistent decoding")
    _screenshot(browser, tmp_path, "2_consistent_decoding")

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an x-ray\n")
    _upload(browser, demo_url, text_file)
    error = _wait_for(browser, lambda d: d.find_elements("css selector", "#stepcot-message .stepcot-error"),
                      "the error message")
    assert "notes.txt is not an image file" in error[0].text
    assert "Traceback" not in browser.find_element("tag name", "body").text
    _screenshot(browser, tmp_path, "3_text_file_error")
