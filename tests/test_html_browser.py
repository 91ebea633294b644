"""The explorer page in a real browser: headless Chromium opens the file,
the page's script reports what it drew in ``data-rendered``, and a
screenshot is kept (copied to ``$ATTNREF_ARTIFACTS`` when set).

Skips when no Chromium is on PATH; ``.ci/run`` installs Debian's
``chromium``.
"""
import html
import json
import os
import re
import shutil
import subprocess

import pytest

from attnref.html_report import render_html
from attnref.models import DemoModel
from attnref.report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
ATTACK = "<script>alert(1)</script>"
TEXT = ("Attention lets every token look at every other token. The cat chased the mouse "
        "because it was hungry, and one head links the pronoun to the animal. " + ATTACK)
#: virtual milliseconds the page may take; time is virtual, the run ends when idle
BUDGET_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}); "
                f".ci/run installs the Debian package chromium")


def open_in_browser(browser, page, tmp_path, *options):
    """Run headless Chromium on ``page`` (a path): (dumped DOM, stderr)."""
    command = [browser, "--headless", "--disable-gpu", "--hide-scrollbars",
               # as root Chromium refuses to start sandboxed; the page is our own file
               "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
               "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={BUDGET_MS}",
               "--dump-dom", *options, page.as_uri()]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished.stdout, finished.stderr


def rendered(dom):
    """The page's own account of what it drew: ``data-rendered`` on <body>."""
    found = re.search(r'<body[^>]*\sdata-rendered="([^"]*)"', dom)
    assert found, "the page never set data-rendered: its script did not finish"
    return json.loads(html.unescape(found.group(1)))


def console_errors(stderr, page):
    """Console lines Chromium logged for ``page``, and any uncaught error: the
    page logs nothing when all goes well."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and (
        page.as_uri() in line or "Uncaught" in line)]


def test_the_page_draws_every_layer_and_head_without_errors(browser, tmp_path):
    output = DemoModel().encode(TEXT)
    n_layers, n_heads, T, _ = output.attention_weights.shape
    page = tmp_path / "explorer.html"
    page.write_text(render_html(output, build_report(output, text=TEXT)), encoding="utf-8")
    screenshot = tmp_path / "explorer.png"
    dom, stderr = open_in_browser(browser, page, tmp_path, f"--screenshot={screenshot}",
                                  "--window-size=1400,1000")

    assert rendered(dom) == {"layers": n_layers, "heads": n_heads,
                             "thumbnails": n_layers * n_heads, "tokens": T, "errors": []}
    assert console_errors(stderr, page) == []
    assert "no errors" in dom
    # the markup in the text stayed text after the script ran
    assert dom.count("<script") == 3 and html.escape(ATTACK, quote=False) in dom
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("ATTNREF_ARTIFACTS"):
        artifacts = os.environ["ATTNREF_ARTIFACTS"]
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(screenshot, os.path.join(artifacts, "explorer-demo.png"))


def test_a_script_error_reaches_data_rendered(browser, tmp_path):
    """The collector works: a page whose drawing fails says so."""
    output = DemoModel().encode("the cat sat")
    page_text = render_html(output, build_report(output))
    broken = page_text.replace('"weights": "', '"weights": "!', 1)   # not base64
    assert broken != page_text
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    dom, _ = open_in_browser(browser, page, tmp_path)
    result = rendered(dom)
    assert result["thumbnails"] == 0 and len(result["errors"]) == 1
    assert result["errors"][0].startswith("render: InvalidCharacterError")
