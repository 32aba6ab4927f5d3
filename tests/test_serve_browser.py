"""The side-by-side page, end to end in headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

import contextlib
import os
import shutil

import httpx
import pytest

from saesteer.serve import ServeSettings, create_app
from tests.test_serve import AUTH, KEY, files, lm, registry, running  # noqa: F401 - fixtures

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
    reason="the browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver")


@contextlib.contextmanager
def chromium(profile):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def column_text(driver, column: str) -> str:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' .msg.assistant .tok')]"
        ".map(t => t.textContent).join('')", f"#{column}")


def test_page_chats_with_both_models_side_by_side(lm, registry, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    app = create_app(lm, registry, ServeSettings(api_key=KEY))
    prompt = "Write a poem about the sea"
    with running(app) as url, chromium(tmp_path / "profile") as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        key = wait.until(lambda d: d.find_element(By.ID, "api-key") if d.find_element(By.ID, "api-key").is_displayed()
                         else None)
        key.send_keys(KEY + Keys.TAB)  # the change event loads the registered specs
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert Select(driver.find_element(By.ID, "steering")).first_selected_option.get_attribute("value") == "spec:steered"
        driver.execute_script("const s = document.getElementById('strength'); s.value = '1.5';"
                              "s.dispatchEvent(new Event('input'));")
        assert driver.find_element(By.ID, "strength-value").text == "1.5×"
        max_tokens = driver.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("12")
        driver.find_element(By.ID, "prompt").send_keys(prompt)
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".column .msg.assistant")) == 2)
        assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".column .msg.user")] == [prompt, prompt]
        shown = {c: column_text(driver, c) for c in ("unsteered", "steered")}
        tokens = driver.find_elements(By.CSS_SELECTOR, "#steered .msg.assistant .tok")
        assert tokens and all(t.get_attribute("data-activation") is not None for t in tokens)
        assert "model.layers.1" in driver.find_element(By.CSS_SELECTOR, "#steered .badge").text
        assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")
        driver.save_screenshot(os.environ.get("SAESTEER_SCREENSHOT") or str(tmp_path / "page.png"))
    # the page shows what the API answers for the same request (the slider scales the spec by 1.5)
    with running(create_app(lm, registry, ServeSettings(api_key=KEY))) as url:
        expected = httpx.post(f"{url}/v1/saesteer/compare", headers=AUTH, timeout=60, json={
            "messages": [{"role": "user", "content": prompt}], "max_tokens": 12,
            "steering": {"spec": "steered", "strength": 1.5}}).json()
    assert shown == {"unsteered": expected["unsteered"]["text"], "steered": expected["steered"]["text"]}
    assert shown["unsteered"] != shown["steered"]
