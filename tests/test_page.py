"""The page at GET /, in a real headless browser (Debian's chromium driven by Playwright), on real processes;
and what its live view costs Redis, counted by Redis itself (INFO commandstats).

The browser test is skipped, with the reason, where chromium cannot be installed or Playwright is missing.
Screenshots go to the test's temporary folder.
"""
import concurrent.futures
import contextlib
import os
import re
import threading
import time

import numpy as np
import pytest
import requests

from imgq.observe import activity
from imgq.jobs import keys
from imgq import settings
from bench.browser import open_browser
from conftest import CASTLE, grey_png
from imgq.jobs.queue import JobQueue
from sysdeps import ensure_command

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def wait_until(condition, timeout=30, message="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(0.05)


def test_curl_gets_json_and_a_browser_gets_the_page(service):
    url, _ = service.start_web()
    for accept in (None, "*/*", "application/json", "application/json, text/html;q=0.9"):
        headers = {"Accept": accept} if accept else {}
        response = requests.get(url + "/", headers=headers, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json", accept
        assert "POST /predict" in response.json()["endpoints"] and "GET /activity" in response.json()["endpoints"]
        assert "Accept" in response.headers["Vary"]
    response = requests.get(url + "/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "<script src=\"static/page.js\">" in response.text and "Accept" in response.headers["Vary"]
    # Everything the page loads is ours: no http(s):// reference to anywhere else.
    for name in ("index.html", "page.css", "page.js"):
        text = requests.get(f"{url}/static/{name}", timeout=10).text
        assert not re.search(r"https?://", text), name


def test_the_page_in_a_browser(service, tmp_path):
    """Upload castle_image.jpg (real EfficientNet-Lite0 worker) and see "castle"; watch that worker stop and
    leave, and an upload then end in a readable 504; burst 40 copies against a slow stand-in worker and watch
    the queue rise and drain; upload a text file and a too large one and read the errors; no JavaScript
    error all along."""
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    chromium = ensure_command("chromium", "chromium")  # Debian's, installed if missing (else a skip)
    lite0 = service.start_worker(MODEL="efficientnet_lite0")
    url, _ = service.start_web(processes=2, MODEL="efficientnet_lite0", REQUEST_TIMEOUT=6, MAX_UPLOAD_BYTES=200_000)

    with sync_api.sync_playwright() as playwright:
        browser = open_browser(playwright, chromium, tmp_path)
        try:
            page = browser.new_page()
            problems = []
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            expect = sync_api.expect
            page.goto(url + "/")
            expect(page.locator("#live-workers")).to_have_text("1", timeout=10_000)

            # One image, through the real model.
            page.set_input_files("#file-input", CASTLE)
            top = page.locator("#predictions li").first
            expect(top.locator(".label")).to_have_text("castle", timeout=60_000)
            probability = float(re.fullmatch(r"([\d.]+) %", top.locator(".prob").inner_text()).group(1))
            assert 50 < probability <= 100
            assert page.locator("#predictions li").count() == 5
            timings = page.locator("#timings").inner_text()
            for name in ("prepare", "queue wait", "inference", "total"):
                assert name in timings
            assert re.search(r"batch of \d+", page.locator("#batch").inner_text())
            assert page.locator("#preview").is_visible()
            expect(page.locator("#workers")).to_contain_text("efficientnet_lite0", timeout=10_000)
            page.screenshot(path=str(tmp_path / "castle.png"), full_page=True)

            # The worker stops: the live view shows it leaving, and no live worker.
            service.stop(lite0)
            expect(page.locator("#live-workers")).to_have_text("0", timeout=10_000)
            expect(page.locator("#workers tr.gone")).to_contain_text("stopped", timeout=5_000)
            page.set_input_files("#file-input", CASTLE)  # nobody to classify it: 504 after REQUEST_TIMEOUT
            expect(page.locator("#error")).to_contain_text("504 · No answer in time.", timeout=30_000)
            expect(page.locator("#error")).to_contain_text("REQUEST_TIMEOUT")

            # A slow stand-in worker, then a burst: the queue rises above 0 and drains back to 0.
            service.start_worker(MODEL="standin", STANDIN_LATENCY_MS=300)
            expect(page.locator("#live-workers")).to_have_text("1", timeout=10_000)
            page.fill("#burst-n", "40")
            page.click("#burst-send")
            # Polled from here: the page's CSP (script-src 'self') refuses wait_for_function's eval, as it should.
            expect(page.locator("#queue-length")).not_to_have_text("0", timeout=30_000)
            page.screenshot(path=str(tmp_path / "burst.png"), full_page=True)
            expect(page.locator("#burst-status")).to_contain_text("40 answered (40 × 200)", timeout=60_000)
            expect(page.locator("#queue-length")).to_have_text("0", timeout=10_000)
            sizes = [int(s) for s in page.locator("#batches tr td:nth-child(3)").all_inner_texts()]
            assert max(sizes) > 1, sizes  # the waiting copies were taken together

            # A text file: a readable error, from the server's own message.
            page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                        "buffer": b"not an image, just some words\n"}])
            error = page.locator("#error")
            expect(error).to_be_visible(timeout=10_000)
            expected = requests.post(url + "/predict", files={"image": ("notes.txt", b"not an image\n")},
                                     timeout=10).json()["error"]
            expect(error).to_contain_text("400 · This file cannot be classified.")
            assert expected.lower() in error.inner_text().lower()
            assert not page.locator("#result").is_visible()
            page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

            # Over MAX_UPLOAD_BYTES: refused before it is read, and said so.
            page.set_input_files("#file-input", files=[{"name": "big.jpg", "mimeType": "image/jpeg",
                                                        "buffer": b"\xff" * 300_000}])
            expect(error).to_contain_text("413 · This file is too large.", timeout=10_000)
            expect(error).to_contain_text("MAX_UPLOAD_BYTES")
        finally:
            browser.close()
    # Chromium notes every 4xx/5xx answer on its console ("Failed to load resource"): the 504, 400 and 413
    # the test provoked are expected; anything else is a fault of the page.
    expected = {"console.error: Failed to load resource: the server responded with a status of " + status
                for status in ("504 (GATEWAY TIMEOUT)", "400 (BAD REQUEST)", "413 (REQUEST ENTITY TOO LARGE)")}
    assert [p for p in problems if p not in expected] == [], problems


@contextlib.contextmanager
def _live_commands(redis_server):
    """The commands Redis ran that name a `:live:` key, while the block runs (MONITOR on a connection of its own)."""
    seen, stop = [], threading.Event()
    monitor = redis_server.client().monitor()
    monitor.__enter__()

    def read():
        while not stop.is_set():
            try:
                command = monitor.next_command()["command"]
            except Exception:  # the connection closed under us: the block has ended
                return
            if ":live:" in command:
                seen.append(command)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        stop.set()
        monitor.connection.disconnect()
        reader.join(5)


def _calls(client):
    return {name[len("cmdstat_"):]: stats["calls"] for name, stats in client.info("commandstats").items()}


def test_the_live_view_costs_redis_nothing_without_a_page(service):
    """Counted by Redis itself (INFO commandstats, on a Redis of the test's own): nothing while no page is open
    and the service is idle; under load without a page, at most one check a second per process and nothing
    written; with pages open, one snapshot per refresh per web process however many pages, 9 commands each."""
    redis_server = service.use_own_redis()
    service.start_worker()
    url, _ = service.start_web(processes=1)
    client = redis_server.client()
    # With one worker, its heartbeat script checks no other worker (no EXISTS), and neither the worker nor the
    # request path sends GET, PTTL, LPUSH or EXPIRE (nor, idle, LLEN or LRANGE): each of these is the live view's.
    live_only = ("exists", "get", "pttl", "llen", "lpush", "expire")

    client.config_resetstat()
    time.sleep(3)  # idle with no page: what is measured is a span of time in which nothing may happen
    idle = _calls(client)
    assert not any(idle.get(c) for c in live_only + ("lrange",)), idle

    # Under load the request path uses GET, EXPIRE, EXISTS ... for itself, so here Redis' MONITOR shows which
    # commands name a live-view key (the scripts' inner calls included).
    started = time.monotonic()
    with _live_commands(redis_server) as live:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda level: requests.post(
                url + "/predict", files={"image": ("g.png", grey_png(level))}, timeout=30).status_code, range(40)))
        time.sleep(2 * settings.LIVE_INTERVAL)  # the span in which the web process's thread sends its notes, or not
    elapsed = time.monotonic() - started
    assert answers == [200] * 40
    # The worker and the web process each look whether a page watches, at most once per LIVE_INTERVAL, and
    # write nothing.
    # (EVALSHA: the gate script that looks, and writes only when a page watches.)
    assert {c.split()[0].upper() for c in live} <= {"EXISTS", "EVALSHA"}, live[:10]
    looks = [c for c in live if c.upper().startswith("EXISTS")]
    assert len(looks) <= 2 * (elapsed / settings.LIVE_INTERVAL + 1), live
    assert not [k for k in service.keys() if ":live:" in k]  # nothing was recorded

    # Three pages refreshing together once a second, four times: one snapshot per refresh, not three.
    client.config_resetstat()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for _ in range(4):
            started = time.monotonic()
            bodies = list(pool.map(lambda _: requests.get(url + "/activity", timeout=10).json(), range(3)))
            assert all(b["live_workers"] == 1 and b["queue_length"] == 0 for b in bodies)
            time.sleep(max(0.0, settings.LIVE_INTERVAL - (time.monotonic() - started)))
    watched = _calls(client)  # idle service: LLEN and LRANGE come from the snapshots alone
    snapshots = watched.get("get", 0)
    assert 4 <= snapshots <= 8, watched  # 12 if every page cost a snapshot
    # Each snapshot: EVALSHA, GET + SET (the watched flag), SMEMBERS, LLEN of both lanes, 2 LRANGE, and per
    # worker PTTL + LLEN + HGET (its model): 11 commands with one worker.
    assert watched.get("pttl") == snapshots and watched.get("llen") == 3 * snapshots
    assert watched.get("lrange") == 2 * snapshots and not watched.get("lpush")

    # While watched, each batch and each second of answers leaves one record; they expire with the window.
    requests.post(url + "/predict", files={"image": ("g.png", grey_png(7))}, timeout=30)
    wait_until(lambda: client.llen(keys.live_requests(service.prefix)) >= 1, 10, "a request record")
    assert client.llen(keys.live_batches(service.prefix)) == 1
    assert 0 < client.ttl(keys.live_batches(service.prefix)) <= settings.LIVE_WINDOW
    body = requests.get(url + "/activity", timeout=10).json()
    assert body["requests"]["count"] == 1 and body["requests"]["statuses"] == {"200": 1}
    assert body["requests"]["p50_ms"] > 0
    assert body["batches"][0]["size"] == 1 and body["workers"][0]["model"] == "standin"


def test_rates_and_percentiles_from_the_records(redis_server):
    """The snapshot's p50/p95 agree with the latencies recorded (within the histogram's ±2.5 %), its counts with
    what was answered; with no page watching, nothing is written."""
    client = redis_server.client()
    prefix = "t" + os.urandom(4).hex()
    log = activity.RequestLog(client, prefix, thread=False)
    latencies = np.random.default_rng(7).lognormal(np.log(0.040), 0.6, 2000)  # seconds
    for seconds in latencies:
        log.add(200, seconds)
    log.add(503, 0.002)
    assert log.flush() is False and client.keys(prefix + ":*") == []  # unwatched: dropped, not written

    activity.snapshot(client, prefix)  # a page looks: from now on, records are kept
    log = activity.RequestLog(client, prefix, thread=False)  # (the first would look again after LIVE_INTERVAL)
    for seconds in latencies:
        log.add(200, seconds)
    for _ in range(3):
        log.add(503, 0.002)
    assert log.flush() is True
    assert activity.batch_done(JobQueue(client, prefix), "w1", "standin", 7, 12.5) is True
    body = activity.snapshot(client, prefix)
    assert body["requests"]["count"] == 2003 and body["requests"]["statuses"] == {"200": 2000, "503": 3}
    for name, q in (("p50_ms", 50), ("p95_ms", 95)):
        exact = np.percentile(latencies * 1000, q)
        assert abs(body["requests"][name] - exact) <= 0.03 * exact, (name, body["requests"][name], exact)
    assert body["requests"]["per_second"] == round(2003 / body["window_s"], 2)
    assert body["batches"] == [{"t": body["batches"][0]["t"], "worker": "w1", "model": "standin", "size": 7,
                                "inference_ms": 12.5}]
    client.delete(*client.keys(prefix + ":*"))
