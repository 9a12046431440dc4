"""The web demo in a real headless browser (Debian's chromium, driven by Selenium through chromedriver), at a
desktop (1366 x 900) and a phone (390 x 844) viewport, as a visitor uses it.

The app serves two tiny random checkpoints; the student records the embedding statistics of synthetic demo images
and a card saying it was trained on them, so a real adult radiograph is out of its distribution. Checked: example
thumbnails (a real radiograph among them), no path box, the radiograph shown with a Grad-CAM step selector that
reaches all seven steps, the out-of-distribution banner with faded answers, the trained-on line, one compact chain
per model, no horizontal overflow, the refusal of a 1 x 1 PNG and the one-line error of a text file. Screenshots
are saved under the test's tmp dir and copied to outputs/test-artifacts/demo/ (see the README's "Tests" section):
look at them.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from local_ports import free_port
from PIL import Image
from tiny_models import save_tiny_pair

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts" / "demo"
REAL_CHILD = "kermany-pediatric-cxr/person1946_bacteria_4874.jpeg"
REAL_ADULT = "actualmed-covid-cxr/images/am0005.png"
TIMEOUT_S = 120
VIEWPORTS = {"desktop": (1366, 900), "phone": (390, 844)}


def _shared(relative) -> Path:
    from conftest import SHARED_DATA

    path = Path(os.environ.get("STEPCOT_SHARED_DATA", SHARED_DATA)) / relative
    if not path.is_file():
        pytest.skip(f"real radiograph {relative} not found under ../shared/data")
    return path



def _with_synthetic_statistics(folder: Path) -> None:
    """Record in the student's config the embedding statistics of synthetic demo images (as training does), and a
    card naming the synthetic set and a test accuracy."""
    from dataset_script.synthetic import make_demo_example
    from modeling_stepcot.ood_stepcot import embedding_statistics
    from trainers.inference.predict import build_pipeline

    pipe = build_pipeline(folder)
    diagnoses = ["Pneumothorax", "Effusion", "Pneumonia", "Normal"]

    def embeds(start, count):
        rows = []
        for index in range(start, start + count):
            image = Image.fromarray(make_demo_example(index, 0, 128, f"T{index}", diagnoses[index % 4])[1], mode="L")
            with torch.no_grad():
                rows.append(pipe.model.encode_images(pipe.preprocess(image)["pixel_values"])[0].numpy())
        return np.stack(rows)

    config = json.loads((folder / "config.json").read_text())
    config["embedding_statistics"] = embedding_statistics(embeds(0, 40), embeds(100, 20))
    (folder / "config.json").write_text(json.dumps(config))
    card = "---\ntags:\n- synthetic-data\n---\n\nMean over steps: accuracy 0.874, AUC 0.95.\n"
    (folder / "README.md").write_text(card)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    from trainers.inference.web_demo import build_demo, launch, write_synthetic_examples

    folder = save_tiny_pair(tmp_path_factory.mktemp("demo_models"), seed=1)
    _with_synthetic_statistics(folder / "student")
    examples = write_synthetic_examples(tmp_path_factory.mktemp("examples"), count=2) + [str(_shared(REAL_CHILD))]
    demo = build_demo(str(folder / "student"), str(folder / "teacher"), examples)
    port = free_port()
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
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT_S)
    yield driver
    driver.quit()


def _viewport(driver, width, height):
    """Make the page's inner size width x height (the window adds its frame)."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def _screenshot(driver, tmp_path, name: str, width: int, height: int) -> Path:
    """A full-page screenshot at the viewport's width."""
    full = driver.execute_script("return document.documentElement.scrollHeight")
    _viewport(driver, width, min(max(full, height), 8000))
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    _viewport(driver, width, height)
    return path


def _wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.5).until(lambda d: condition(d))
    except Exception:  # noqa: BLE001  (say what was awaited, with the page's text)
        page = driver.find_element("tag name", "body").text[:2000]
        raise AssertionError(f"timed out waiting for {what}; the page shows:\n{page}") from None


def _open(driver, url, width, height):
    _viewport(driver, width, height)
    driver.get(url)
    return _wait_for(driver, lambda d: d.find_elements("css selector", "#stepcot-upload input[type=file]"),
                     "the upload field")[0]


def _overflow(driver) -> list[str]:
    """Visible elements whose right edge passes the viewport, and the page's horizontal scroll width."""
    return driver.execute_script("""
        const width = document.documentElement.clientWidth, out = [];
        if (document.documentElement.scrollWidth > width + 1) out.push('page scrollWidth ' +
            document.documentElement.scrollWidth + ' > ' + width);
        for (const el of document.querySelectorAll('#stepcot-result *, #stepcot-message *, .gradio-container *')) {
            const r = el.getBoundingClientRect();
            if (r.width > 0 && r.height > 0 && r.right > width + 1 && getComputedStyle(el).visibility !== 'hidden'
                && !el.closest('[style*="overflow"]'))
                out.push(el.tagName + '.' + el.className + ' right ' + Math.round(r.right));
        }
        return out.slice(0, 10);""")


def _picture_src(driver) -> str:
    images = driver.find_elements("css selector", "#stepcot-picture img")
    return images[0].get_attribute("src") if images else ""


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_a_visitor_sees_the_radiograph_banner_and_chains(demo_url, browser, tmp_path, viewport):
    width, height = VIEWPORTS[viewport]
    field = _open(browser, demo_url, width, height)
    thumbnails = _wait_for(browser, lambda d: [i for i in d.find_elements("css selector", "#stepcot-examples img")
                                               if i.get_attribute("naturalWidth") not in (None, "0")],
                           "the example thumbnails")
    assert len(thumbnails) == 3
    visible_text_boxes = [box for box in browser.find_elements("css selector", "input[type=text], textarea")
                          if box.is_displayed()]
    assert visible_text_boxes == [], "a visitor must not be offered a free path box"

    field.send_keys(str(_shared(REAL_ADULT)))
    _wait_for(browser, lambda d: len(d.find_elements("css selector", "#stepcot-result .stepcot-step")) == 14
              and _picture_src(d), "the two chains and the radiograph")
    banner = browser.find_element("css selector", "#stepcot-message .stepcot-banner")
    assert banner.is_displayed()
    assert "This image is unlike the images this model was trained on; its answers are unreliable" in banner.text
    models = browser.find_elements("css selector", "#stepcot-result .stepcot-model")
    assert [m.find_element("tag name", "h3").text for m in models] == ["Student", "Teacher"]
    student, teacher = models
    assert "stepcot-unreliable" in student.get_attribute("class")
    assert "synthetic" in student.find_element("css selector", ".stepcot-trained").text
    assert "87.4%" in student.find_element("css selector", ".stepcot-trained").text
    assert "not recorded" in teacher.find_element("css selector", ".stepcot-trained").text
    for model in models:
        steps = model.find_elements("css selector", ".stepcot-step")
        assert [s.get_attribute("data-step") for s in steps] == [str(n) for n in range(1, 8)]
        assert "Anything abnormal in the lungs?" in steps[0].text and "Most likely diagnosis" in steps[6].text
    body = browser.find_element("tag name", "body").text
    assert "out_of_distribution" not in body and "untrained_steps" not in body and "(student)" not in body
    assert _overflow(browser) == []
    _screenshot(browser, tmp_path, f"{viewport}_1_adult_radiograph_banner", width, height)

    options = browser.find_elements("css selector", "#stepcot-step label")
    assert len(options) == 8 and all(o.is_displayed() for o in options)  # the radiograph and all seven steps
    before = _picture_src(browser)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", options[7])
    options[7].click()
    _wait_for(browser, lambda d: _picture_src(d) and _picture_src(d) != before, "the step 7 overlay")
    assert browser.find_element("css selector", "#stepcot-colourbar .stepcot-colourbar").is_displayed()
    assert _overflow(browser) == []
    _screenshot(browser, tmp_path, f"{viewport}_2_step7_overlay", width, height)

    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumbnails[2])
    thumbnails[2].click()  # the real radiograph example
    _wait_for(browser, lambda d: "person1946" not in d.find_element("id", "stepcot-result").text
              and d.find_elements("css selector", "#stepcot-result .stepcot-step")
              and _picture_src(d) != before, "the example's chains")
    assert len(browser.find_elements("css selector", "#stepcot-result .stepcot-step")) == 14

    dot = tmp_path / "dot.png"
    Image.new("L", (1, 1)).save(dot)
    _open(browser, demo_url, width, height).send_keys(str(dot))
    refusal = _wait_for(browser, lambda d: d.find_elements("css selector", "#stepcot-message .stepcot-banner.refused"),
                        "the refusal of a 1 x 1 image")
    assert "dot.png does not look like a chest radiograph" in refusal[0].text
    assert browser.find_elements("css selector", "#stepcot-result .stepcot-step") == []
    _screenshot(browser, tmp_path, f"{viewport}_3_refused_1x1", width, height)

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an x-ray\n")
    _open(browser, demo_url, width, height).send_keys(str(text_file))
    error = _wait_for(browser, lambda d: d.find_elements("css selector", "#stepcot-message .stepcot-error"),
                      "the error message")
    assert "notes.txt is not an image file" in error[0].text
    assert "Traceback" not in browser.find_element("tag name", "body").text
