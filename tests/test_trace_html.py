"""The trace's HTML page: one self-contained file that works offline, checked as text and in a real
(headless) Chromium through Playwright.

The browser test uses Debian's /usr/bin/chromium (never a downloaded browser) and skips, saying
why, when Chromium or Playwright is missing.

Why `--family gpt2`: the head-selector test needs at least two heads. At `--depth 2` the nanochat
family is 128 wide with head_dim 128, so it has ONE head; the gpt2 family uses head_dim 64, so the
same depth gives two heads of 64 (and `--seq-len 24` keeps the run to a few seconds). At 24 > 16
positions the walk-through has no mask grid, so the page's mask view is the one derived from the
attention pattern; the plain test below covers the grid of a short sequence. With `--blocks 0`,
block 1 is summarised in the walk-through, and its heatmap must still be on the page.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from glassgpt.cli import main
from glassgpt.see import html, walkthrough
from glassgpt.see.trace import TraceOptions, run_trace

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HOSTILE = "</script><b>&\"'"


def _chromium() -> str | None:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium")


class _HostileTokenizer:
    """The real tokenizer, except that token 0 of the row decodes to text that tries to break out
    of the page (a closing script tag, markup, quotes, an ampersand)."""

    def __init__(self, inner, hostile_id: int):
        self.inner, self.hostile_id = inner, hostile_id

    def token_piece(self, token_id: int) -> bytes:
        return HOSTILE.encode() if token_id == self.hostile_id else self.inner.token_piece(token_id)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_to_html_is_one_offline_file_with_everything_escaped():
    # seq 12 ≤ 16: the walk-through draws the mask as a grid, which becomes the page's mask view
    report = run_trace(TraceOptions(depth=2, family="gpt2", seq_len=12, steps=2, blocks="all"))
    report.tokenizer = _HostileTokenizer(report.tokenizer, report.token_ids[0])
    sections = walkthrough.build(report)
    page = html.to_html(report, sections, "a header with <angle> & 'quotes'")

    # offline: no URL of any kind, nothing loaded from elsewhere
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!#)""", page), "only in-page links are allowed"
    assert "@import" not in page and "url(" not in page.replace("url(#", "")
    # one file: one document, inline style and script only
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1 and page.rstrip().endswith("</html>")
    assert "<link" not in page and "<script src" not in page
    # the hostile piece never appears raw: not in the markup, not in the embedded JSON
    assert "</script><b>" not in page
    assert page.count("</script>") == page.count("<script") == 2
    assert "&lt;/script&gt;&lt;b&gt;" in page  # the token table shows it, escaped
    assert "a header with &lt;angle&gt; &amp; &#x27;quotes&#x27;" in page
    data = json.loads(re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.S).group(1))
    assert data["tokens"][0]["label"] == HOSTILE  # the JSON escapes decode back to the same text
    assert data["attention"]["0"]["heads"] == 2 and len(data["attention"]["0"]["values"][1]) == 12 * 12

    # every section, in order, with its anchor in the table of contents
    positions = [page.index(f'<section id="{s.id}">') for s in sections]
    assert positions == sorted(positions)
    for section in sections:
        assert f'href="#{section.id}"' in page
    # the views
    assert 'id="heatmap-0"' in page and 'id="head-select-0"' in page and 'id="heatmap-1"' in page
    assert 'id="gradient-flow"' in page and page.count("<svg") >= 3
    mask = re.search(r'<figure class="mask" id="mask-view">(.*?)</figure>', page, re.S).group(1)
    assert mask.count('class="on"') == 12 * 13 // 2 and mask.count('class="off"') == 12 * 11 // 2
    # a full explanation once per pattern, then just the meaning with a link back
    assert page.count("<dt>common bug</dt>") < page.count('<p class="meaning">')
    assert "(explained above)" in page


def test_to_html_survives_an_all_zero_gradient_iteration():
    # nanochat zero-initialises its output projections and head: in iteration 1 every gradient
    # below the head is exactly 0, which a log-scale chart must draw as 0, not crash on
    report = run_trace(TraceOptions(depth=1, seq_len=8, steps=1, blocks="all"))
    assert report.steps[0].stats["grad:blocks.0.resid.post"].norm == 0
    page = html.to_html(report, walkthrough.build(report), "zero gradients")
    chart = re.search(r'<figure id="gradient-flow".*?</figure>', page, re.S).group(0)
    assert ">0</text>" in chart and "nan" not in chart.lower()


def test_trace_html_in_a_real_browser(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (/usr/bin/chromium; on Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

    out = tmp_path / "trace.html"
    # --family gpt2: two heads at depth 2 (nanochat's head_dim 128 would give one head of 128);
    # --blocks 0: block 1 is only summarised in the walk-through, but still gets its heatmap
    assert main(["trace", "--seq-len", "24", "--depth", "2", "--family", "gpt2", "--blocks", "0",
                 "--no-color", "--html", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    section_ids = re.findall(r'<section id="([^"]+)">', text)
    assert {"tokens", "block-0-attention", "other-blocks", "gradients", "iterations"} <= set(section_ids)

    errors, requests = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")

            # the table of contents links to every section
            toc = page.locator("#toc a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            for id in section_ids:
                assert f"#{id}" in toc, f"no contents link to section {id}"
                assert page.locator(f"section#{id}").count() == 1

            # the attention heatmap of block 0, drawn, and redrawn for another head
            heatmap = page.locator("#heatmap-0")
            heatmap.scroll_into_view_if_needed()
            assert heatmap.locator("svg rect").count() >= 24 * 24
            assert heatmap.get_attribute("data-head") == "0"
            assert page.locator("#head-select-0 option").count() == 2
            svg_before, pixels_before = heatmap.inner_html(), heatmap.screenshot()
            page.select_option("#head-select-0", "1")
            assert heatmap.get_attribute("data-head") == "1"
            assert heatmap.inner_html() != svg_before, "changing the head did not redraw the heatmap"
            assert heatmap.screenshot() != pixels_before, "changing the head did not change the pixels"
            # token labels on the axes, whitespace made visible
            labels = heatmap.locator("svg text").all_text_contents()
            assert any("·" in label for label in labels), labels[:10]
            # the value under the mouse
            heatmap.scroll_into_view_if_needed()
            box = heatmap.locator("svg").bounding_box()  # the last cell ends 6 px inside the corner
            page.mouse.move(box["x"] + box["width"] - 10, box["y"] + box["height"] - 10)
            assert "query 23" in page.locator("#readout-0").text_content()
            assert page.locator("#legend-0 svg").count() == 1

            # the summarised block's heatmap, in the summary section, drawn too
            assert page.locator("section#other-blocks #heatmap-1 svg rect").count() >= 24 * 24

            # the gradient-flow chart and the mask view
            assert page.locator("#gradient-flow svg").count() >= 2
            assert page.locator("#gradient-flow svg rect").count() > 0
            assert page.locator("#mask-view").is_visible()
            assert "derived from block 0" in page.locator("#mask-view").text_content()
        finally:
            browser.close()

    assert errors == [], f"console errors: {errors}"
    assert requests == [out.as_uri()], f"the page made network requests: {requests}"
