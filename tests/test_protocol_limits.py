"""The v2 and TF Serving endpoints against hostile bodies, on real gunicorn: work bounded per request
(MAX_REQUEST_PIXELS read from the headers before any decode, MAX_REQUEST_OUTPUTS, MAX_CLASSIFICATION,
MAX_INFER_ID_LENGTH), and every malformed body a 4xx JSON {"error": ...} that quotes the client's text cut
short, never a 500."""
import base64
import concurrent.futures
import io
import json
import os
import struct
import threading
import time
import zlib

import numpy as np
import psutil
import pytest
import requests
import tritonclient.http as httpclient
from PIL import Image

from conftest import CASTLE, TEST_ENV, Stack, grey_png

V2 = "/v2/models/standin/infer"
V1 = "/v1/models/standin:predict"
HEADER = "Inference-Header-Content-Length"
LONGEST_MESSAGE = 300  # characters: every message quotes a client's text cut to 80


def png_header_only(width, height):
    """A PNG whose header declares width x height (8-bit grey) and whose pixel data is missing: Pillow's
    open reads its size, its decode fails. So a 413 for it proves the size was judged before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def binary_bytes_request(files, outputs=None, **extra):
    """A v2 request as tritonclient sends it: JSON header, then the BYTES tensor as binary data."""
    raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
    head = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(files)],
                        "parameters": {"binary_data_size": len(raw)}}], **extra}
    if outputs is not None:
        head["outputs"] = outputs
    text = json.dumps(head).encode()
    return text + raw, {HEADER: str(len(text))}


def image_json(*files):
    return {"name": "IMAGE", "datatype": "BYTES", "shape": [len(files)],
            "data": [base64.b64encode(f).decode() for f in files]}


def error_of(response):
    """The answer's error message, after checking it is a 4xx in the protocols' JSON shape."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    message = response.json()["error"]
    assert isinstance(message, str) and len(message) <= LONGEST_MESSAGE, message[:400]
    return message


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    """One stack for the module: a worker (MODEL=standin) and web servers on the session's Redis."""
    with Stack(tmp_path_factory.mktemp("limits"), redis_server, **TEST_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def idle_web(stack):
    """A web server whose requests must all be refused before any job is made: no worker serves its
    KEY_PREFIX, and REQUEST_TIMEOUT=2 turns a wrongly accepted body into a quick 504, not a 30 s wait."""
    url, proc = stack.start_web(KEY_PREFIX=stack.prefix + "-idle", REQUEST_TIMEOUT="2")
    yield url, proc
    assert "request.crashed" not in proc.log_text()


@pytest.fixture(scope="module")
def web(stack):
    stack.start_worker(BATCH_SIZE=64)
    url, _ = stack.start_web()
    return url


# --- work bounded per request ----------------------------------------------------------------------------
def test_request_pixels_are_summed_from_the_headers_before_any_image_is_decoded(idle_web):
    url, _ = idle_web
    # 40 Mpx each: one is within MAX_IMAGE_PIXELS (its missing data then fails the decode, a 400) ...
    big = png_header_only(8000, 5000)
    body, headers = binary_bytes_request([big])
    response = requests.post(url + V2, data=body, headers=headers, timeout=60)
    assert response.status_code == 400 and "MAX_REQUEST_PIXELS" not in error_of(response)
    # ... 64 of them are 2.56 G pixels: 413 naming the limit, before the first decode would have said 400.
    body, headers = binary_bytes_request([big] * 64)
    response = requests.post(url + V2, data=body, headers=headers, timeout=60)
    assert response.status_code == 413 and "MAX_REQUEST_PIXELS" in error_of(response)
    # The same through TF Serving's b64 instances, and with the big ones last: still no decode first.
    instances = [{"b64": base64.b64encode(grey_png(1)).decode()}] * 3 + [{"b64": base64.b64encode(big).decode()}] * 3
    response = requests.post(url + V1, json={"instances": instances}, timeout=60)
    assert response.status_code == 413 and "MAX_REQUEST_PIXELS" in error_of(response)
    # An image over MAX_IMAGE_PIXELS is refused in the same header pass, naming that limit and the image.
    body, headers = binary_bytes_request([grey_png(1), png_header_only(9000, 5000)])
    response = requests.post(url + V2, data=body, headers=headers, timeout=60)
    assert response.status_code == 413 and "image 1" in (message := error_of(response))
    assert "MAX_IMAGE_PIXELS" in message


def jpeg_of_many_segments(count):
    """A small real JPEG with `count` tiny APP1 segments put after its SOI: the header Pillow parses slowly."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(out, "JPEG")
    jpeg = out.getvalue()
    return jpeg[:2] + b"\xff\xe1\x00\x04ab" * count + jpeg[2:]


def test_a_header_of_many_segments_is_refused_before_the_request_reads_any_header(idle_web):
    url, _ = idle_web
    body, headers = binary_bytes_request([grey_png(1), jpeg_of_many_segments(500_000)])
    response = requests.post(url + V2, data=body, headers=headers, timeout=60)
    assert response.status_code == 413 and "image 1" in (message := error_of(response))
    assert "MAX_IMAGE_SEGMENTS" in message
    response = requests.post(url + V1, json={"instances": [{"b64": base64.b64encode(
        jpeg_of_many_segments(500_000)).decode()}]}, timeout=60)
    assert response.status_code == 413 and "MAX_IMAGE_SEGMENTS" in error_of(response)


def test_64_castle_sized_images_fit_one_request(web):
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    with open(CASTLE, "rb") as f:
        castle = f.read()
    client = httpclient.InferenceServerClient(web[len("http://"):], connection_timeout=60, network_timeout=120)
    image = httpclient.InferInput("IMAGE", [64], "BYTES")
    image.set_data_from_numpy(np.array([castle] * 64, dtype=np.object_))
    assert client.infer("standin", [image]).as_numpy("PROBABILITIES").shape == (64, 1000)


def test_outputs_are_capped_deduplicated_and_bounded(web):
    one = {"inputs": [image_json(grey_png(7))]}
    # The issue's attack: PROBABILITIES listed 20,000 times. Refused at once, naming the limit.
    response = requests.post(web + V2, json=dict(one, outputs=[{"name": "PROBABILITIES"}] * 20_000), timeout=60)
    assert response.status_code == 400 and "MAX_REQUEST_OUTPUTS" in error_of(response)
    # Identical entries are answered with one tensor; different ones each get theirs.
    twice = [{"name": "PROBABILITIES", "parameters": {"classification": 2}}] * 2
    response = requests.post(web + V2, json=dict(one, outputs=twice), timeout=60)
    assert response.status_code == 200, response.text
    assert [t["shape"] for t in response.json()["outputs"]] == [[1, 2]]
    kinds = [{"name": "PROBABILITIES"}, {"name": "PROBABILITIES", "parameters": {"classification": 100}}]
    response = requests.post(web + V2, json=dict(one, outputs=kinds), timeout=60)
    assert [t["shape"] for t in response.json()["outputs"]] == [[1, 1000], [1, 100]]
    assert response.json()["outputs"][1]["data"][0].split(":")[1] == "7"
    # The classification count is capped (the FP32 output carries all 1000).
    over = [{"name": "PROBABILITIES", "parameters": {"classification": 101}}]
    response = requests.post(web + V2, json=dict(one, outputs=over), timeout=60)
    assert response.status_code == 400 and "MAX_CLASSIFICATION" in error_of(response)


def test_the_request_id_is_echoed_up_to_its_limit(web):
    body = {"id": "req-1", "inputs": [image_json(grey_png(9))]}
    response = requests.post(web + V2, json=body, timeout=60)
    assert response.status_code == 200 and response.json()["id"] == "req-1"
    response = requests.post(web + V2, json=dict(body, id="x" * 257), timeout=60)
    assert response.status_code == 400 and "MAX_INFER_ID_LENGTH" in error_of(response)


def test_a_9_mb_name_is_not_echoed(idle_web):
    url, proc = idle_web
    name = "N" * (9 * 1024 * 1024)
    response = requests.post(url + V2, json={"inputs": [{"name": name, "datatype": "BYTES", "shape": [1],
                                                         "data": ["aGk="]}]}, timeout=60)
    message = error_of(response)
    assert response.status_code == 400 and "unknown input 'NNNN" in message and "..." in message
    assert len(response.content) < 1000
    assert max(len(line) for line in proc.log_text().splitlines()) < 10_000  # the log quotes it cut too


class LivezWatch:
    """Polls /livez every 0.1 s on its own connection while a `with` block runs; keeps the slowest answer."""

    def __enter__(self):
        self.slowest, self.failures, self.stop = 0.0, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __init__(self, url):
        self.url = url

    def _run(self):
        session = requests.Session()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.failures += session.get(self.url + "/livez", timeout=10).status_code != 200
            except requests.RequestException:
                self.failures += 1
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.stop.wait(0.1)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


def zero_png(width, height):
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.skipif(not os.path.exists(CASTLE), reason=f"{CASTLE} not found")
@pytest.mark.timeout(300)
def test_the_issues_protocol_attacks_two_at_once_are_refused_while_the_process_keeps_serving(service):
    """Issue 22's two protocol attacks, each sent twice at once to one gunicorn process: castle with
    PROBABILITIES listed 20,000 times (was 200 after 17 s, 450 MB answer, 1.6 GB process), and 64 all-zero
    8000x5000 PNGs in one binary request (was 25 s of decoding). Each is refused without the work, /livez
    answers throughout, the process' memory stays put."""
    url, web = service.start_web(processes=1)
    with open(CASTLE, "rb") as f:
        castle = base64.b64encode(f.read()).decode()
    outputs_flood = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [castle]}],
                                "outputs": [{"name": "PROBABILITIES"}] * 20_000}).encode()
    pixels_flood = binary_bytes_request([zero_png(8000, 5000)] * 64)
    assert 5_000_000 < len(pixels_flood[0]) < 10 * 2**20
    attacks = [(outputs_flood, {"Content-Type": "application/json"}, 400, "MAX_REQUEST_OUTPUTS"),
               (*pixels_flood, 413, "MAX_REQUEST_PIXELS")]
    process = psutil.Process(web.popen.pid).children()[0]  # gunicorn's one worker process
    baseline = process.memory_info().rss

    def send(attack):
        started = time.monotonic()
        response = requests.post(url + V2, data=attack[0], headers=attack[1], timeout=120)
        return response, time.monotonic() - started

    for attack in attacks:
        with LivezWatch(url) as watch, concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(send, [attack, attack]))
        for response, took in answers:
            assert response.status_code == attack[2] and attack[3] in error_of(response)
            assert took < 2 + 5, took  # the body's upload over loopback, then the refusal
        assert watch.failures == 0 and watch.slowest < 1.0, (attack[3], watch.slowest)
        assert process.memory_info().rss - baseline < 300 * 2**20
    assert "WORKER TIMEOUT" not in web.log_text()


# --- malformed bodies: each a 4xx ------------------------------------------------------------------------
PIXELS = {"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3]}
IMAGE = {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}


def v2(tensor=None, **extra):
    return {"inputs": [dict(IMAGE) if tensor is None else tensor], **extra}


def with_(base, **changes):
    out = dict(base)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def binary(head, tail, length=None):
    """A body with a binary tail: (bytes, headers)."""
    text = json.dumps(head).encode()
    return text + tail, {HEADER: str(len(text)) if length is None else length}


# (path, body: a JSON-able value, raw bytes, or (bytes, headers); the status; a part of the message).
# The first four are the 500s of the issue.
MALFORMED = {
    "v2 name is a list": (V2, v2(with_(IMAGE, name=[])), 400, "unknown input []"),
    "v2 output parameters is 1": (V2, v2(outputs=[{"name": "PROBABILITIES", "parameters": 1}]), 400, "parameters"),
    "v2 shape overflows numpy's product": (V2, v2(with_(PIXELS, shape=[4294967296, 4294967296], data=[])), 400,
                                           "shape"),
    "v2 nested 5000 deep": (V2, b"[" * 5000, 400, "nested too deeply"),
    "v1 nested 5000 deep": (V1, b"[" * 5000, 400, "nested too deeply"),
    "v2 binary shape overflows numpy's product": (
        V2, binary(v2(with_(PIXELS, shape=[2**32, 2**32], parameters={"binary_data_size": 0})), b""), 400, "shape"),
    "v2 BYTES shape overflows numpy's product": (V2, v2(with_(IMAGE, shape=[2**32, 2**32], data=[])), 413,
                                                 "MAX_REQUEST_IMAGES"),
    "v2 shape with true": (V2, v2(with_(PIXELS, shape=[True, 224, 224, 3], data=[0] * 150528)), 400, "shape"),
    "v2 shape with a float": (V2, v2(with_(IMAGE, shape=[1.0])), 400, "shape"),
    "v2 shape negative": (V2, v2(with_(IMAGE, shape=[-1])), 400, "shape"),
    "v2 shape a string": (V2, v2(with_(IMAGE, shape="1")), 400, "shape"),
    "v2 shape missing": (V2, v2(with_(IMAGE, shape=...)), 400, "shape"),
    "v2 shape 10**30 images": (V2, v2(with_(IMAGE, shape=[10**30])), 413, "MAX_REQUEST_IMAGES"),
    "v2 shape 0 images": (V2, v2(with_(IMAGE, shape=[0], data=[])), 400, "no image"),
    "v2 body a list": (V2, [1, 2], 400, "JSON object"),
    "v2 body a string": (V2, "inputs", 400, "JSON object"),
    "v2 body not JSON": (V2, b"\xff\xfe{", 400, "not JSON"),
    "v2 body empty": (V2, b"", 400, "not JSON"),
    "v2 body truncated": (V2, json.dumps(v2()).encode()[:-3], 400, "not JSON"),
    "v2 inputs missing": (V2, {}, 400, "inputs"),
    "v2 inputs an object": (V2, {"inputs": IMAGE}, 400, "inputs"),
    "v2 inputs a string": (V2, {"inputs": "IMAGE"}, 400, "inputs"),
    "v2 two inputs": (V2, {"inputs": [IMAGE, IMAGE]}, 400, "inputs"),
    "v2 tensor not an object": (V2, {"inputs": [["IMAGE"]]}, 400, "inputs"),
    "v2 name a number": (V2, v2(with_(IMAGE, name=5)), 400, "unknown input 5"),
    "v2 name an object": (V2, v2(with_(IMAGE, name={"a": 1})), 400, "unknown input"),
    "v2 name missing": (V2, v2(with_(IMAGE, name=...)), 400, "unknown input None"),
    "v2 datatype a list": (V2, v2(with_(IMAGE, datatype=[])), 400, "datatype"),
    "v2 datatype a number": (V2, v2(with_(IMAGE, datatype=5)), 400, "datatype"),
    "v2 datatype long": (V2, v2(with_(IMAGE, datatype="B" * 100_000)), 400, "..."),
    "v2 BYTES data nested deeper than the shape": (V2, v2(with_(IMAGE, data=[[["aGk="]]])), 400, "nested"),
    "v2 BYTES data a number": (V2, v2(with_(IMAGE, data=[5])), 400, "base64"),
    "v2 BYTES data null": (V2, v2(with_(IMAGE, data=None)), 400, "base64"),
    "v2 BYTES data an object": (V2, v2(with_(IMAGE, data={"b64": 5})), 400, "base64"),
    "v2 BYTES data too many": (V2, v2(with_(IMAGE, data=["aGk="] * 1000)), 400, "elements"),
    "v2 BYTES data too few": (V2, v2(with_(IMAGE, shape=[3])), 400, "elements"),
    "v2 BYTES data not base64": (V2, v2(with_(IMAGE, data=["é"])), 400, "base64"),
    "v2 BYTES data missing": (V2, v2(with_(IMAGE, data=...)), 400, "neither"),
    "v2 UINT8 data nested wrongly": (V2, v2(with_(PIXELS, data=[[0] * 150528])), 400, "nested"),
    "v2 UINT8 data ragged": (V2, v2(with_(PIXELS, data=[[1, 2], [3]])), 400, "regular"),
    "v2 UINT8 data floats": (V2, v2(with_(PIXELS, data=[0.5] * 150528)), 400, "0..255"),
    "v2 UINT8 data booleans": (V2, v2(with_(PIXELS, data=[True] * 150528)), 400, "0..255"),
    "v2 UINT8 data too big": (V2, v2(with_(PIXELS, data=[256] * 150528)), 400, "0..255"),
    "v2 UINT8 data huge ints": (V2, v2(with_(PIXELS, data=[10**30] * 150528)), 400, "0..255"),
    "v2 UINT8 data strings": (V2, v2(with_(PIXELS, data=["1"] * 150528)), 400, "0..255"),
    "v2 UINT8 data with one long string": (V2, v2(with_(PIXELS, data=[7] * 5 + ["x" * 100_000] + [7] * 150522)),
                                           400, "0..255"),
    "v2 UINT8 data nested with one long string": (
        V2, v2(with_(PIXELS, data=[[[[7, 7, "x" * 100_000]] + [[7, 7, 7]] * 223] + [[[7, 7, 7]] * 224] * 223])), 400,
        "0..255"),
    "v2 UINT8 data a number": (V2, v2(with_(PIXELS, data=7)), 400, "values"),
    "v2 UINT8 data an object": (V2, v2(with_(PIXELS, data={"a": 1})), 400, "0..255"),
    "v2 UINT8 data too few": (V2, v2(with_(PIXELS, data=[1] * 10)), 400, "values"),
    "v2 UINT8 shape of another model": (V2, v2(with_(PIXELS, shape=[1, 10, 10, 3], data=[0] * 300)), 400, "224"),
    "v2 UINT8 65 images": (V2, v2(with_(PIXELS, shape=[65, 224, 224, 3], data=[])), 413, "MAX_REQUEST_IMAGES"),
    "v2 tensor parameters a list": (V2, v2(with_(IMAGE, parameters=[])), 400, "parameters"),
    "v2 tensor parameters a number": (V2, v2(with_(IMAGE, parameters=1)), 400, "parameters"),
    "v2 request parameters a string": (V2, v2(parameters="x"), 400, "parameters"),
    "v2 binary_data_output a string": (V2, v2(parameters={"binary_data_output": "yes"}), 400, "binary_data_output"),
    "v2 binary_data a number": (V2, v2(outputs=[{"name": "PROBABILITIES", "parameters": {"binary_data": 1}}]),
                                400, "binary_data"),
    "v2 binary_data_size a string": (V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": "4"})),
                                                b"\0" * 4), 400, "binary_data_size"),
    "v2 binary_data_size true": (V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": True})),
                                            b"\1\0\0\0"), 400, "binary_data_size"),
    "v2 binary_data_size a float": (V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": 4.0})),
                                               b"\0" * 4), 400, "binary_data_size"),
    "v2 binary_data_size negative": (V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": -1})),
                                                b"\0" * 4), 400, "binary_data_size"),
    "v2 binary_data_size past the body": (V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": 9})),
                                                     b"\0" * 4), 400, "binary_data_size"),
    "v2 binary BYTES more elements than the shape": (
        V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": 4000})), b"\0" * 4000), 400,
        "more than"),
    "v2 binary BYTES cut inside an element": (
        V2, binary(v2(with_(IMAGE, data=..., parameters={"binary_data_size": 6})), b"\x09\0\0\0ab"), 400, "ends"),
    "v2 binary UINT8 too few bytes": (
        V2, binary(v2(with_(PIXELS, parameters={"binary_data_size": 10})), b"\0" * 10), 400, "bytes for shape"),
    "v2 header length not a number": (V2, binary(v2(), b"", length="x" * 1000), 400, "..."),
    "v2 header length zero": (V2, binary(v2(), b"", length="0"), 400, "does not fit"),
    "v2 header length past the body": (V2, binary(v2(), b"", length="99999"), 400, "does not fit"),
    "v2 header length inside the JSON": (V2, binary(v2(), b"", length="5"), 400, "not JSON"),
    "v2 outputs an object": (V2, v2(outputs={"name": "PROBABILITIES"}), 400, "outputs"),
    "v2 outputs empty": (V2, v2(outputs=[]), 400, "outputs"),
    "v2 output a string": (V2, v2(outputs=["PROBABILITIES"]), 400, "unknown output"),
    "v2 output name a list": (V2, v2(outputs=[{"name": ["PROBABILITIES"]}]), 400, "unknown output"),
    "v2 output name long": (V2, v2(outputs=[{"name": "P" * 100_000}]), 400, "..."),
    "v2 classification true": (V2, v2(outputs=[{"name": "PROBABILITIES", "parameters": {"classification": True}}]),
                               400, "classification"),
    "v2 classification negative": (V2, v2(outputs=[{"name": "PROBABILITIES", "parameters": {"classification": -1}}]),
                                   400, "classification"),
    "v2 classification 1000": (V2, v2(outputs=[{"name": "PROBABILITIES", "parameters": {"classification": 1000}}]),
                               400, "MAX_CLASSIFICATION"),
    "v2 5 outputs": (V2, v2(outputs=[{"name": "PROBABILITIES"}] * 5), 400, "MAX_REQUEST_OUTPUTS"),
    "v2 id a number": (V2, v2(id=5), 400, "'id'"),
    "v2 id a list": (V2, v2(id=["a"]), 400, "'id'"),
    "v2 id an object": (V2, v2(id={}), 400, "'id'"),
    "v2 an escape in the name": (V2, v2(with_(IMAGE, name="\x1b[2J\r\nforged")), 400, "\\x1b[2J\\r\\n"),
    "v2 not an image": (V2, v2(), 400, "image 0"),
    "v2 compressed": (V2, (json.dumps(v2()).encode(), {"Content-Encoding": "gzip"}), 415, "compressed"),
    "v1 body a list": (V1, [1], 400, "JSON object"),
    "v1 body not JSON": (V1, b"{instances", 400, "not JSON"),
    "v1 body empty": (V1, b"", 400, "not JSON"),
    "v1 body null": (V1, None, 400, "JSON object"),
    "v1 no instances": (V1, {"rows": []}, 400, "instances"),
    "v1 instances an object of two": (V1, {"instances": {"a": 1, "b": 2}}, 400, "instances"),
    "v1 instances empty": (V1, {"instances": []}, 400, "instances"),
    "v1 instances a string": (V1, {"inputs": "abc"}, 400, "instances"),
    "v1 instance a number": (V1, {"instances": [5]}, 400, "instance 0"),
    "v1 instance null": (V1, {"instances": [None]}, 400, "instance 0"),
    "v1 b64 a number": (V1, {"instances": [{"b64": 5}]}, 400, "instance 0"),
    "v1 b64 not base64": (V1, {"instances": [{"b64": "!!"}]}, 400, "instance 0"),
    "v1 b64 not ASCII": (V1, {"instances": [{"b64": "é"}]}, 400, "instance 0"),
    "v1 named input a number": (V1, {"instances": [{"image": 5}]}, 400, "instance 0"),
    "v1 pixels ragged": (V1, {"instances": [[[1, 2, 3], [1]]]}, 400, "instance 0"),
    "v1 pixels floats": (V1, {"instances": [[[[0.5, 1, 2]]]]}, 400, "instance 0"),
    "v1 pixels booleans": (V1, {"instances": [[[[True, False, True]]]]}, 400, "instance 0"),
    "v1 pixels huge ints": (V1, {"instances": [[[[10**30, 1, 2]]]]}, 400, "instance 0"),
    "v1 pixels with one long string": (V1, {"instances": [[[[7, 7, "x" * 100_000]] + [[7, 7, 7]] * 223]
                                                          + [[[7, 7, 7]] * 224] * 223]}, 400, "0..255"),
    "v1 pixels empty": (V1, {"instances": [[[]]]}, 400, "instance 0"),
    "v1 pixels of the wrong shape": (V1, {"instances": [[[1, 2, 3]]]}, 400, "224"),
    "v1 pixels 500 deep": (V1, b'{"instances": [' + b"[" * 500 + b"1" + b"]" * 500 + b"]}", 400, "instance 0"),
    "v1 65 instances": (V1, {"instances": [{"b64": "aGk="}] * 65}, 413, "MAX_REQUEST_IMAGES"),
    "v1 not an image": (V1, {"instances": [{"b64": "aGk="}]}, 400, "image 0"),
    "v1 the third instance not an image": (
        V1, {"instances": [{"b64": base64.b64encode(grey_png(1)).decode()}] * 2 + [{"b64": "aGk="}]}, 400, "image 2"),
    "v1 unknown model": ("/v1/models/" + "m" * 2000 + ":predict", {"instances": []}, 404, "..."),
    "v2 unknown model": ("/v2/models/" + "m" * 2000 + "/infer", {"inputs": []}, 404, "..."),
    "v2 unknown version": ("/v2/models/standin/versions/" + "9" * 2000 + "/infer", {"inputs": []}, 404, "..."),
}


def send(url, path, body):
    if isinstance(body, tuple):
        data, headers = body
        return requests.post(url + path, data=data, headers=headers, timeout=60)
    if isinstance(body, bytes):
        return requests.post(url + path, data=body, timeout=60)
    return requests.post(url + path, data=json.dumps(body), headers={"Content-Type": "application/json"},
                         timeout=60)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_body_is_a_4xx_json_error(idle_web, case):
    url, _ = idle_web
    path, body, status, part = MALFORMED[case]
    response = send(url, path, body)
    message = error_of(response)
    assert response.status_code == status and part in message, (response.status_code, message)
