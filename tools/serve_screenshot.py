"""docs/img/serve-page.png: the web page of `tinyvlm serve` in headless Chromium, an image
uploaded and a question answered.

    python tools/serve_screenshot.py MODEL IMAGE "how many shapes?" docs/img/serve-page.png

Needs the serve extra, selenium and the system's chromium + chromedriver.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tinyvlm.models.load import load_model
from tinyvlm.serve.app import create_app, running


def main(model_dir: str, image: str, question: str, out: str) -> None:
    app = create_app(load_model(model_dir), Path(model_dir).resolve().name, None)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=900,620"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    with running(app) as url:
        shoot(driver, url, image, question, out)


def shoot(driver: Any, url: str, image: str, question: str, out: str) -> None:
    try:
        driver.get(f"{url}/")
        driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
        WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:"))
        box = driver.find_element(By.ID, "question")
        box.clear()
        box.send_keys(question)
        driver.find_element(By.ID, "ask").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").text == "done")
        print("answer:", driver.find_element(By.ID, "answer").text)
        driver.save_screenshot(out)
    finally:
        driver.quit()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
