"""The web page in a real browser: headless Chromium (from the system's packages, installed
here when missing and possible) loads the page, an image is picked, a question asked, and
the streamed answer appears (docs/img/serve-page.png is made the same way by
tools/serve_screenshot.py, with a trained model)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

selenium = pytest.importorskip("selenium")
uvicorn = pytest.importorskip("uvicorn")

from tinyvlm.infer import Sampling, answer  # noqa: E402
from tinyvlm.serve.app import create_app, running  # noqa: E402

from .test_serve import chatty_model, png  # noqa: E402


def browser() -> tuple[str, str] | None:
    """(chromium, chromedriver), installing the Debian packages when root and apt allow."""
    def found() -> tuple[str, str] | None:
        chrome = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        return (chrome, driver) if chrome and driver else None

    if found() is None and hasattr(os, "geteuid") and os.geteuid() == 0 and \
            shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd, limit in ((["apt-get", "update", "-qq"], 60),
                           (["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
                            300)):
            try:
                subprocess.run(cmd, env=env, capture_output=True, timeout=limit, check=False)
            except (OSError, subprocess.TimeoutExpired):
                return None
    return found()


@pytest.fixture(scope="module")
def page_server():
    model = chatty_model()
    with running(create_app(model, "tiny", None, max_batch=4)) as url:
        yield url, model


def test_the_page_answers_a_question_about_an_uploaded_image(page_server, tmp_path) -> None:
    paths = browser()
    if paths is None:
        pytest.skip("no headless Chromium: neither installed nor installable here "
                    "(apt-get install chromium chromium-driver needs root and the network)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, model = page_server
    image = tmp_path / "shapes.png"
    png(11, 64).save(image)
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=900,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:"))
        question = driver.find_element(By.ID, "question")
        question.clear()
        question.send_keys("how many shapes?")
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.ID, "status").text == "done")
        shown = driver.find_element(By.ID, "answer").text
        assert shown == answer(model, "how many shapes?", [image], Sampling(64)).strip()
        assert shown
        assert driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 1000
    finally:
        driver.quit()
