"""Hostile and unusual uploads: every one gets a clear answer, never a 5xx, and the server keeps serving.

Unusual but valid images (16-bit, CMYK, palette with transparency, EXIF-rotated, 1x1, ...) are classified;
invalid ones get a 4xx JSON error that says what is wrong.
"""
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import TEST_ENV, Stack, grey_png, standin_label
from imgq.web.images import prepare_image

MAX_UPLOAD = 2 * 1024 * 1024


def encode(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb():
    """A 100-byte PNG that declares 100,000 x 100,000 pixels (30 GB decoded)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) +
            png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + png_chunk(b"IEND", b""))


def corrupt_png():
    data = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "PNG")
    start = data.index(b"IDAT") + 8
    return data[:start] + bytes(b ^ 0xFF for b in data[start:start + 10]) + data[start + 10:]


def zip_file():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("photo.jpg", "not really")
    return out.getvalue()


def animated_gif(levels):
    frames = [Image.new("L", (16, 16), level).convert("P") for level in levels]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return out.getvalue()


def transparent_palette_png():
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0] * 256)
    return encode(image, "PNG", transparency=0)


JPEG = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG")
AVIF = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "AVIF")
DDS = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "DDS")

# name → (filename, bytes, expected status, text the error must mention)
REFUSED = {
    "empty file": ("a.jpg", b"", 400, "empty"),
    "text file": ("a.txt", b"hello, this is not a picture\n", 400, "not an image"),
    "truncated JPEG": ("a.jpg", JPEG[: len(JPEG) // 2], 400, "could not be decoded"),
    "PNG with a corrupt chunk": ("a.png", corrupt_png(), 400, "could not be decoded"),
    "decompression bomb": ("bomb.png", decompression_bomb(), 413, "MAX_IMAGE_PIXELS"),
    "SVG named .jpg": ("a.jpg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', 400, "not an image"),
    "zip file": ("a.jpg", zip_file(), 400, "not an image"),
    "JPEG header only": ("a.jpg", JPEG[:20], 400, "not an image"),
    "body over MAX_UPLOAD_BYTES": ("big.jpg", b"\xff" * (MAX_UPLOAD + 1), 413, "MAX_UPLOAD_BYTES"),
    # Formats Pillow opens but the service does not accept; these three answered 500 before (issue #9).
    "corrupt AVIF": ("a.avif", AVIF[:40] + bytes(len(AVIF) - 40), 400, "not an image format"),
    "DDS": ("a.dds", DDS, 400, "not an image format"),
    "BLP": ("a.blp", b"BLP2" + bytes(200), 400, "not an image format"),
    "valid AVIF": ("a.avif", AVIF, 400, "JPEG, PNG, GIF, BMP, TIFF, WebP"),
    "16-bit PNG over MAX_DECODE_MB": ("a.png", encode(Image.fromarray(np.zeros((2600, 2600), np.uint16)), "PNG"),
                                      413, "MAX_DECODE_MB"),
}

# name → (filename, bytes, expected stand-in class = rounded mean grey level after preparation)
ACCEPTED = {
    "16-bit PNG": ("a.png", encode(Image.fromarray(np.full((20, 20), 0x8080, np.uint16)), "PNG"), 128),
    "CMYK JPEG": ("a.jpg", encode(Image.new("CMYK", (20, 20), (0, 0, 0, 0)), "JPEG", quality=100), 255),
    "greyscale": ("a.png", encode(Image.new("L", (20, 20), 77), "PNG"), 77),
    "palette PNG with transparency": ("a.png", transparent_palette_png(), 255),  # laid on white
    "animated GIF": ("a.gif", animated_gif([40, 200, 120]), 40),  # the first frame
    "1x1 image": ("a.png", encode(Image.new("RGB", (1, 1), (5, 5, 5)), "PNG"), 5),
    "very wide strip": ("a.png", encode(Image.new("RGB", (20_000, 1), (9, 9, 9)), "PNG"), 9),
    "TIFF": ("a.tif", encode(Image.new("RGB", (30, 30), (60, 60, 60)), "TIFF"), 60),
    "WebP": ("a.webp", encode(Image.new("RGB", (30, 30), (90, 90, 90)), "WEBP", lossless=True), 90),
    "BMP": ("a.bmp", encode(Image.new("RGB", (30, 30), (33, 33, 33)), "BMP"), 33),
}


@pytest.fixture(scope="module")
def web(redis_server, tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("bad-input"), redis_server, **TEST_ENV) as service:
        service.start_worker()
        yield service.start_web(MAX_UPLOAD_BYTES=MAX_UPLOAD, MAX_DECODE_MB=16)


@pytest.mark.parametrize("name", REFUSED)
def test_bad_upload_gets_a_clear_4xx(web, name):
    url, proc = web
    filename, data, status, mentions = REFUSED[name]
    response = requests.post(url + "/predict", files={"image": (filename, data)}, timeout=30)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and mentions in body["error"]
    assert "Traceback" not in proc.log_text()


@pytest.mark.parametrize("name", ACCEPTED)
def test_unusual_but_valid_image_is_classified(web, name):
    url, _ = web
    filename, data, level = ACCEPTED[name]
    response = requests.post(url + "/predict", files={"image": (filename, data)}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == standin_label(level)


@pytest.mark.parametrize("request_kwargs, status", [
    ({"files": {"picture": ("a.png", grey_png(1))}}, 400),   # wrong field name
    ({"data": {"image": "not a file"}}, 400),                  # a form field, not a file
    ({"data": b"raw bytes", "headers": {"Content-Type": "image/png"}}, 400),
])
def test_request_without_an_image_file(web, request_kwargs, status):
    url, _ = web
    response = requests.post(url + "/predict", timeout=30, **request_kwargs)
    assert response.status_code == status
    assert "'image'" in response.json()["error"]


def test_wrong_method_and_path_answer_json(web):
    url, _ = web
    assert requests.get(url + "/predict", timeout=5).status_code == 405
    assert requests.get(url + "/predict", timeout=5).json()["success"] is False
    assert requests.get(url + "/nowhere", timeout=5).status_code == 404
    # Under the protocols' paths, the protocols' own error shape: {"error": ...} and no "success".
    for wrong in (requests.post(url + "/v2/models/standin", timeout=5), requests.get(url + "/v2/nowhere", timeout=5)):
        assert wrong.status_code in (404, 405) and "error" in wrong.json() and "success" not in wrong.json()


def test_a_compressed_upload_is_415_not_read_as_plain(web):
    url, _ = web
    response = requests.post(url + "/predict", files={"image": ("a.png", grey_png(4))},
                             headers={"Content-Encoding": "gzip"}, timeout=30)
    assert response.status_code == 415 and "compressed" in response.json()["error"]


def test_server_still_serves_after_all_of_it(web):
    url, proc = web
    response = requests.post(url + "/predict", files={"image": ("a.png", grey_png(42))}, timeout=30)
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == standin_label(42)
    assert " 500 " not in proc.log_text() and "request.crashed" not in proc.log_text()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_rotation_is_applied(fmt):
    # Left half black, right half white, stored with EXIF orientation 6 ("rotate 90° clockwise to view").
    # JPEG's EXIF is read from the header, before the scaled decode; the others' after the decode.
    array = np.zeros((40, 60, 3), np.uint8)
    array[:, 30:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    options = {"tiffinfo": {0x0112: 6}} if fmt == "TIFF" else {"exif": exif.tobytes()}
    data = encode(Image.fromarray(array), fmt, quality=95, **options)
    pixels = prepare_image(data, (224, 224)).astype(int)
    # Viewed upright, the white half is at the bottom, the black half on top.
    assert pixels[:100].mean() < 30 and pixels[124:].mean() > 225
