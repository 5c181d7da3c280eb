"""Fuzzed uploads (upload → images.prepare_image → 4xx or pixels): mutated files of every accepted format.

Bit flips, truncations, header fields set to edge values, cut or doubled spans, trailing junk. Each case
must end as a valid 224x224x3 uint8 array or as BadImage with a 4xx status, never as any other exception,
and the process's memory must stay bounded. Thousands of cases run in-process (deterministic seeds), a
few hundred through a real gunicorn web server, which must answer JSON, never 5xx, and keep serving.
"""
import io
import random
import resource
import time

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from conftest import TEST_ENV, Stack, grey_png, standin_label
from imgq.web.images import BadImage, prepare_image

SIZE = (224, 224)


def picture(mode="RGB", size=(40, 30)):
    """A small image with edges and gradients, so every decoder has real structure to get wrong."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, ((x // 5 + y // 5) % 2) * 255], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image.putalpha(Image.fromarray((x * 255 // w).astype(np.uint8)))
    elif mode == "I;16":
        image = Image.fromarray((x * 65535 // w).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray((y / h).astype(np.float32))
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def save(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def exif_rotated():
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(picture(), "JPEG", exif=exif.tobytes())


def transparent_palette():
    image = picture("P")
    return save(image, "PNG", transparency=0)


def animated(fmt, **options):
    frames = [picture().rotate(a) for a in (0, 90, 180)]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, **options)


# One or more seed files per accepted format, covering its common sub-formats.
SEEDS = {
    "jpeg-baseline": lambda: save(picture(), "JPEG", quality=90),
    "jpeg-progressive": lambda: save(picture(), "JPEG", progressive=True),
    "jpeg-grey": lambda: save(picture("L"), "JPEG"),
    "jpeg-cmyk": lambda: save(picture("CMYK"), "JPEG"),
    "jpeg-exif-rotated": exif_rotated,
    "mpo": lambda: animated("MPO"),
    "png-rgb": lambda: save(picture(), "PNG"),
    "png-rgba": lambda: save(picture("RGBA"), "PNG"),
    "png-palette-transparent": transparent_palette,
    "png-16bit": lambda: save(picture("I;16"), "PNG"),
    "png-1bit": lambda: save(picture("1"), "PNG"),
    "apng": lambda: animated("PNG"),
    "gif": lambda: animated("GIF"),
    "bmp": lambda: save(picture(), "BMP"),
    "bmp-palette": lambda: save(picture("P"), "BMP"),
    "tiff-raw": lambda: save(picture(), "TIFF"),
    "tiff-lzw": lambda: save(picture(), "TIFF", compression="tiff_lzw"),
    "tiff-deflate-rgba": lambda: save(picture("RGBA"), "TIFF", compression="tiff_adobe_deflate"),
    "tiff-jpeg": lambda: save(picture(), "TIFF", compression="jpeg"),
    "tiff-16bit": lambda: save(picture("I;16"), "TIFF"),
    "tiff-float": lambda: save(picture("F"), "TIFF"),
    "webp-lossy": lambda: save(picture(), "WEBP"),
    "webp-lossless-alpha": lambda: save(picture("RGBA"), "WEBP", lossless=True),
    "webp-animated": lambda: animated("WEBP"),
}

# Values a header field is set to: zero, one, sign bits, all ones, a common size, and one past it.
EDGE_VALUES = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 6300, 10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF]


def mutate(data, rng):
    """One mutated copy of `data`, chosen and placed by `rng` (so a seed reproduces it)."""
    data = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:  # a few bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # bit flips in the header, where sizes, modes and offsets live
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(data), 96))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 2:  # truncated
        data = data[:rng.randrange(1, len(data))]
    elif kind == 3:  # a header field set to an edge value, 2 or 4 bytes, either byte order
        width = rng.choice((2, 4))
        value = rng.choice(EDGE_VALUES) & ((1 << (8 * width)) - 1)
        i = rng.randrange(max(1, min(len(data), 64) - width))
        data[i:i + width] = value.to_bytes(width, rng.choice(("little", "big")))
    elif kind == 4:  # a span cut out
        i = rng.randrange(len(data))
        del data[i:i + rng.randint(1, 64)]
    elif kind == 5:  # a span doubled
        i = rng.randrange(len(data))
        data[i:i] = data[i:i + rng.randint(1, 64)]
    else:  # random bytes overwritten, plus junk at the end
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return bytes(data)


def outcome(data):
    """'ok', or the BadImage status; any other exception propagates and fails the test."""
    try:
        array = prepare_image(data, SIZE)
    except BadImage as exc:
        assert 400 <= exc.status < 500, (exc.status, exc)
        assert "Traceback" not in str(exc)
        return exc.status
    assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    return "ok"


def rss():
    return psutil.Process().memory_info().rss


def test_every_seed_is_accepted():
    for name, make in SEEDS.items():
        assert outcome(make()) == "ok", name


CASES_PER_SEED = 600  # x 24 seeds = 14,400 cases; about 10 s on a busy 2-core VM


@pytest.mark.timeout(900)
def test_mutated_uploads_end_as_pixels_or_4xx():
    seeds = {name: make() for name, make in SEEDS.items()}
    start_rss, counts, slowest = rss(), {}, (0.0, None)
    peak_rss = start_rss
    for name, data in seeds.items():
        rng = random.Random(f"fuzz:{name}")  # deterministic: a failure names its seed and case
        for case in range(CASES_PER_SEED):
            mutated = mutate(data, rng)
            began = time.perf_counter()
            try:
                result = outcome(mutated)
            except Exception as exc:
                pytest.fail(f"seed {name} case {case}: {type(exc).__name__}: {exc}")
            took = time.perf_counter() - began
            slowest = max(slowest, (took, f"{name} case {case}"))
            counts[result] = counts.get(result, 0) + 1
            if case % 50 == 0:
                peak_rss = max(peak_rss, rss())
    total = sum(counts.values())
    print(f"\n{total} cases: {counts}; slowest {slowest[0] * 1000:.0f} ms ({slowest[1]}); "
          f"RSS {start_rss / 1e6:.0f} → peak seen {peak_rss / 1e6:.0f} MB, "
          f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    assert total == len(seeds) * CASES_PER_SEED
    assert counts.get("ok", 0) > total // 10 and sum(v for k, v in counts.items() if k != "ok") > total // 10
    # One decode at a time holds at most ~5 bytes per pixel of MAX_IMAGE_PIXELS (200 MB at the default);
    # a leak over thousands of cases would show as growth far beyond that.
    assert rss() - start_rss < 300e6, (start_rss, rss())
    assert slowest[0] < 30, slowest  # no mutated header makes one decode run away


@pytest.fixture(scope="module")
def web(redis_server, tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("fuzz"), redis_server, **TEST_ENV) as service:
        service.start_worker()
        yield service.start_web()


@pytest.mark.timeout(600)
def test_mutated_uploads_through_the_web_server(web):
    url, proc = web
    statuses = {}
    with requests.Session() as session:
        for name, make in SEEDS.items():
            data, rng = make(), random.Random(f"web:{name}")
            for case in range(16):  # 384 requests
                response = session.post(url + "/predict", files={"image": ("upload", mutate(data, rng))}, timeout=60)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code == 200 or 400 <= response.status_code < 500, \
                    (name, case, response.status_code, response.text)
                body = response.json()
                assert body["success"] is (response.status_code == 200)
                if response.status_code != 200:
                    assert body["error"] and "Traceback" not in body["error"]
        print(f"\nweb: {statuses}")
        # Still serving, and nothing crashed on the way.
        response = session.post(url + "/predict", files={"image": ("a.png", grey_png(42))}, timeout=60)
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == standin_label(42)
    log = proc.log_text()
    assert "Traceback" not in log and "request.crashed" not in log
