"""The chat page of `glassgpt serve` in a real (headless) Chromium, through Playwright.

The server is real (uvicorn on a thread); the model is a script: it asks the calculator for
37 + 48, then writes text containing markup (which must show as text), then the same word until
its token limit, one event every 30 ms, so that streaming, Stop and Regenerate can be watched.
Uses Debian's /usr/bin/chromium (never a downloaded browser) and skips, saying why, when Chromium
or Playwright is missing.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from test_serve import ScriptedGPT, SlowChat, calculator_script, make_chat, serve
from test_trace_html import CHROMIUM_ARGS, _chromium

HOSTILE = " so <b>85</b> & <img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser_page(tokenizer_512):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (/usr/bin/chromium; on Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    script = calculator_script(tokenizer_512, after=HOSTILE + " la", end=False)  # " la" repeats to the limit
    chat = make_chat(tokenizer_512, ScriptedGPT(tokenizer_512, script), cls=SlowChat, delay=0.03)
    with serve(chat, max_tokens=200) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            seen = {"errors": [], "requests": [], "bodies": []}
            page.on("console", lambda message: seen["errors"].append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: seen["errors"].append(str(error)))
            page.on("request", lambda request: (seen["requests"].append(request.url),
                                                seen["bodies"].append(request.post_data) if request.method == "POST" else None))
            page.goto(server.url + "/")
            yield page, server, seen
        finally:
            browser.close()


def until(page, condition: str, timeout: float = 10.0) -> None:
    """Wait until the JavaScript expression is true. (Playwright's wait_for_function compiles its
    predicate with eval, which the page's Content-Security-Policy forbids: it is polled here.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.03)


def replies(page):
    return page.locator(".msg.assistant")


def reply_text(page) -> str:
    return replies(page).last.locator(".body").text_content()


def test_the_page_is_one_file_that_loads_nothing_from_elsewhere(browser_page):
    page, server, seen = browser_page
    html = httpx.get(server.url + "/").text
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", html)
    assert "@import" not in html and "url(" not in html and "<script src" not in html
    assert "innerHTML" not in html  # model text goes in with textContent only
    policy = httpx.get(server.url + "/").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    until(page, "document.querySelector('#model').textContent.includes('parameters')")
    assert all(url.startswith(server.url) or url.startswith("data:") for url in seen["requests"]), seen["requests"]


def test_the_page_shows_the_model_it_talks_to(browser_page):
    page, server, seen = browser_page
    until(page, "document.querySelector('#model').textContent.includes('parameters')")
    shown = page.locator("#model").text_content()
    assert shown.startswith("tiny · ") and "step 7" in shown and "sft" in shown and "context 512 tokens" in shown
    assert page.locator("#base-note").is_hidden()
    assert page.locator("#temperature").input_value() == "0.6" and page.locator("#top-k").input_value() == "50"


def test_a_reply_streams_in_stops_on_stop_and_shows_the_calculator_apart(browser_page):
    page, server, seen = browser_page
    page.fill("#max-tokens", "200")
    page.fill("#input", "What is 37 + 48?")
    page.click("#send")
    until(page, "document.body.dataset.state === 'busy'")
    assert page.locator("#send").is_disabled() and page.locator("#stop").is_enabled()
    # the calculator's work is a chip of its own, then the words stream in and grow
    until(page, "(document.querySelector('.msg.assistant .text') || {}).textContent?.length > 5")
    chip = replies(page).last.locator(".chip")
    assert chip.count() == 1 and chip.text_content() == "calculator: 37 + 48 → 85"
    first = len(reply_text(page))
    page.wait_for_timeout(300)
    second = len(reply_text(page))
    assert second > first, "the reply did not grow while streaming"
    # markup written by the model is shown as text, never parsed
    until(page, f"document.querySelector('.msg.assistant .text').textContent.length > {len(HOSTILE) + 3}")
    words = replies(page).last.locator(".text").text_content()
    assert words.startswith(HOSTILE)
    assert replies(page).last.locator("b, img").count() == 0
    page.click("#stop")
    until(page, "document.body.dataset.state === 'idle'")
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()
    assert page.locator("#regenerate").is_enabled()
    assert replies(page).last.locator(".note").text_content() == "(stopped)"
    stopped = reply_text(page)
    assert len(stopped) < len("calculator: 37 + 48 → 85" + HOSTILE) + 150  # far from its 200 tokens
    page.wait_for_timeout(300)
    assert reply_text(page) == stopped, "the reply went on after Stop"
    deadline = time.monotonic() + 2
    while httpx.get(server.url + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["running"] == 0  # Stop freed the server's worker too
    assert not seen["errors"], seen["errors"]


def test_regenerate_replaces_the_last_reply_and_the_history_goes_back_to_the_server(browser_page):
    page, server, seen = browser_page
    assert replies(page).count() == 1
    page.fill("#max-tokens", "24")
    page.click("#regenerate")
    until(page, "document.body.dataset.state === 'idle' && "
                           "document.querySelector('.msg.assistant .note')?.textContent.includes('token limit')")
    assert replies(page).count() == 1  # replaced, not added
    assert replies(page).last.locator(".note").text_content() == "(the reply reached its token limit)"
    assert replies(page).last.locator(".chip").count() == 1
    sent = json.loads(seen["bodies"][-1])
    assert [m["role"] for m in sent["messages"]] == ["user"] and sent["stream"] is True
    assert sent["max_tokens"] == 24 and sent["temperature"] == 0.6
    # a second message sends the whole history, calculator parts included, and the server accepts it
    page.fill("#input", "And then?")
    page.press("#input", "Enter")
    until(page, "document.querySelectorAll('.msg.assistant').length === 2 && "
                           "document.body.dataset.state === 'idle'")
    sent = json.loads(seen["bodies"][-1])
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert [p["type"] for p in sent["messages"][1]["content"]] == ["tool_call", "tool_result", "text"]
    assert page.locator(".failed").count() == 0
    assert not seen["errors"], seen["errors"]


def test_a_refused_request_shows_the_servers_reason_and_gives_the_message_back(browser_page):
    page, server, seen = browser_page
    page.fill("#temperature", "5")
    page.fill("#input", "too hot")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.failed")
    assert "temperature must be a number from 0 to 2" in replies(page).last.text_content()
    assert page.locator("#input").input_value() == "too hot"
    page.fill("#temperature", "0.6")


def test_new_chat_clears_the_conversation(browser_page):
    page, server, seen = browser_page
    assert page.locator(".msg").count() > 0
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    page.fill("#max-tokens", "12")
    page.fill("#input", "Hello again")
    page.click("#send")
    until(page, "document.body.dataset.state === 'idle' && document.querySelectorAll('.msg').length === 2")
    assert [m["role"] for m in json.loads(seen["bodies"][-1])["messages"]] == ["user"]
    # New chat in the middle of a reply stops it too
    page.fill("#max-tokens", "200")
    page.fill("#input", "Once more")
    page.click("#send")
    until(page, "document.body.dataset.state === 'busy'")
    page.click("#new-chat")
    page.wait_for_timeout(200)
    assert page.locator(".msg").count() == 0 and page.locator("#send").is_enabled()
