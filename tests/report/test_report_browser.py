"""The report pages opened in headless Chromium: no console errors, pictures load, tables sort, links jump.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them) and selenium
(the dev extra); without them every test here is skipped, saying which is missing. Screenshots of
the three pages are saved in the test's temporary folder (paths printed; ``pytest -s`` shows them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import NEEDS_CHROMIUM, chromium
from test_report import validation_summary, write_eval_fixture, write_training_fixture

from refineseg.data import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
from refineseg.report import write_compare_report, write_eval_report, write_training_report

K = len(SYNTHETIC_CLASSES)

pytestmark = NEEDS_CHROMIUM


@pytest.fixture(scope="module")
def driver():
    browser = chromium("1400,1000")
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The three pages: evaluate report, training report and comparison, over 40 px synthetic images."""
    base = tmp_path_factory.mktemp("pages")
    a = write_eval_fixture(base / "eval_a", n=8, size=40, variant=0)
    b = write_eval_fixture(base / "eval_b", n=8, size=40, variant=1)
    run = base / "run"
    write_training_fixture(run, steps=60, every=20)
    matrix = np.random.default_rng(0).integers(0, 500, (K, K))
    return {
        "eval": write_eval_report(a, worst=3, best=2),
        "training": write_training_report(run, validation_summary(), matrix, step=60, palette=SYNTHETIC_PALETTE),
        "compare": write_compare_report(a, b, base / "compare.html", top=3),
    }


def column_keys(browser, column: int) -> list[float]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#per-class tbody tr'))"
        ".map(r => r.cells[arguments[0]].getAttribute('data-sort'));",
        column,
    )


@pytest.mark.parametrize(
    "name, header, images", [("eval", "IoU %", 5 * 4), ("training", "IoU %", 0), ("compare", "\u0394 IoU (pp)", 3 * 4)]
)
def test_page_in_chromium(driver, pages, tmp_path, name, header, images):
    from selenium.webdriver.common.by import By

    path = pages[name]
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    entries = driver.get_log("browser")  # what loading logged (the previous page's were read by its test)

    loaded = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1);")
    assert len(loaded) == images and all(w > 0 for w in loaded), loaded
    assert driver.execute_script("return document.querySelectorAll('#per-class tbody tr').length;") == K

    # sort the per-class table by a numeric column: ascending, then descending on a second click
    heads = driver.find_elements(By.CSS_SELECTOR, "#per-class thead th")
    column = [h.text for h in heads].index(header)
    before = column_keys(driver, column)
    heads[column].click()
    ascending = column_keys(driver, column)
    assert heads[column].get_attribute("aria-sort") == "ascending"
    numbers = [float(v) for v in ascending if v != ""]
    assert numbers == sorted(numbers) and ascending[len(numbers) :] == [""] * (K - len(numbers))
    heads[column].click()
    descending = column_keys(driver, column)
    numbers = [float(v) for v in descending if v != ""]
    assert numbers == sorted(numbers, reverse=True) and heads[column].get_attribute("aria-sort") == "descending"
    assert ascending != before or descending != before
    assert sorted(before) == sorted(ascending)  # the same rows, reordered

    links = driver.find_elements(By.CSS_SELECTOR, "a[href^='#img-']")
    assert len(links) == images // 4
    if links:  # a per-image link jumps to its picture panel
        target = links[0].get_attribute("href").split("#")[1]
        links[0].click()
        assert driver.execute_script("return document.querySelector(':target').id;") == target

    errors = [e for e in entries + driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    driver.execute_script("window.scrollTo(0, 0); location.hash = '';")
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, min(height + 140, 12000))
    shot = tmp_path / f"{name}_report.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    driver.set_window_size(1400, 1000)
    print(f"screenshot: {shot}")
