"""A real headless browser for the page's test (tests/test_page.py) and its screenshot (docs/page_screenshot.py):
Debian's chromium driven by Playwright for Python, with a fresh profile. Playwright's own browser builds are
never downloaded or used (no `playwright install`): the caller passes the path of the system's chromium.
"""
import tempfile

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def open_browser(playwright, chromium, workdir, width=1280, height=900):
    """A browser context (close it when done) on a new profile folder under `workdir`."""
    return playwright.chromium.launch_persistent_context(
        tempfile.mkdtemp(prefix="profile-", dir=str(workdir)), executable_path=chromium, headless=True,
        args=CHROMIUM_ARGS, viewport={"width": width, "height": height})
