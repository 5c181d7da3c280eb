"""Decoding an upload is bounded (upload → images.prepare_image, in the web server): only the accepted
formats are opened, any decoder error is a 400, a decode that would take too much memory is a 413 before it
starts, and one web process decodes at most DECODE_CONCURRENCY uploads at once (503 + Retry-After when
all slots stay busy), so 16 concurrent worst-case uploads cannot take its memory past a known bound.
"""
import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from imgq.web import images
from imgq import settings
from conftest import REPO, TEST_ENV, Stack, standin_label
from imgq.errors import BadImage, DecodeBusy, ServiceError
from imgq.web.images import prepare_image


def save(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


SMALL = Image.new("RGB", (32, 32), (10, 200, 30))


def test_the_api_page_lists_exactly_the_accepted_formats():
    with open(f"{REPO}/docs/api.md") as f:
        line = next(row for row in f if row.startswith("Accepted formats:"))
    assert tuple(re.findall(r"`([A-Z0-9]+)`", line)) == images.FORMATS


# Formats Pillow opens but the service refuses (each a decoder it would otherwise have to trust).
REFUSED_FORMATS = {
    "AVIF": lambda: save(SMALL, "AVIF"),
    "DDS": lambda: save(SMALL, "DDS"),
    "ICO": lambda: save(SMALL, "ICO"),
    "JPEG 2000": lambda: save(SMALL, "JPEG2000"),
    "PPM": lambda: save(SMALL, "PPM"),
    "TGA": lambda: save(SMALL, "TGA"),
    "PCX": lambda: save(SMALL, "PCX"),
    "SGI": lambda: save(SMALL, "SGI"),
    "QOI": lambda: save(SMALL, "QOI"),
    "EPS": lambda: save(SMALL, "EPS"),
    "PDF": lambda: save(SMALL, "PDF"),
    "corrupt AVIF": lambda: (lambda d: d[:40] + bytes(len(d) - 40))(save(SMALL, "AVIF")),
    "BLP header": lambda: b"BLP2" + bytes(200),
    "DDS header, no pixels": lambda: save(SMALL, "DDS")[:128],
}


@pytest.mark.parametrize("name", REFUSED_FORMATS)
def test_formats_outside_the_list_are_refused_with_400(name):
    with pytest.raises(BadImage) as refused:
        prepare_image(REFUSED_FORMATS[name](), (224, 224))
    assert refused.value.status == 400 and "not an image format we can read" in str(refused.value)


def test_any_decoder_exception_is_a_400(monkeypatch):
    # A decoder raising something nobody expects (as AVIF's RuntimeError or DDS's NotImplementedError did).
    def explode(self, *args):
        raise NotImplementedError("this sub-format is not supported")
    monkeypatch.setattr(Image.Image, "resize", explode)
    with pytest.raises(BadImage) as refused:
        prepare_image(save(SMALL, "PNG"), (224, 224))
    assert refused.value.status == 400 and "could not be decoded (PNG)" in str(refused.value)


def big_16bit_png(side):
    """The issue's case: a valid, tiny (tens of KB) 16-bit greyscale PNG of side x side pixels."""
    values = np.zeros((side, side), np.uint16)
    values[::7] = 40000
    return save(Image.fromarray(values), "PNG")


def test_16bit_png_is_reduced_before_it_is_converted():
    pixels = prepare_image(big_16bit_png(3000), (224, 224))
    # Every 7th row at 40000/65535: the mean grey is 1/7 of 156.
    assert pixels.shape == (224, 224, 3) and abs(pixels.mean() - 40000 / 65535 * 255 / 7) < 3


def test_a_decode_over_the_memory_budget_is_413_before_it_starts(monkeypatch):
    monkeypatch.setattr(settings, "MAX_DECODE_MB", 8)
    data = save(Image.new("RGBA", (2000, 2000)), "WEBP", lossless=True)  # 4 Mpx x 17 B: 68 MB
    with pytest.raises(BadImage) as refused:
        prepare_image(data, (224, 224))
    assert refused.value.status == 413 and "MAX_DECODE_MB" in str(refused.value)


def test_no_free_decode_slot_is_503_with_retry_after(monkeypatch):
    monkeypatch.setattr(settings, "DECODE_WAIT", 0.05)
    held = 0
    while images._slots.acquire(timeout=0):  # what DECODE_CONCURRENCY busy decodes look like
        held += 1
    try:
        with pytest.raises(DecodeBusy) as busy:
            prepare_image(save(SMALL, "PNG"), (224, 224))
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
        assert isinstance(busy.value, ServiceError)  # the app's one error handler answers it
    finally:
        for _ in range(held):
            images._slots.release()
    assert prepare_image(save(SMALL, "PNG"), (224, 224)).shape == (224, 224, 3)


@pytest.mark.parametrize("kind", ["jpeg-progressive", "png-rgba", "png-16bit", "png-palette-transparent", "gif",
                                  "tiff-float", "webp-lossless-rgba"])
def test_decode_bytes_is_at_least_what_a_decode_takes(kind):
    """The estimate MAX_DECODE_MB is checked against must hold (say, after a Pillow upgrade)."""
    from bench.decode import measure_memory
    grew, estimate, _ = measure_memory(kind, 2000, 1250)  # 2.5 Mpx, in a fresh process
    assert grew <= estimate * 1.05 + 2 * 2**20, (kind, grew / 2.5e6, estimate / 2.5e6)


# --- Through a real gunicorn web process -------------------------------------------------------------

BUDGET_MB = 48  # MAX_DECODE_MB for the test: the bound scales with it, and a small one keeps the test quick


def worst_case_uploads():
    """Uploads sized to just fit BUDGET_MB by decode_bytes, of the formats that take the most per pixel."""
    def side(per_pixel):  # as near the budget as decode_bytes allows
        return int((BUDGET_MB * 2**20 / per_pixel) ** 0.5 * 0.99)
    webp_side, png_side, rgba_side = side(17), side(2.8), side(8.8)  # WebP, 16-bit PNG, RGBA PNG
    webp = save(Image.new("RGBA", (webp_side, webp_side), (9, 9, 9, 255)), "WEBP", lossless=True, method=0)
    rgba = save(Image.new("RGBA", (rgba_side, rgba_side), (9, 9, 9, 255)), "PNG")
    uploads = [webp, big_16bit_png(png_side), rgba]
    for data in uploads:  # each just inside the budget: the worst an attacker can send
        assert 0.9 < images.decode_bytes(Image.open(io.BytesIO(data))) / (BUDGET_MB * 2**20) < 1
    return uploads


def process_rss(pid):
    """RSS of gunicorn's worker processes (the children of the master `pid`), in bytes."""
    return sum(p.memory_info().rss for p in psutil.Process(pid).children())


@pytest.mark.timeout(300)
def test_16_concurrent_worst_case_uploads_stay_within_the_memory_bound(redis_server, tmp_path):
    uploads = worst_case_uploads()
    with Stack(tmp_path, redis_server, **TEST_ENV) as service:
        service.start_worker()
        url, proc = service.start_web(processes=1, MAX_DECODE_MB=BUDGET_MB, DECODE_CONCURRENCY=2, DECODE_WAIT=60)
        requests.post(url + "/predict", files={"image": ("a.png", save(SMALL, "PNG"))}, timeout=30)  # warm
        baseline = process_rss(proc.popen.pid)
        peak, done = baseline, threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process_rss(proc.popen.pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda i: requests.post(
                    url + "/predict", files={"image": ("x", uploads[i % len(uploads)])}, timeout=120), range(16)))
        finally:
            done.set()
            sampler.join()
        assert [a.status_code for a in answers] == [200] * 16, [a.text for a in answers if a.status_code != 200]
        assert answers[0].json()["predictions"][0]["label"] == standin_label(9)
        grew = (peak - baseline) / 2**20
        print(f"\nweb process RSS {baseline / 2**20:.0f} MB → peak {peak / 2**20:.0f} MB (+{grew:.0f} MB) under 16 "
              f"concurrent worst-case uploads, MAX_DECODE_MB={BUDGET_MB}, DECODE_CONCURRENCY=2")
        # Two decodes at a time, each within the budget (plus the uploads' bytes and allocator slack).
        assert grew < 2 * BUDGET_MB * 1.25 + 40, grew


@pytest.mark.timeout(300)
def test_busy_decode_slots_answer_503_json_with_retry_after(redis_server, tmp_path):
    uploads = worst_case_uploads()
    with Stack(tmp_path, redis_server, **TEST_ENV) as service:
        service.start_worker()
        # gthread: decodes run in parallel threads, so the slots are what bounds them. (Under gevent, the
        # default, one process decodes one upload at a time anyway: a decode holds its only thread.)
        url, proc = service.start_web(processes=1, MAX_DECODE_MB=BUDGET_MB, DECODE_CONCURRENCY=1, DECODE_WAIT=0.01,
                                      WEB_WORKER="gthread")
        answers = []
        with ThreadPoolExecutor(16) as pool:
            for _ in range(5):  # a burst of 16 overlaps on any machine; more bursts only if one did not
                answers += pool.map(lambda i: requests.post(
                    url + "/predict", files={"image": ("x", uploads[0])}, timeout=120), range(16))
                if any(a.status_code == 503 for a in answers):
                    break
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["Retry-After"] == "1"
                assert set(answer.json()) == {"success", "error", "id"} and answer.json()["success"] is False
                assert "busy decoding" in answer.json()["error"]
        assert "Traceback" not in proc.log_text()


def test_a_freed_decode_slot_goes_to_the_longest_waiter_not_a_newcomer():
    """Under load a slot freed must not go to an upload that has just arrived while an older one waits: that one
    could lose again and again until DECODE_WAIT, and get 503."""
    import threading

    from conftest import wait_until
    from imgq.web.slots import FairSlots

    slots = FairSlots(1)
    assert slots.acquire(timeout=0)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: slots.acquire(timeout=10) and got.set())
    waiter.start()
    wait_until(lambda: len(slots._waiters) == 1, timeout=10)
    slots.release()
    assert not slots.acquire(timeout=0), "a newcomer took the slot the waiter was owed"
    waiter.join(10)
    assert got.is_set()
    # A waiter that gives up leaves no slot behind it, and takes none with it.
    assert not slots.acquire(timeout=0.05)
    slots.release()
    assert slots.acquire(timeout=0)
    slots.release()
    with pytest.raises(ValueError):
        slots.release()


def test_a_decode_slot_waiter_killed_while_waiting_loses_no_slot(monkeypatch):
    """A waiting upload killed (a greenlet killed, a Timeout) leaves the line, and a slot it was handed just
    then goes on to the next: none is lost for good."""
    import threading

    from imgq.web import slots as slots_module

    class Killed(Exception):
        pass

    for handed in (False, True):
        slots = slots_module.FairSlots(1)
        assert slots.acquire(timeout=0)

        class DyingEvent(threading.Event):
            def wait(self, timeout=None):
                if handed:
                    slots.release()  # the slot reaches this waiter just as it dies
                raise Killed()

        monkeypatch.setattr(slots_module.threading, "Event", DyingEvent)
        with pytest.raises(Killed):
            slots.acquire(timeout=5)
        monkeypatch.undo()
        assert not slots._waiters
        if not handed:
            slots.release()  # the holder gives its slot back
        assert slots.acquire(timeout=0), "a slot was lost with the killed waiter"
