"""The studio in a real Chromium: pick a class and two orders, watch the panels fill, stop a run.

Needs Debian's Chromium (`apt-get install chromium`); skipped without it. The browser may
only reach the app itself: every other request is aborted, so nothing touches the network.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import serve  # the same in-process server as the API tests
from PIL import Image
from playwright.sync_api import Page, Route, expect, sync_playwright

from rar_demo.orders import ORDER_NAMES

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with serve() as local_url:
        yield local_url


@pytest.fixture
def page(url: str) -> Iterator[Page]:
    host = urlparse(url).netloc

    def local_only(route: Route) -> None:
        if urlparse(route.request.url).netloc == host:
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", local_only)
        page.goto(url)
        expect(page.get_by_role("button", name="Generate")).to_be_visible(timeout=30_000)
        yield page
        browser.close()


def _choose(page: Page, class_name: str, orders: list[str], speed: int) -> None:
    page.get_by_label("Class").click()
    page.get_by_role("option", name=class_name).click()
    for name in ORDER_NAMES:
        page.get_by_role("checkbox", name=name, exact=True).set_checked(name in orders)
    speed_box = page.get_by_label("number input for Speed (steps per second)")
    speed_box.fill(str(speed))
    speed_box.press("Enter")


# Counts, every few ms, the messages that reached the live panels (each flips the block's
# turn class) and the frames the first panel showed (its topmost visible image).
WATCH_FRAMES = """() => {
  const seen = window.seen = {messages: 0, frames: 0};
  let turn = null, frame = null;
  setInterval(() => {
    const live = document.querySelector('.live');
    if (live && live.className !== turn) { turn = live.className; seen.messages++; }
    const shown = [...document.querySelectorAll('.panel')][0]?.querySelectorAll('img') ?? [];
    const top = [...shown].filter(i => getComputedStyle(i).visibility === 'visible').pop();
    if (top && top.src !== frame) { frame = top.src; seen.frames++; }
  }, 5);
}"""


def test_generation_animates_the_panels_then_shows_results(page: Page) -> None:
    _choose(page, "Food & Drink", ["raster", "spiral"], speed=32)  # ~8 s: time to watch
    panels = page.locator(".panel")
    expect(panels).to_have_count(2)
    expect(panels.first).to_contain_text("raster")
    expect(panels.last).to_contain_text("spiral")

    page.evaluate(WATCH_FRAMES)
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Step", timeout=60_000)
    shots = []
    while "Done" not in status.inner_text() and len(shots) < 60:
        shots.append(panels.first.screenshot())
        time.sleep(0.25)
    distinct = len(set(shots))
    assert distinct >= 5, f"the panels changed only {distinct} times during the run"
    # Each message carries several frames (app.FLIP_S), and the page plays them all.
    seen = page.evaluate("window.seen")
    assert seen["frames"] >= 2 * seen["messages"] >= 20, seen

    expect(status).to_contain_text("Done", timeout=60_000)
    expect(status).to_contain_text("Food & Drink")
    for panel in panels.all():  # the final images, one to a panel
        expect(panel.locator("img")).to_have_count(1)
        expect(panel.locator("img")).to_be_visible()
    expect(page.locator("#animation")).to_contain_text(".webp", timeout=30_000)
    for plot in ("#order-plot", "#stats-plot"):  # order heatmaps, per-step confidence
        expect(page.locator(f"{plot} img")).to_be_visible(timeout=30_000)


def test_stop_ends_a_run_at_once(page: Page, count_steps: list[int]) -> None:
    steps = count_steps
    _choose(page, "Flags", ["random"], speed=8)  # 32 s if left alone
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Step", timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    expect(status).to_contain_text("Stopped at step", timeout=10_000)
    shown, taken = status.inner_text(), len(steps)
    time.sleep(1.5)  # a live run would take ~12 more steps
    assert status.inner_text() == shown and f"Stopped at step {taken} / 256" in shown
    assert 0 < taken < 256 and len(steps) == taken
    expect(page.get_by_text("Error")).to_have_count(0)  # no red badges on the outputs


def test_a_bad_input_is_shown_by_its_field_and_keeps_the_results(page: Page) -> None:
    _choose(page, "Flags", ["raster"], speed=512)
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status")
    # The run has ended only once its animation is out: "Done ... preparing the animation"
    # comes first, and Gradio ignores a click on an event still running.
    expect(page.locator("#animation")).to_contain_text(".webp", timeout=60_000)
    expect(status).to_contain_text("Done")
    before = page.locator(".panel img").first.get_attribute("src")
    seed = page.get_by_label("Seed")
    seed.fill("1.5")
    page.get_by_role("button", name="Generate").click()
    # By the field itself (Gradio also repeats it in a screen reader's live region).
    expect(page.locator("#seed").get_by_text("seed must be a whole number")).to_be_visible(
        timeout=10_000
    )
    time.sleep(1.0)
    expect(status).to_contain_text("Done")  # the last run's results stay
    assert page.locator(".panel img").first.get_attribute("src") == before


def test_generate_clears_the_panels_at_once(page: Page) -> None:
    _choose(page, "Flags", ["raster"], speed=512)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#animation")).to_contain_text(".webp", timeout=60_000)  # all done
    _choose(page, "Flags", ["raster", "spiral"], speed=16)
    panels = page.locator(".panel")
    expect(panels).to_have_count(2)
    page.get_by_role("button", name="Generate").click()
    # Within a moment both panels are pending (hatched, light), not the last run's picture.
    time.sleep(0.5)
    for panel in panels.all():
        shot = panel.locator("img").last.screenshot()  # the last frame shows on top
        pixels = np.asarray(Image.open(io.BytesIO(shot)))[..., :3]
        assert pixels.mean() > 150, "a panel still shows an earlier picture"


def test_a_generated_picture_is_edited_end_to_end(page: Page) -> None:
    """Generate, click the final image: the Edit tab opens with it and shows the cells the
    centre mask regenerates; Edit runs and keeps the rest of the picture."""
    _choose(page, "Flags", ["raster"], speed=512)
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Done", timeout=60_000)
    page.locator("#finals button.thumbnail-item, #finals .thumbnail-item").first.click()
    expect(page.get_by_role("tab", name="Edit a picture", selected=True)).to_be_visible()
    preview = page.locator("#edit-preview img")
    expect(preview).to_be_visible(timeout=20_000)

    def centre_hatched() -> bool:
        shot = np.asarray(Image.open(io.BytesIO(preview.screenshot())))[..., :3]
        h, w = shot.shape[:2]
        centre = shot[3 * h // 8 : 5 * h // 8, 3 * w // 8 : 5 * w // 8]
        # Pending cells: 0.25 * picture + 0.75 * a grey of 0.80 or 0.88 (render.mark_progress).
        in_band = (centre >= 0.60 * 255) & (centre <= 0.91 * 255)
        return in_band.all(axis=-1).mean() > 0.9

    deadline = time.monotonic() + 20
    while not centre_hatched():
        assert time.monotonic() < deadline, "the preview never showed the centre hatched"
        time.sleep(0.5)
    _choose(page, "Animals & Nature", ["raster", "random"], speed=64)
    page.get_by_role("button", name="Edit", exact=True).click()
    expect(status).to_contain_text("edit of 64 cells", timeout=20_000)
    expect(status).to_contain_text("Done", timeout=60_000)
    expect(page.locator(".panel")).to_have_count(2)
    expect(page.get_by_text("Error")).to_have_count(0)


def test_step_counts_compare_side_by_side(page: Page) -> None:
    """Two orders at two step counts: four labelled panels the moment a count is ticked, and
    four labelled final images."""
    _choose(page, "Flags", ["random", "raster"], speed=128)
    page.get_by_role("checkbox", name="64", exact=True).set_checked(True)
    captions = page.locator(".panel figcaption")
    expect(captions).to_have_count(4)
    expected = [f"{o} · {n} steps" for o in ("raster", "random") for n in (256, 64)]
    assert captions.all_inner_texts() == expected
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status")
    expect(status).to_contain_text("Done: 256 / 64 steps", timeout=60_000)
    expect(page.locator("#finals img")).to_have_count(4, timeout=30_000)
