"""strhub-demo in a real browser: headless Chromium (Debian's chromium and chromium-driver), driven with Selenium,
loads the page on 127.0.0.1, uploads an image from misc/test_images and reads back the text the page shows, which
must be what read.py prints for the same checkpoint."""
import csv
import io
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
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from strhub.app import demo

REPO = Path(__file__).resolve().parents[1]
IMAGES = [REPO / "misc" / "test_images" / name for name in ("image_1576.jpeg", "demo_1.png", "ic13_word_256.png")]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, timeout: float) -> float:
    """Seconds until `url` answers 200 (the process started just before this is called)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise AssertionError(f"strhub-demo ended with {process.returncode}: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"no page at {url} after {timeout} s")


def browser() -> webdriver.Chrome:
    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), "apt-get install chromium chromium-driver"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1500"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def test_a_missing_checkpoint_is_one_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with pytest.raises(SystemExit) as ended:
        demo.main(["no_such.ckpt"])
    assert ended.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "strhub-demo: error: checkpoint not found: no_such.ckpt is neither a path from here nor the name of a released "
        "checkpoint (strhub.hub.list_released() and docs/released_models.md list the released names)")


def test_the_page_reads_uploaded_images_as_read_py_does(checkpoint: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    shutil.copy(checkpoint, tmp_path / "tiny.ckpt")  # named on the page as typed
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    server = subprocess.Popen([sys.executable, "-m", "strhub.app.demo", "tiny.ckpt", "--random", "parseq-mini",
                             "--port", str(port), "--device", "cpu"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reading = subprocess.Popen([sys.executable, "read.py", str(checkpoint), *map(str, IMAGES), "--device", "cpu",
                                "--confidence"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # beside the demo's start
    driver = None
    try:
        seconds = wait_for_page(url, server, START_TIMEOUT_S)
        print(f"strhub-demo answered after {seconds:.1f} s")
        output, errors = reading.communicate(timeout=600)
        assert reading.returncode == 0, errors
        expected, confidences = zip(*(line.replace(str(REPO / "misc" / "test_images") + "/", "").rsplit(" (", 1)
                                      for line in output.splitlines()))
        driver = browser()
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#files input[type=file]"))
        upload.send_keys("\n".join(map(str, IMAGES)))
        wait.until(lambda d: all(image.stem in d.find_element(By.ID, "files").text for image in IMAGES))  # uploaded
        driver.find_element(By.ID, "read").click()
        shown = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#texts textarea").get_attribute("value"))
        assert shown.splitlines() == list(expected)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#figures img")) >= len(IMAGES))
        assert all(image.name in driver.find_element(By.ID, "table").text for image in IMAGES)
        link = driver.find_element(By.CSS_SELECTOR, "#csv a[href]").get_attribute("href")
        with urllib.request.urlopen(link, timeout=30) as response:  # the CSV the page offers
            rows = list(csv.DictReader(io.StringIO(response.read().decode("utf-8"))))
        assert [f"{row['file']}: {row['text']}" for row in rows] == list(expected)
        assert [f"{float(row['confidence']):.4f})" for row in rows] == list(confidences)
        assert "random weights" in driver.find_element(By.ID, "about").text  # tiny's CLIP started from random weights
        screenshot = Path(os.environ.get("STRHUB_DEMO_SCREENSHOT") or tmp_path / "demo_page.png")
        driver.save_screenshot(str(screenshot))
        driver.find_element(By.CSS_SELECTOR, "#checkpoint input").click()  # the other checkpoint
        wait.until(lambda d: d.find_element(By.XPATH, "//li[contains(., 'parseq-mini (random weights)')]")).click()
        wait.until(lambda d: "PARSeq, 32x128 images" in d.find_element(By.ID, "about").text)
        driver.find_element(By.ID, "read").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#texts textarea").get_attribute("value") != shown)
        with Image.open(screenshot) as image:
            assert image.size[0] >= 1000 and len(image.convert("L").getcolors(1 << 16) or ()) > 50
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        reading.kill()
        reading.wait()
