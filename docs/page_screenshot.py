"""docs/page.png: a screenshot of the page at GET / on a real running service (shown in the README).

    python -m docs.page_screenshot [--out docs/page.png] [--copies 100]

Starts a redis-server, a gunicorn web server and one EfficientNet-Lite0 worker (imgq/testing.py), opens the
page in Debian's chromium (bench/browser.py; `apt-get install chromium` if it is missing), classifies
castle_image.jpg, sends a burst of copies, and takes the screenshot in the second half of the burst, when
jobs wait on the queue and the live view already shows batches, requests/s and latencies. Needs Playwright for Python (requirements.txt, Tests).
"""
import argparse
import os
import shutil
import sys
import tempfile

from PIL import Image

from bench.browser import open_browser
from imgq.testing import Stack
from simple_request import default_image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "page.png"))
    parser.add_argument("--copies", type=int, default=100, help="copies the burst sends (at most 200)")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        sys.exit("page_screenshot: no `chromium` on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    castle = default_image()
    workdir = tempfile.mkdtemp(prefix="page-shot-")
    with Stack(workdir, MODEL="efficientnet_lite0", LOG_LEVEL="WARNING") as stack:
        stack.start_worker()
        url, _ = stack.start_web(processes=2)
        with sync_playwright() as playwright:
            browser = open_browser(playwright, chromium, workdir, width=1280, height=860)
            try:
                page = browser.new_page()
                page.goto(url + "/")
                page.set_input_files("#file-input", castle)
                expect(page.locator("#predictions li .label").first).to_have_text("castle", timeout=60_000)
                page.fill("#burst-n", str(args.copies))
                page.click("#burst-send")
                page.wait_for_function(
                    f"parseInt(document.getElementById('burst-status').textContent.split(': ')[1]) >= {args.copies // 2}"
                    " && Number(document.getElementById('queue-length').textContent) > 0", timeout=120_000)
                page.screenshot(path=args.out, full_page=True)
                expect(page.locator("#burst-status")).to_contain_text(f"{args.copies} answered", timeout=120_000)
            finally:
                browser.close()
    shutil.rmtree(workdir, ignore_errors=True)
    # 256 colours keep text and colours as they were at a third of the size (the README carries it).
    Image.open(args.out).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"page_screenshot: wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
