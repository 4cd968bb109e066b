"""``aevb serve`` in a real browser: Debian's Chromium, headless, driven by Playwright.

Starts ``python -m aevb serve RUN --port 0`` in a subprocess, opens the page, drags on the
latent map and moves a slider, and checks that the decoded image's pixels change each time
and that the page logged no error. For conditional runs it picks another class (a
label-conditioned CVAE) or another example to complete (a completion CVAE) and checks the
decoded image changes with the context. Skips when Chromium (``/usr/bin/chromium``, or
``$AEVB_CHROMIUM``) or the ``playwright`` package is missing; ``scripts/install-browser.sh``
installs both.

Environment:
    AEVB_SCREENSHOT: save a full-page screenshot here (the README's picture).
    AEVB_SERVE_RUN: explore this run instead of the tests' small one (for a nicer picture).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import aevb

CHROMIUM = Path(os.environ.get("AEVB_CHROMIUM", "/usr/bin/chromium"))
# Headless and quiet: no GPU, no network of its own, nothing from Google's servers.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Outside CI the test skips without a browser; under CI=true (where .ci/run installs one)
# a missing browser is a failure, so the test cannot silently stop running.
if os.environ.get("CI") == "true":
    import playwright.sync_api as sync_api

    assert CHROMIUM.is_file(), f"CI: no Chromium at {CHROMIUM}; scripts/install-browser.sh failed"
else:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (scripts/install-browser.sh)"
    )
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM} (scripts/install-browser.sh installs Debian's)",
            allow_module_level=True,
        )
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture
def server_url(run_dir):
    """``aevb serve RUN --port 0`` in a subprocess; its URL while it runs."""
    with serve(os.environ.get("AEVB_SERVE_RUN") or str(run_dir)) as url:
        yield url


@contextlib.contextmanager
def serve(run: str | Path) -> Iterator[str]:
    """``aevb serve RUN --port 0`` in a subprocess; its URL while it runs."""
    src = str(Path(aevb.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "aevb", "serve", str(run), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "aevb serve: exploring RUN at http://HOST:PORT/ ..."
        assert "http://" in line, f"aevb serve did not start: {line}{proc.stderr.read()}"
        yield line.split(" at ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def decoded(page) -> tuple[int, str]:
    """(draw count, PNG data URL) of the decoded-image canvas."""
    return page.eval_on_selector("#decoded", "c => [Number(c.dataset.version), c.toDataURL()]")


def wait_for_redraw(page, version: int) -> None:
    page.wait_for_function(
        "v => Number(document.getElementById('decoded').dataset.version) > v", arg=version
    )


def settle(page) -> None:
    """Wait until the page has no request in flight (``body[data-busy]``, set by app.js)."""
    page.wait_for_function("document.body.dataset.busy === '0'")


@contextlib.contextmanager
def open_page(url: str, profile: Path, errors: list[str]) -> Iterator:
    """The explorer at ``url`` in headless Chromium (a fresh profile), once it is ready;
    page errors and console errors go to ``errors``."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            settle(page)
            yield page
        finally:
            browser.close()


def test_dragging_on_the_map_and_moving_a_slider_decode_new_images(server_url, tmp_path):
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server_url)
            page.wait_for_selector("body[data-ready='1']")
            assert "test examples" in page.locator("#map-hint").inner_text()

            v0, before = decoded(page)
            box = page.locator("#map").bounding_box()
            x, y, w, h = box["x"], box["y"], box["width"], box["height"]
            page.mouse.move(x + 0.2 * w, y + 0.25 * h)
            page.mouse.down()
            page.mouse.move(x + 0.75 * w, y + 0.7 * h, steps=12)
            page.mouse.up()
            wait_for_redraw(page, v0)
            settle(page)
            v1, after_drag = decoded(page)
            assert after_drag != before, "the decoded image did not change after the drag"
            if os.environ.get("AEVB_SCREENSHOT"):  # the page as the drag left it
                Path(os.environ["AEVB_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=os.environ["AEVB_SCREENSHOT"], full_page=True)

            page.focus("#sliders input")
            page.keyboard.press("PageUp")  # the first latent dimension up a tenth of its range
            page.keyboard.press("PageUp")
            wait_for_redraw(page, v1)
            settle(page)
            _, after_slider = decoded(page)
            assert after_slider != after_drag, "the decoded image did not change with the slider"
            assert page.locator("#status").inner_text() == ""
        finally:
            browser.close()
    assert errors == []


def test_picking_a_class_decodes_the_same_latent_as_that_class(cvae_run, tmp_path):
    errors: list[str] = []
    with serve(cvae_run("labels-prior")) as url, open_page(url, tmp_path / "p", errors) as page:
        assert page.locator("#class-pick").is_visible()
        assert page.locator("#class option").all_inner_texts() == [str(k) for k in range(10)]
        prior_before = page.eval_on_selector("#prior-grid", "c => c.toDataURL()")
        v0, as_0 = decoded(page)
        page.select_option("#class", "7")
        wait_for_redraw(page, v0)
        settle(page)
        v1, as_7 = decoded(page)
        assert as_7 != as_0, "the decoded image did not change with the class"
        assert "y = 7" in page.locator("#decoded-caption").inner_text()
        prior_after = page.eval_on_selector("#prior-grid", "c => c.toDataURL()")
        assert prior_after != prior_before, "the prior samples did not follow the class"
        page.select_option("#class", "0")  # back to the first class: the first picture again
        wait_for_redraw(page, v1)
        settle(page)
        assert decoded(page)[1] == as_0
        page.fill("#example-index", "5")  # an example as the start selects its class
        page.click("#from-example")
        settle(page)
        label = page.eval_on_selector("#example-caption", "e => e.textContent.split('label ')[1]")
        assert page.locator("#class").input_value() == label
        assert page.locator("#status").inner_text() == ""
    assert errors == []


def test_a_completion_model_completes_the_chosen_example(cvae_run, tmp_path):
    errors: list[str] = []
    with serve(cvae_run("mask")) as url, open_page(url, tmp_path / "p", errors) as page:
        assert page.locator("#context-note").is_visible()
        assert page.locator("#class-pick").is_hidden()
        v0, first = decoded(page)
        page.fill("#example-index", "3")
        page.dispatch_event("#example-index", "change")
        wait_for_redraw(page, v0)
        settle(page)
        _, third = decoded(page)
        assert third != first, "the decoded image did not follow the example's observed part"
        assert "example #3" in page.locator("#decoded-caption").inner_text()
        assert page.locator("#status").inner_text() == ""
    assert errors == []
