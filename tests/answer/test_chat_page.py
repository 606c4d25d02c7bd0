"""The compliance chat page in real headless Chromium (Debian's `chromium`, driven by Playwright):
log in, ask, see a cited answer and its passage, see a refusal."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.answer.helpers import CARRY_OVER, CARRY_OVER_CITATION, RESTRICTED

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (make test installs it as root)",
)


@pytest.fixture(scope="module")
def page(live_url, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(120_000)  # one answer on the CPU takes seconds, not minutes
        page.goto(live_url + "/")
        yield page
        browser.close()


def test_a_wrong_key_is_refused_on_the_login_form(page):
    page.fill("#key", "not-a-key")
    page.click("#loginBtn")
    page.wait_for_selector("#loginErr:not(:empty)")
    assert "not valid" in page.inner_text("#loginErr")
    assert not page.is_visible("#question")


def test_log_in_ask_and_see_a_cited_answer_with_its_passage(page, tmp_path_factory):
    page.fill("#key", "demo-alice-7Qm2")
    page.click("#loginBtn")
    page.wait_for_selector("#question", state="visible")
    assert "signed in as alice" in page.inner_text("#who")

    page.fill("#question", CARRY_OVER)
    page.click("#send")
    answer = page.wait_for_selector(".a.answered")
    assert "8 days" in answer.inner_text()
    chip = page.wait_for_selector(f'.cite[data-citation="{CARRY_OVER_CITATION}"]')
    chip.click()
    assert "Annual Leave Policy (UK)" in page.inner_text("#source h2")
    assert "carry over up to 8 days" in page.inner_text("#passage mark")
    page.screenshot(path=str(tmp_path_factory.mktemp("shots") / "answered.png"))


def test_a_question_on_a_restricted_policy_shows_a_refusal(page):
    page.fill("#question", RESTRICTED)
    page.click("#send")
    refusal = page.wait_for_selector(".a.refused")
    text = refusal.inner_text()
    assert "Cannot answer" in text and "none of the policies you have access to" in text
    assert "Reward Team" not in page.content()


def test_work_beside_answering_shows_as_a_banner_until_it_ends(page, service):
    from answer.service import BackgroundWork

    assert not page.is_visible("#banner")  # nothing runs beside answering: no banner
    work = service.background = BackgroundWork(title="Training an adapter")
    try:
        work.update("training step 3/40, loss 1.234", progress=3 / 40, eta_s=900)
        page.reload()
        banner = page.wait_for_selector("#banner", state="visible")
        text = banner.inner_text()
        assert "Training an adapter: training step 3/40" in text and "about 16 min left" in text
        assert "(adapter v1)" in text  # what answers meanwhile
        work.finish("done", "adapter v2 passed the gate and is live now")
        page.reload()
        page.wait_for_function("document.querySelector('#banner').textContent.includes('live now')")
    finally:
        service.background = None
