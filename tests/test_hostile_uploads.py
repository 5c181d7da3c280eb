"""Uploads built to hold a web process: a header of a million tiny segments, and decodes that take long. Each
is refused or answered quickly while the same gunicorn process keeps answering /livez, two at once included.

The decode runs off gevent's event loop (a thread of the decode pool, imgq/web/images.py), and a header is
walked before Pillow parses it (imgq/web/containers.py)."""
import concurrent.futures
import io
import struct
import threading
import time
import zlib

import psutil
import pytest
import requests
from PIL import Image

from conftest import CASTLE
from imgq.errors import BadImage
from imgq.web import containers

CASTLE_BYTES = open(CASTLE, "rb").read() if __import__("os").path.exists(CASTLE) else None


def exif_flood(segments=500_000):
    """A 10 MB JPEG: castle's pixels behind `segments` tiny APP1 (EXIF) segments."""
    segment = b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\x08\x00\x00\x00"
    body = CASTLE_BYTES if CASTLE_BYTES else _small_jpeg()
    return b"\xff\xd8" + segment * segments + body[2:]


def _small_jpeg():
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(out, "JPEG")
    return out.getvalue()


def _png_with(image, inserted):
    """`image` as a PNG with `inserted` bytes right after its header chunk (IHDR), before anything else."""
    out = io.BytesIO()
    image.save(out, "PNG")
    data = out.getvalue()
    ihdr_end = 8 + 12 + 13
    return data[:ihdr_end] + inserted + data[ihdr_end:]


def _gif_with(inserted):
    """An 8x8 GIF with `inserted` bytes between its header (and colour table) and its first block."""
    out = io.BytesIO()
    Image.new("P", (8, 8)).save(out, "GIF")
    data = out.getvalue()
    flags = data[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return data[:start] + inserted + data[start:]


def png_chunks(count):
    """A valid 8x8 PNG with `count` tiny private chunks before its pixels."""
    chunk = struct.pack(">I4s", 1, b"prIv") + b"x" + struct.pack(">I", zlib.crc32(b"prIvx"))
    return _png_with(Image.new("RGB", (8, 8), (1, 2, 3)), chunk * count)


def gif_comments(count):
    comment = b"\x21\xfe\x01c\x00"  # comment extension: one sub-block of one byte, then the terminator
    return _gif_with(comment * count)


@pytest.mark.parametrize("make, kind", [(lambda n: exif_flood(n), "segments"), (png_chunks, "chunks"),
                                        (gif_comments, "extension blocks")])
def test_headers_of_many_segments_are_refused_before_pillow_reads_them(make, kind):
    containers.check(make(50))  # a few dozen: a real file's header
    started = time.process_time()
    with pytest.raises(BadImage, match="MAX_IMAGE_SEGMENTS") as refused:
        containers.check(make(200_000))
    assert refused.value.status == 413
    assert time.process_time() - started < 0.5  # it stops at the limit, whatever follows


class LivezWatch:
    """Polls /livez every 0.1 s on its own connection; keeps the slowest answer."""

    def __init__(self, url):
        self.url, self.slowest, self.failures = url, 0.0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        session = requests.Session()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                ok = session.get(self.url + "/livez", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.failures += not ok
            time.sleep(0.1)

    def finish(self):
        self.stop.set()
        self.thread.join(15)
        return self.slowest, self.failures


def _send(url, data, name):
    started = time.monotonic()
    response = requests.post(url + "/predict", files={"image": (name, data)}, timeout=60)
    return response, time.monotonic() - started


def _rss(proc):
    parent = psutil.Process(proc.popen.pid)
    return max(c.memory_info().rss for c in parent.children()) if parent.children() else parent.memory_info().rss


@pytest.mark.skipif(CASTLE_BYTES is None, reason="needs ../shared/castle_image.jpg")
def test_two_exif_floods_at_once_are_refused_fast_and_livez_keeps_answering(service):
    # One gunicorn process, so both uploads and every /livez land on the same event loop.
    url, web = service.start_web(processes=1)
    baseline = _rss(web)
    flood = exif_flood()
    assert len(flood) > 9_000_000
    watch = LivezWatch(url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _send(url, flood, "flood.jpg"), range(2)))
    slowest, failures = watch.finish()
    for response, took in answers:
        assert response.status_code == 413 and "MAX_IMAGE_SEGMENTS" in response.json()["error"], response.text
        assert took < 2 + 5, took  # the body's upload over loopback, then the refusal (well under 2 s of work)
    assert failures == 0 and slowest < 1.0, slowest
    assert _rss(web) - baseline < 300 * 2**20
    assert "WORKER TIMEOUT" not in web.log_text()


def _slow_jpeg(side=6000):
    """36 Mpx of noise as a progressive JPEG (29 MB): inside MAX_IMAGE_PIXELS and MAX_DECODE_MB, and about a
    second of libjpeg's entropy decoding (DCT scaling cannot skip it) on this 2-core machine."""
    import numpy as np
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, progressive=True)
    return out.getvalue()


def padded_png(empty_chunks, level=7):
    """A 1x1 grey PNG with `empty_chunks` empty IDAT chunks before its one real IDAT: valid, and far bigger
    than its one pixel needs."""
    empty = struct.pack(">I4s", 0, b"IDAT") + struct.pack(">I", zlib.crc32(b"IDAT"))
    return _png_with(Image.new("RGB", (1, 1), (level, level, level)), empty * empty_chunks)


def gif_junk(count):
    """An 8x8 GIF with `count` stray bytes between its header and its image (Pillow skips them one by one)."""
    return _gif_with(b"\x00" * count)


@pytest.mark.parametrize("make", [lambda n: b"\xff\xd8" + b"\xff" * n + CASTLE_BYTES[2:],  # fill bytes
                                  lambda n: b"\xff\xd8\xff\xfe\x00\x02" + b"\x00" * n + CASTLE_BYTES[2:],  # junk
                                  gif_junk])
def test_padding_before_the_pixels_is_refused_before_pillow_steps_through_it(make):
    containers.check(make(100))  # a few stray bytes: a sloppy but real file
    started = time.process_time()
    with pytest.raises(BadImage, match="MAX_IMAGE_PADDING_KB") as refused:
        containers.check(make(10 * 2**20 - 100_000))  # Pillow: seconds of Python, one byte at a time
    assert refused.value.status == 413
    assert time.process_time() - started < 0.5


def test_a_file_far_bigger_than_its_pixels_decodes_off_the_event_loop(service):
    """A 1-pixel PNG behind 2 million empty IDAT chunks: Pillow reads them one at a time in Python (seconds), so
    it goes to the decode pool whatever its pixel count, and /livez answers throughout."""
    service.start_worker()
    url, _ = service.start_web(processes=1, MAX_UPLOAD_BYTES=32 * 2**20, DECODE_TIMEOUT=120)
    watch = LivezWatch(url)
    response, took = _send(url, padded_png(2_000_000), "padded.png")
    slowest, failures = watch.finish()
    assert response.status_code == 200, response.text
    assert failures == 0 and slowest < 1.0, (slowest, took)


def test_slow_decodes_run_off_the_event_loop_and_time_out_with_413(service):
    """Two slow decodes at once in one gunicorn process: /livez answers within a second throughout (decoding
    on the event loop, each would hold it for about a second). With DECODE_TIMEOUT below the decode time
    the upload is answered 413 at that timeout."""
    slow = _slow_jpeg()
    limits = dict(MAX_UPLOAD_BYTES=64 * 2**20)  # the file is large; the limits that matter here are others
    service.start_worker()
    url, web = service.start_web(processes=1, **limits)
    watch = LivezWatch(url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _send(url, slow, "slow.jpg"), range(2)))
    slowest, failures = watch.finish()
    assert [r.status_code for r, _ in answers] == [200, 200], [r.text for r, _ in answers]
    assert failures == 0 and slowest < 1.0, slowest

    url, web = service.start_web(processes=1, DECODE_TIMEOUT=0.05, **limits)
    response, took = _send(url, slow, "slow.jpg")
    assert response.status_code == 413 and "DECODE_TIMEOUT" in response.json()["error"], response.text
    assert requests.get(url + "/livez", timeout=5).status_code == 200
    assert "WORKER TIMEOUT" not in web.log_text()
