"""The review-and-release of a held job in a real browser: headless Chromium driven by Selenium.

A physicist logs in, finds the held job of a real node run, reads its checks, opens its report, releases it
with a comment and sees the audit entry; the sCT arrives at a dcmtk storescp. A viewer sees no release.
Screenshots of every page are saved in ``test-artifacts/console/`` for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from tests.sct_node.node_helpers import wait_for
from tests.sct_node.test_console_pages import PASSWORDS, held_job  # noqa: F401 - the fixture this test uses

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                 reason="chromium and chromium-driver not installed (tests/install-system-tools.sh)")]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    drivers = []

    def start():
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def _login(driver, base: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(lambda: not driver.current_url.endswith("/login"), 20, f"{name} to be logged in")


def _shot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def test_a_physicist_releases_a_held_job_in_a_browser(held_job, browser):  # noqa: F811 - the imported fixture
    from selenium.webdriver.common.by import By

    node, job, mr, scp, base = held_job
    patient = str(pydicom.dcmread(mr.files[0], stop_before_pixels=True).PatientName)

    anonymous = browser()
    anonymous.get(f"{base}/jobs/{job.id}")
    assert anonymous.current_url.endswith("/login") and patient not in anonymous.page_source
    _shot(anonymous, "01-login")

    viewer = browser()
    _login(viewer, base, "victor")
    viewer.get(f"{base}/jobs/{job.id}")
    assert patient in viewer.page_source and not viewer.find_elements(By.ID, "actions")

    driver = browser()
    _login(driver, base, "alice")
    driver.find_element(By.NAME, "state").send_keys("held")
    driver.find_element(By.CSS_SELECTOR, "form[action='/'] button").click()
    _shot(driver, "02-jobs-held")
    driver.find_element(By.LINK_TEXT, str(job.id)).click()
    assert driver.find_element(By.ID, "checks").text.count("FAIL") >= 1
    _shot(driver, "03-held-job")
    pdf = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('pdf').href).then(async r => done([r.status, r.headers.get('content-type'),"
        " new TextDecoder().decode((await r.arrayBuffer()).slice(0, 4))]));")
    assert pdf == [200, "application/pdf", "%PDF"]
    driver.find_element(By.ID, "figures").click()
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 4 and all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    _shot(driver, "03b-report-pages")
    driver.back()

    form = driver.find_element(By.CSS_SELECTOR, f"form[action='/jobs/{job.id}/release']")
    form.find_element(By.NAME, "comment").send_keys("FAIL reviewed in the browser: bone under-estimated, "
                                                    "dose difference within tolerance")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(lambda: node.state.job(job.id).state == "done", 60, "the released sCT to be delivered")
    driver.refresh()
    assert "done" in driver.find_element(By.TAG_NAME, "h1").text
    _shot(driver, "04-released-job")
    received = [str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in scp.folder.iterdir() if p.is_file()]
    assert received.count("CT") == len(mr.files)

    driver.find_element(By.LINK_TEXT, "Series").click()
    assert str(job.id) in driver.find_element(By.ID, "series").text
    _shot(driver, "08-series")
    driver.find_element(By.LINK_TEXT, "Trends").click()
    assert "mr" in driver.find_element(By.ID, "trends").text
    assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0
               for i in driver.find_elements(By.TAG_NAME, "img"))
    _shot(driver, "07-trends")
    driver.find_element(By.LINK_TEXT, "Node").click()
    assert "listening on port" in driver.find_element(By.ID, "node").text
    _shot(driver, "06-node")
    driver.find_element(By.LINK_TEXT, "Audit").click()
    rows = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "table.audit tr")]
    assert any("alice" in row and "release" in row and "FAIL reviewed in the browser" in row for row in rows)
    _shot(driver, "05-audit")
