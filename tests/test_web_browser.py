"""`silo serve` in a real browser: Debian's Chromium, headless, driven by selenium through Debian's chromedriver.

The server runs as a subprocess on a free localhost port with the shipped silo-tiny prior, offline. Without
Chromium or its driver the test skips, naming the missing executable (`.ci/run` installs both).
"""

from __future__ import annotations

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
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _executables() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser is None:
        pytest.skip("needs the chromium executable (apt-get install -y chromium chromium-driver)")
    if driver is None:
        pytest.skip("needs the chromedriver executable (apt-get install -y chromium-driver)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``silo serve`` on a free port with the shipped prior; yields (url, output folder); stopped afterwards."""
    port = _free_port()
    tmp_path = tmp_path_factory.mktemp("serve")
    out = tmp_path / "served"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio-uploads"),
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "silo",
            "serve",
            "--port",
            str(port),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            "--no-lpips",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"silo serve exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"silo serve did not answer within 180 s:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _chromium():
    """A headless Chromium driven through Debian's chromedriver (never a downloaded browser or driver)."""
    browser_path, driver_path = _executables()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture()
def browser():
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, what, timeout: float = 120.0, message: str = ""):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        try:
            return what(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check, message)


def _upload(driver, path: Path) -> None:
    """Put a file into the page's photo upload (replacing any file there)."""
    from selenium.webdriver.common.by import By

    clear = driver.find_elements(By.CSS_SELECTOR, "#silo-upload button[aria-label='Clear']")
    if clear:
        clear[0].click()
    field = _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#silo-upload input[type=file]"),
        30,
        "no file input in the upload",
    )[0]
    field.send_keys(str(path))
    _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#silo-upload td.filename[aria-label='{path.name}']"),
        30,
        f"{path.name} not shown as uploaded",
    )


def _choose(driver, elem_id: str, value: str) -> None:
    """Pick ``value`` in a Gradio dropdown: open it, click the option."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    option = _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} li[role=option][aria-label='{value}']"),
        10,
        f"{value!r} not offered in {elem_id}",
    )[0]
    option.click()
    _wait(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input").get_attribute("value") == value,
        10,
        f"{elem_id} did not take {value!r}",
    )


def test_serve_restores_an_upload_and_reports_a_corrupt_one(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    from silo.data.photos import load_example
    from silo.errors import SiloError
    from silo.io.images import load_image, tensor_to_pil

    url, out = server
    photo = tmp_path / "astronaut-256.png"  # the bundled example at 256 px, as a file a user uploads
    tensor_to_pil(load_example("astronaut", 256)).save(photo)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)

    browser.get(url)
    _wait(browser, lambda d: d.find_elements(By.ID, "silo-run"), 60, "the page did not load")
    browser.find_element(By.XPATH, "//*[@id='silo-mode']//label[.//*[normalize-space()='simulate']]").click()
    _choose(browser, "silo-task", "sr4")
    _choose(browser, "silo-method", "silo")

    started = time.perf_counter()
    _upload(browser, photo)
    browser.find_element(By.ID, "silo-run").click()
    image = _wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#silo-result img[src]"), 180, "no result image on the page"
    )[0]
    seconds = time.perf_counter() - started
    _wait(browser, lambda d: "psnr" in d.find_element(By.ID, "silo-metrics").text, 30, "no metrics on the page")
    metrics = browser.find_element(By.ID, "silo-metrics").text
    status = browser.find_element(By.ID, "silo-status").text
    print(f"upload to result, astronaut 256 px, sr4, silo-tiny: {seconds:.1f} s")

    assert image.get_attribute("naturalWidth") == "256", "the result is not the 256 px restoration"
    assert "ssim" in metrics and "consistency_psnr" in metrics and "silo" in metrics, metrics
    assert status.startswith("done: 1 result"), status
    (log_path,) = out.glob("astronaut-256_sr4_silo_s1000_*.json")
    log = json.loads(log_path.read_text())
    assert log["input"] == "astronaut-256.png" and log["mode"] == "simulate" and log["task"]["name"] == "sr4"
    assert log["setting_sources"]["steps"].startswith("prior card"), log["setting_sources"]
    assert f"{log['metrics']['psnr']:.4g}" in metrics, (log["metrics"]["psnr"], metrics)
    assert log_path.with_suffix(".png").is_file() and (out / f"{log_path.stem}_grid.png").is_file()
    settings_text = browser.find_element(By.ID, "silo-settings").text
    assert "prior card" in settings_text and "operator card" in settings_text, settings_text
    screenshot = tmp_path / "silo-serve.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")

    before = sorted(p.name for p in out.iterdir())
    _upload(browser, corrupt)
    browser.find_element(By.ID, "silo-run").click()
    error = _wait(
        browser,
        lambda d: (t := d.find_element(By.ID, "silo-status").text).startswith("error") and t,
        120,
        "no error line on the page",
    )
    with pytest.raises(SiloError) as cli_error:  # what `silo restore corrupt.png` says, naming the file
        load_image(corrupt)
    assert error == "error: " + str(cli_error.value).replace(str(corrupt), corrupt.name), error
    assert error.startswith("error: corrupt.png: ") and "\n" not in error
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#silo-result img[src]"), "a stale result is still shown"
    assert sorted(p.name for p in out.iterdir()) == before, "a failed job wrote files"
    assert Image.open(screenshot).size[0] >= 1000


def _prepare(driver, url: str, photo: Path, seed: int, steps: int) -> None:
    """A page ready to restore ``photo`` (simulate, sr4, SILO) from noise with ``steps`` steps and ``seed``."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda d: d.find_elements(By.ID, "silo-run"), 60, "the page did not load")
    driver.find_element(By.XPATH, "//*[@id='silo-mode']//label[.//*[normalize-space()='simulate']]").click()
    driver.find_element(By.XPATH, "//button[contains(., 'Advanced')]").click()
    for field, value in (("silo-start-strength", "1"), ("silo-steps", str(steps)), ("silo-seed", str(seed))):
        box = _wait(driver, lambda d, f=field: d.find_elements(By.CSS_SELECTOR, f"#{f} textarea, #{f} input"), 20)[0]
        box.send_keys(value)
    _upload(driver, photo)


def test_two_jobs_at_once_run_one_after_the_other_and_the_second_sees_its_place(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    from silo.testing import random_images

    url, out = server
    photo = tmp_path / "two-jobs.png"
    x = random_images(1, (64, 64), seed=3)[0]
    Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(photo)
    other = _chromium()
    try:
        pages = [browser, other]
        for i, page in enumerate(pages):
            _prepare(page, url, photo, seed=500 + i, steps=30)
        for page in pages:
            page.find_element(By.ID, "silo-run").click()
        trackers = "#silo-result [data-testid=status-tracker], #silo-status [data-testid=status-tracker]"
        seen: list[set[str]] = [set(), set()]
        finished: list[float | None] = [None, None]
        start = time.monotonic()
        while None in finished and time.monotonic() - start < 240:
            for i, page in enumerate(pages):
                if finished[i] is None:
                    seen[i] |= {" ".join(e.text.split()) for e in page.find_elements(By.CSS_SELECTOR, trackers)}
                    if page.find_elements(By.CSS_SELECTOR, "#silo-result img[src]"):
                        finished[i] = time.monotonic() - start
            time.sleep(0.1)
        assert None not in finished, f"a job did not finish: {finished}"
        print(f"two jobs at once: finished after {finished[0]:.1f} s and {finished[1]:.1f} s")
    finally:
        other.quit()
    assert any(t.startswith("queue: 1/1") for t in seen[1]), f"the second page never showed its place: {seen[1]}"
    assert not any(t.startswith("queue:") for t in seen[0]), seen[0]
    logs = [json.loads(next(out.glob(f"two-jobs_sr4_silo_s{500 + i}_*.json")).read_text()) for i in range(2)]
    assert logs[0]["finished"] <= logs[1]["finished"] and finished[0] < finished[1]


def test_a_mask_painted_with_the_brush_is_the_hole(browser, server, tmp_path):
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from silo.data.photos import load_example
    from silo.io.images import tensor_to_pil

    url, out = server
    photo = tmp_path / "hole.png"
    tensor_to_pil(load_example("coffee", 128)).save(photo)
    browser.get(url)
    _wait(browser, lambda d: d.find_elements(By.ID, "silo-run"), 60, "the page did not load")
    _choose(browser, "silo-task", "inpaint_center")
    _choose(browser, "silo-method", "naive")  # the masked measurement itself: the hole is exactly what was painted
    _upload(browser, photo)
    browser.find_element(By.XPATH, "//button[contains(., 'Mask, blur kernel')]").click()
    _wait(browser, lambda d: d.find_elements(By.XPATH, "//button[contains(., 'Paint on the uploaded photo')]"), 20)[
        0
    ].click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#silo-mask-editor canvas"), 20, "no editor canvas")
    time.sleep(1)  # the photo drawn as the editor's background
    brush = browser.find_elements(By.CSS_SELECTOR, "#silo-mask-editor button[aria-label='Brush']")
    if brush:
        brush[0].click()
    canvas = max(
        browser.find_elements(By.CSS_SELECTOR, "#silo-mask-editor canvas"),
        key=lambda c: c.size["width"] * c.size["height"],
    )
    ActionChains(browser).move_to_element_with_offset(canvas, -20, -20).click_and_hold().move_by_offset(
        40, 0
    ).move_by_offset(0, 20).move_by_offset(-40, 0).release().perform()
    time.sleep(0.5)
    browser.find_element(By.ID, "silo-run").click()
    status = _wait(
        browser,
        lambda d: (t := d.find_element(By.ID, "silo-status").text).startswith(("done", "error")) and t,
        120,
        "no status after painting",
    )
    assert status.startswith("done: 1 result"), status
    (log_path,) = out.glob("hole_inpaint_center_naive_*.json")
    assert json.loads(log_path.read_text())["mode"] == "measurement"
    result = np.asarray(Image.open(log_path.with_suffix(".png"))).astype(int)
    changed = np.abs(result - np.asarray(Image.open(photo)).astype(int)).max(-1) > 0
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 200, "the painted hole is missing"
    assert rows.min() > 5 and cols.min() > 5 and rows.max() < 122 and cols.max() < 122, "the hole is not where painted"
