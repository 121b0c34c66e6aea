"""`tuneloop ui` in a real headless Chromium (Selenium): every page on a project built from real
tiny runs shows its main table; three ratings given with the keyboard land in the traffic store;
promote and roll back through the typed confirmations; a run's curve grows while it trains.

Skipped only when Chromium (or its driver) is not installed: `.ci/browser.sh` installs them.
Set TUNELOOP_UI_SCREENSHOTS=DIR to save a small PNG of each page (docs/ui/ uses them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import LABELS
from test_ui import ui_project

CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
        if p
    ),
    None,
)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None, reason="headless Chromium not installed (run .ci/browser.sh)"
)
SHOTS = os.environ.get("TUNELOOP_UI_SCREENSHOTS")
# page, the element that must hold rows (CSS), what counts as a row
MAIN = {
    "/": ("#runs-table tbody tr td a", "run links"),
    "/runs": ("#runs-table tbody tr td a", "run links"),
    "/runs/first": ("#files tbody tr", "files"),
    "/evaluation": ("#systems-table tbody tr", "systems"),
    "/data?embeddings=0": ("#findings tbody tr", "findings"),
    "/registry": ("#versions tbody tr td a", "versions"),
    "/monitor": ("#traffic-cards .card", "traffic cards"),
    "/review": ("#recent-ratings tbody tr, #name-form, #review-item", "review"),
    "/playground": ("#model-0 option", "models"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory, learnable_model):
    """The app over a private copy of the project, served on a free loopback port."""
    import uvicorn

    from tuneloop.ui.app import create_app
    from tuneloop.ui.project import Project

    src = ui_project(tmp_path_factory, learnable_model).parent
    root = tmp_path_factory.mktemp("uibrowser") / "proj"
    shutil.copytree(src, root, symlinks=True)
    project = Project(root / "tuneloop.yaml")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(
        uvicorn.Config(create_app(project), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield {"base": f"http://127.0.0.1:{port}", "project": project, "root": root}
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, cond, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text(driver, selector: str) -> str:
    """textContent of the first match, read in one script call (no stale element between a
    find and a read while the page reloads or replaces a fragment)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : ''", selector
    )


def screenshot(driver, name: str) -> None:
    """A PNG of the whole page, shrunk to a small palette image, into $TUNELOOP_UI_SCREENSHOTS."""
    if not SHOTS:
        return
    from PIL import Image

    out = Path(SHOTS)
    out.mkdir(parents=True, exist_ok=True)
    height = min(2200, driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, max(600, height))
    raw = out / f".{name}.raw.png"
    driver.save_screenshot(str(raw))
    driver.set_window_size(1280, 900)
    img = Image.open(raw).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    img.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(out / f"{name}.png", optimize=True)
    raw.unlink()


def no_errors(driver) -> None:
    """No script error or CSP violation in the browser console."""
    logs = [x for x in driver.get_log("browser") if x["level"] == "SEVERE" and "favicon" not in x["message"]]
    assert not logs, logs


def test_every_page_shows_its_main_table(site, browser):
    for path, (selector, what) in MAIN.items():
        browser.get(site["base"] + path)
        if path.startswith("/data"):  # the audit runs in the background; the page reloads itself
            wait(browser, lambda d: css(d, "#findings tbody tr"), 120)
        rows = css(browser, selector)
        assert rows, f"{path}: no {what} ({selector})"
        assert "tuneloop" in browser.title
        no_errors(browser)
        name = {"/": "overview", "/data?embeddings=0": "data", "/runs/first": "run"}.get(
            path, path.strip("/")
        )
        screenshot(browser, name)
    browser.get(site["base"] + "/evaluation")
    assert len(css(browser, "#predictions tbody tr")) == 12
    assert css(browser, "table.per-class tbody tr") and css(browser, "#comparisons tbody tr")
    css(browser, 'a[data-filter="errors"]')[0].click()
    wait(browser, lambda d: "filter=errors" in d.current_url)
    for row in css(browser, "#predictions tbody tr"):
        cells = row.find_elements("css selector", "td")
        if len(cells) == 1:  # the fine-tune made no error
            assert "no example matches" in row.text
        else:
            assert "no" in cells[3].get_attribute("class").split()  # the fine-tune's cell: wrong


def test_rate_three_items_with_the_keyboard(site, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from tuneloop.serve.store import TrafficStore, store_url
    from tuneloop.ui.review import recent

    browser.get(site["base"] + "/review")
    box = css(browser, "#rater-name")[0]
    box.send_keys("browser-rater" + Keys.ENTER)
    wait(browser, lambda d: css(d, "#item-id"))
    seen = []
    for key in ("y", "2", "1"):
        item = text(browser, "#item-id")
        seen.append(
            (item, css(browser, "#right")[0].get_attribute("value") if css(browser, "#right") else None)
        )
        ActionChains(browser).send_keys(key).perform()
        wait(browser, lambda d, item=item: text(d, "#item-id") not in ("", item))
        assert "saved your rating of " + item in browser.page_source
    no_errors(browser)
    screenshot(browser, "review")
    store = TrafficStore(store_url(site["project"].cfg))
    fb = {f["request_id"]: f for f in store.feedback()}
    (i1, model1), (i2, _), (i3, _) = seen
    assert fb[i1]["label"] == model1 and fb[i1]["rating"] == 5.0  # "y": the model's label is right
    assert fb[i2]["label"] == LABELS[1] and fb[i3]["label"] == LABELS[0]  # keys 2 and 1: labels 2 and 1
    mine = [r for r in recent(store, 50) if r["rater"] == "browser-rater"]
    assert {r["item_id"] for r in mine} == {i1, i2, i3}
    assert all(r["feedback_id"] is not None for r in mine)
    rows = css(browser, "#recent-ratings tbody tr")
    assert sum("browser-rater" in r.text for r in rows) == 3


def test_promote_and_roll_back(site, browser):
    from selenium.webdriver.support.ui import Select

    reg = site["project"].registry
    champion = reg.aliases()["champion"]
    browser.get(site["base"] + "/registry")
    form = css(browser, "#promote-form")[0]
    target = Select(form.find_element("name", "version")).first_selected_option.get_attribute("value")
    assert target != champion
    button = form.find_element("css selector", "button[type=submit]")
    assert not button.is_enabled()  # locked until the version id is typed
    form.find_element("name", "reason").send_keys("better on the fresh slice")
    form.find_element("name", "confirm").send_keys(target)
    assert button.is_enabled()
    button.click()
    wait(browser, lambda d: f"{target} is the champion" in d.page_source)
    assert reg.aliases()["champion"] == target
    assert css(browser, "#alias-champion")[0].text == f"champion: {target}"
    assert "better on the fresh slice" in css(browser, "#history tbody tr")[0].text
    form = css(browser, "#rollback-form")[0]
    form.find_element("name", "reason").send_keys("users complained")
    form.find_element("name", "confirm").send_keys(champion)
    form.find_element("css selector", "button[type=submit]").click()
    wait(browser, lambda d: "rolled back" in d.page_source)
    assert reg.aliases()["champion"] == champion
    last = reg.history()[-1]
    assert last["action"] == "rollback" and last["evidence"]["reason"] == "users complained"
    no_errors(browser)


def _points(browser) -> int:
    """Points of the loss chart, read in one script call (the page replaces it while live)."""
    n = browser.execute_script(
        "const e = document.querySelector('#loss-chart'); return e ? e.getAttribute('data-points') : null"
    )
    return int(n or 0)


def _status(browser) -> str:
    return text(browser, "#run-status")


def test_curve_grows_while_metrics_are_appended(site, browser):
    run = site["root"] / "runs" / "appended"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: lora}\ntrain: {epochs: 1, max_steps: 50}\n")
    log = open(run / "metrics.jsonl", "a")

    def step(s: int) -> None:
        log.write(
            json.dumps({"step": s, "epoch": s / 50, "loss": 3.0 / s, "lr": 1e-3, "elapsed_s": s}) + "\n"
        )
        log.flush()

    for s in range(1, 4):
        step(s)
    browser.get(site["base"] + "/runs/appended")
    assert _points(browser) == 3 and _status(browser) == "training"
    for s in range(4, 8):
        step(s)
    wait(browser, lambda d: _points(d) == 7, 15)  # the page polls; no reload
    assert "ETA" in browser.execute_script("return document.querySelector('#live').textContent")
    log.close()


def test_curve_updates_while_a_tiny_training_runs(site, browser):
    from tuneloop.train.recipe import train

    cfg = site["project"].cfg
    cfg = cfg.model_copy(
        update={
            "output": cfg.output.model_copy(update={"name": "watched"}),
            "train": cfg.train.model_copy(update={"max_steps": 400, "eval_every": 10, "sample_every": None}),
        }
    )
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(summary=train(cfg, quiet=True)[1]), daemon=True)
    thread.start()
    metrics = site["root"] / "runs" / "watched" / "metrics.jsonl"
    wait(browser, lambda d: metrics.exists() and metrics.stat().st_size > 0, 120)
    browser.get(site["base"] + "/runs/watched")
    first = _points(browser)
    status = _status(browser)
    wait(browser, lambda d: _points(d) > first, 60)
    thread.join(timeout=300)
    assert "summary" in done
    if status == "training":  # seen live: the page follows the run to its end
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        wait(browser, lambda d: _status(d) == "finished", 30)
        assert _points(browser) == sum("loss" in r for r in rows) + sum("val_loss" in r for r in rows)
    screenshot(browser, "run-live")


def test_playground_chats_with_two_models(site, browser):
    from selenium.webdriver.support.ui import Select

    browser.get(site["base"] + "/playground")
    assert Select(css(browser, "#model-0")[0]).first_selected_option.get_attribute("value") == "champion"
    assert Select(css(browser, "#model-1")[0]).first_selected_option.get_attribute("value") == "base"
    css(browser, "input[name=max_tokens]")[0].clear()
    css(browser, "input[name=max_tokens]")[0].send_keys("4")
    css(browser, "#message")[0].send_keys("where is my card")
    css(browser, "#play button[type=submit]")[0].click()
    wait(
        browser,
        lambda d: (
            d.execute_script(
                "return [...document.querySelectorAll('#answers small')]"
                ".filter(s => s.textContent.includes('tokens')).length"
            )
            == 2
        ),
        120,
    )
    cards = css(browser, "#answers .card")
    assert [c.find_element("css selector", "h3").text for c in cards] == ["champion", "base"]
    assert all("user: where is my card" in c.text for c in cards)
    no_errors(browser)
    screenshot(browser, "playground")
