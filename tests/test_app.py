"""The Gradio demo (examples/app.py): its logic directly, and the served page in headless Chromium."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tiny import character_tokenizer, tiny_model
from transformers import pipeline

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Markup characters check that the page shows the text, not HTML made from it.
SENTENCE = '김철수는 2024년 3월 1일 오전 9시에 서울에서 <삼성전자> & "사과" 3개를 샀다.'
FIX_START = SENTENCE.index("서울")  # the browser test fixes "서울" as OG


def load_app():
    """examples/app.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("koelectra_crf_demo_app", ROOT / "examples" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A tiny random model saved as on the Hub, with a head biased towards B- tags so that it finds entities."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny-app-model")
    tokenizer = character_tokenizer(folder)
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([1.0 if label.startswith("B-") else 0.0 for label in KLUE_LABELS]))
    KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ner(model_folder):
    return pipeline("token-classification", model=str(model_folder), trust_remote_code=True)


def spans(entities: list[dict]) -> list[tuple[str, int, int, str]]:
    return [(e["entity_group"], e["start"], e["end"], e["word"]) for e in entities]


def test_analyze_shows_the_pipeline_entities_of_long_texts(app, ner):
    text = " ".join([SENTENCE] * 8)  # ~400 characters: a dozen windows of the model's 32 tokens
    assert len(text) > 10 * ner.model.config.max_length
    expected = ner(text, aggregation_strategy="simple")
    highlighted, rows, message, alternatives = app.analyze(text, ner)
    analyses = ner(text, aggregation_strategy="simple", top_k=app.ALTERNATIVES)
    assert alternatives.count("<li ") == len(analyses) == app.ALTERNATIVES
    for rank, analysis in enumerate(analyses, 1):
        assert f'<li data-rank="{rank}" data-probability="{analysis["probability"]!r}">' in alternatives
    assert len(expected) > 0 and max(e["end"] for e in expected) > len(text) - 10  # tagged to the end
    assert [(row[0], row[2], row[3], row[1]) for row in rows] == spans(expected)
    assert [row[4] for row in rows] == [round(e["score"], 3) for e in expected]
    assert highlighted.count('<mark class="entity"') == len(expected)
    assert "<삼성전자>" not in highlighted and "&lt;" in highlighted and "&quot;" in highlighted
    assert message == f"{len(expected)} entities in {len(text):,} characters."


def test_empty_and_over_cap_input_give_no_entities_and_no_crash(app, ner):
    def must_not_run(*_, **__):
        raise AssertionError("the pipeline must not run on text over the cap")

    assert app.analyze("", ner) == ("", [], "", "")
    assert app.analyze(None, ner) == ("", [], "", "")
    assert app.analyze(" \n\t", ner) == ("", [], "", "")
    too_long = "가" * (app.MAX_CHARACTERS + 1)
    highlighted, rows, message, alternatives = app.analyze(too_long, must_not_run)
    assert (highlighted, rows, alternatives) == ("", [], "")
    assert f"{app.MAX_CHARACTERS + 1:,} characters" in message and f"at most {app.MAX_CHARACTERS:,}" in message


def test_fixing_an_entity_re_tags_the_rest_under_it(app, ner):
    start = SENTENCE.index("서울")
    fixed = [{"start": start, "end": start + 2, "label": "OG"}]
    highlighted, rows, message, alternatives = app.fix_and_analyze(SENTENCE, start, start + 2, "OG", ner)
    expected = ner(SENTENCE, aggregation_strategy="simple", top_k=app.ALTERNATIVES, constraints=fixed)
    assert [(row[0], row[2], row[3], row[1]) for row in rows] == spans(expected[0]["entities"])
    assert ["OG", "서울", start, start + 2] in [row[:4] for row in rows]
    assert message.endswith("Re-tagged with 서울 = OG.")
    assert alternatives.count("<li ") == len(expected)
    assert app.fix_and_analyze(SENTENCE, None, None, None, ner) == app.analyze(SENTENCE, ner)  # nothing to fix
    highlighted, rows, message, alternatives = app.fix_and_analyze(SENTENCE, 0, 999, "PS", ner)
    assert (highlighted, rows, alternatives) == ("", [], "") and message.startswith("⚠️") and "out of range" in message


def test_types_come_from_the_model_labels(app, ner):
    assert app.entity_types(ner.model.config.id2label) == ["PS", "LC", "OG", "DT", "TI", "QT"]
    assert app.entity_types({0: "O", 1: "B-EV", 2: "I-EV"}) == ["EV"]
    legend = app.legend_html(["PS", "EV"])
    assert "PS 인물 · person" in legend and app.UNKNOWN_TYPE_COLOUR in legend and "EV EV · EV" in legend


def require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"{missing} missing: .ci/run must install Debian's chromium and chromium-driver")
    if missing:
        pytest.skip(f"{missing} not installed (apt-get install chromium chromium-driver)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_served(url: str, server: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the app exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            time.sleep(0.5)
    pytest.fail(f"the app did not answer at {url} within {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture
def served_app(model_folder, tmp_path):
    """URL of `python examples/app.py --model FOLDER --port PORT`, run offline in a subprocess."""
    port, log = free_port(), tmp_path / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local model folder needs no network
    command = [sys.executable, str(ROOT / "examples" / "app.py"), "--model", str(model_folder), "--port", str(port)]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        print(f"--- output of {command} ---\n{log.read_text()}")  # shown by pytest if the test fails


# The page's entities, read from the DOM: the text (labels are CSS, not text) and one <mark> per entity.
READ_ENTITIES = """
const output = document.querySelector('#entities .ner-output');
const marks = [...output.querySelectorAll('mark.entity')];
return {
  text: output.textContent,
  entities: marks.map(m => [m.dataset.type, Number(m.dataset.start), Number(m.dataset.end), m.textContent]),
  scores: marks.map(m => Number(m.dataset.score)),
  legend: document.querySelector('#legend').textContent,
  message: document.querySelector('#message').textContent.trim(),
  probabilities: [...document.querySelectorAll('#alternatives li')].map(li => Number(li.dataset.probability)),
};
"""


def test_page_in_chromium_highlights_the_pipeline_entities(served_app, ner, app, tmp_path):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # Debian's browser and driver: Selenium Manager downloads nothing
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(served_app)
        wait = WebDriverWait(driver, 60)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#text-input textarea"))
        box.send_keys(SENTENCE)
        driver.find_element(By.CSS_SELECTOR, "#analyze-button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#entities .ner-output"))
        page = driver.execute_script(READ_ENTITIES)
        # Fix "서울" as an organisation and re-tag.
        driver.find_element(By.CSS_SELECTOR, "#fix-start input").send_keys(str(FIX_START))
        driver.find_element(By.CSS_SELECTOR, "#fix-end input").send_keys(str(FIX_START + 2))
        driver.find_element(By.XPATH, "//*[@id='fix-type']//label[normalize-space()='OG']").click()
        driver.find_element(By.CSS_SELECTOR, "#fix-button").click()
        wait.until(lambda d: "Re-tagged" in d.find_element(By.CSS_SELECTOR, "#message").text)
        fixed_page = driver.execute_script(READ_ENTITIES)
        screenshot = tmp_path / "app.png"
        assert driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    if os.environ.get("ARTIFACTS_DIR"):
        artifacts = Path(os.environ["ARTIFACTS_DIR"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, artifacts / "app.png")

    expected = ner(SENTENCE, aggregation_strategy="simple")
    assert len(expected) > 0
    assert page["text"] == SENTENCE
    assert [tuple(entity) for entity in page["entities"]] == spans(expected)
    assert page["scores"] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert page["message"] == f"{len(expected)} entities in {len(SENTENCE):,} characters."
    for entity_type in app.entity_types(ner.model.config.id2label):
        assert f"{entity_type} {app.TYPE_NAMES[entity_type][0]}" in page["legend"]
    analyses = ner(SENTENCE, aggregation_strategy="simple", top_k=app.ALTERNATIVES)
    assert page["probabilities"] == pytest.approx([a["probability"] for a in analyses], rel=1e-5)
    fixed = ner(SENTENCE, aggregation_strategy="simple", top_k=app.ALTERNATIVES,
                constraints=[{"start": FIX_START, "end": FIX_START + 2, "label": "OG"}])  # fmt: skip
    assert [tuple(entity) for entity in fixed_page["entities"]] == spans(fixed[0]["entities"])
    assert ("OG", FIX_START, FIX_START + 2, "서울") in [tuple(entity) for entity in fixed_page["entities"]]
    assert fixed_page["probabilities"] == pytest.approx([a["probability"] for a in fixed], rel=1e-5)

    from PIL import Image  # a dependency of gradio

    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size[0] == 1280
        low, high = image.convert("L").getextrema()
        assert low < high  # not a blank page


def test_examples_come_from_labelled_data_in_any_format(app, ner, tmp_path):
    from koelectra_crf import formats

    texts = [f"{k}번째 예문: 한빛전자 {k}개를 샀다." for k in range(app.MAX_EXAMPLES + 2)]
    examples = [
        formats.make_example(k, text, [(text.index("한빛전자"), text.index("한빛전자") + 4, "PRD")], "test")
        for k, text in enumerate(texts)
    ]
    for name, data_format in [("a.jsonl", "doccano"), ("a.json", "label-studio"), ("a.conll", "conll")]:
        formats.write_examples(examples, tmp_path / name, data_format)
        assert app.example_texts(str(tmp_path / name)) == texts[: app.MAX_EXAMPLES]
    assert app.example_texts(None) == app.EXAMPLES
    page = app.build_demo(ner, texts[:2]).config
    assert texts[0] in json.dumps(page, ensure_ascii=False)
