"""A JSON fuzzer for the v2 and TF Serving endpoints: 10,000 mutated bodies, all over HTTP to a real gunicorn
with a model worker running (MODEL=standin), must get 0 answers >= 500, every answer JSON.

Each body starts from a valid one (8x8 PNGs as base64 in v2 BYTES tensors and TF Serving {"b64": ...}
instances, UINT8 pixel tensors, binary tensor data after the JSON header) and gets one to three mutations:
keys deleted, duplicated or added, values swapped for other types, huge, negative and float numbers, deep
nesting, long strings, a truncated text, random bytes, a wrong Inference-Header-Content-Length. Case i is made
by random.Random(SEED + i) alone, so a failure names the case and can be replayed by itself:
    make_case(i) → (path, body bytes, headers)
"""
import base64
import io
import json
import random
import re
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from imgq import settings

SEED = 22_000
CASES = 10_000
THREADS = 4
V2_PATHS = ("/v2/models/standin/infer", "/v2/models/standin/versions/1/infer")
V1_PATH = "/v1/models/standin:predict"
HEADER = "Inference-Header-Content-Length"
MAX_BODY = 8 * 2**20  # bodies are cut to this, under MAX_UPLOAD_BYTES: a larger one is refused unread (elsewhere)


def small_png(rng):
    image = Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def png_header_only(width, height):
    """A PNG header declaring width x height, with no pixel data: its size is read, its decode fails."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


PNGS = [small_png(random.Random(n)) for n in range(4)]
B64 = [base64.b64encode(p).decode() for p in PNGS]
# Files whose headers alone must be judged: huge sizes (MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS), zero and
# 2**31 - 1 sides, a cut file.
HOSTILE_B64 = [base64.b64encode(f).decode() for f in (
    png_header_only(8000, 5000), png_header_only(9000, 5000), png_header_only(0, 8), png_header_only(1, 1),
    png_header_only(2**31 - 1, 2**31 - 1), PNGS[0][:40])]


class Raw:
    """JSON text put into a body as it is: what json.dumps cannot make (duplicate keys, NaN, 5000 digits,
    nesting deeper than its recursion)."""

    def __init__(self, text):
        self.text = text


def dumps(node):
    """json.dumps, with each Raw placed as its text."""
    raws = []

    def mark(value):
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(node))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00RAW{i}\x00"), raw, 1)
    return text


# --- valid bodies ----------------------------------------------------------------------------------------
def v2_outputs(rng):
    choice = rng.randrange(4)
    if choice == 0:
        return {}
    if choice == 1:
        return {"parameters": {"binary_data_output": rng.random() < 0.5}}
    outputs = [{"name": "PROBABILITIES", "parameters": {"binary_data": rng.random() < 0.5}}]
    if choice == 3:
        outputs.append({"name": "PROBABILITIES", "parameters": {"classification": rng.randrange(1, 6),
                                                               "binary_data": rng.random() < 0.5}})
    return {"outputs": outputs}


def seed_v2_bytes_json(rng):
    n = rng.randrange(1, 4)
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [n],
                        "data": [rng.choice(B64 if rng.random() < 0.9 else HOSTILE_B64) if rng.random() < 0.8
                                 else {"b64": rng.choice(B64)} for _ in range(n)]}], **v2_outputs(rng)}
    if rng.random() < 0.3:
        body["id"] = f"req-{rng.randrange(1000)}"
    return body, None


def seed_v2_bytes_binary(rng):
    files = [rng.choice(PNGS) for _ in range(rng.randrange(1, 4))]
    tail = b"".join(struct.pack("<I", len(f)) + f for f in files)
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(files)],
                        "parameters": {"binary_data_size": len(tail)}}], **v2_outputs(rng)}
    return body, tail


def seed_v2_pixels(rng):
    """A UINT8 [1, 224, 224, 3] tensor: as binary data mostly, as a flat JSON list sometimes (150,528 numbers
    make a 300 KB body, so fewer of those)."""
    level = rng.randrange(256)
    body = {"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3]}], **v2_outputs(rng)}
    if rng.random() < 0.8:
        body["inputs"][0]["parameters"] = {"binary_data_size": 224 * 224 * 3}
        return body, bytes([level]) * (224 * 224 * 3)
    values = [str(level)] * (224 * 224 * 3)
    if rng.random() < 0.5:  # one value of another kind among the numbers
        values[rng.randrange(len(values))] = dumps(any_value(rng))
    body["inputs"][0]["data"] = Raw("[" + ",".join(values) + "]")
    return body, None


def seed_v1(rng):
    n = rng.randrange(1, 4)
    choice = rng.randrange(4)
    if choice == 0:
        return {"instances": [{"b64": rng.choice(B64)} for _ in range(n)]}, None
    if choice == 1:
        return {"instances": [{"image": {"b64": rng.choice(B64)}} for _ in range(n)]}, None
    if choice == 2:
        return {"inputs": {"image": [{"b64": rng.choice(B64)} for _ in range(n)]}}, None
    level = rng.randrange(256)
    row = "[" + ",".join([f"[{level},{level},{level}]"] * 224) + "]"
    rows = [row] * 224
    if rng.random() < 0.5:  # one pixel of another kind among the numbers
        rows[rng.randrange(224)] = "[" + ",".join([f"[{level},{level},{level}]"] * 223 + [
            f"[{level},{dumps(any_value(rng))},{level}]"]) + "]"
    return {"instances": [Raw("[" + ",".join(rows) + "]")]}, None


SEEDS = [(seed_v2_bytes_json, 4), (seed_v2_bytes_binary, 3), (seed_v2_pixels, 1), (seed_v1, 4)]


# --- mutations -------------------------------------------------------------------------------------------
def any_value(rng, depth=0):
    """A value of any JSON type, including the awkward ones."""
    choice = rng.randrange(22)
    if choice == 0:
        return None
    if choice in (1, 2):
        return rng.random() < 0.5
    if choice == 3:
        return rng.randrange(-5, 300)
    if choice == 4:
        return rng.choice([-1, -(2**63), 2**31, 2**32, 2**63, 2**64, 10**30, 4294967296])
    if choice == 5:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 224.0, 3.0])
    if choice == 6:
        return Raw(rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 5000, "1" * 4000]))
    if choice == 7:
        return ""
    if choice == 8:
        return rng.choice(["IMAGE", "PIXELS", "PROBABILITIES", "BYTES", "UINT8", "FP32", "b64",
                           "binary_data_size", "classification", "standin"])
    if choice == 9:
        return rng.choice(B64 + HOSTILE_B64)
    if choice == 10:
        return "".join(rng.choice("ab\x00\x1b\r\n\"\\é\u2028\ud800€/") for _ in range(rng.randrange(1, 20)))
    if choice == 11:
        return rng.choice("xA=%") * rng.choice([1000, 100_000, 1_000_000])
    if choice == 12:
        return Raw("[" * (n := rng.choice([10, 100, 900, 3000])) + "]" * n)
    if choice == 13:
        return Raw('{"a":' * (n := rng.choice([10, 100, 900, 3000])) + "1" + "}" * n)
    if choice == 14:
        return {"b64": rng.choice(B64 + ["", "!!", 5])}
    if choice == 15:
        return [rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 224]))]
    if choice in (16, 17) and depth < 3:
        return [any_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if choice in (18, 19) and depth < 3:
        return {rng.choice(["name", "datatype", "shape", "data", "parameters", "x"]): any_value(rng, depth + 1)
                for _ in range(rng.randrange(0, 3))}
    if choice == 20:
        return [rng.choice([1, 0, -1, 224, 3, 2**32, 65, 10**20, True, 1.0]) for _ in range(rng.randrange(0, 6))]
    return rng.choice([[], {}, [[]], [{}], [1, [2, [3]]]])


def containers(node, path=()):
    """(path, container) for every list and dict in the tree, the root first."""
    if isinstance(node, (dict, list)):
        yield path, node
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)) and not (isinstance(value, list) and len(value) > 64):
                yield from containers(value, path + (key,))


def mutate_tree(rng, body):
    """One structural mutation of the parsed body, in place (the body may be replaced: returned)."""
    spots = list(containers(body))
    _, node = rng.choice(spots)
    kind = rng.randrange(9)
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        if kind in (0, 1):
            del node[key]
        elif kind == 2:  # a duplicate key: JSON allows it, the parser keeps the last
            node[key] = Raw(dumps(node[key]) + ", " + json.dumps(key) + ": " + dumps(any_value(rng)))
        elif kind == 3:
            node[rng.choice(["extra", "id", "parameters", "outputs", "inputs", "data", "shape", "name"])] = \
                any_value(rng)
        elif kind == 4:  # deep nesting around the value
            node[key] = Raw("[" * (n := rng.choice([2, 50, 900, 5000])) + dumps(node[key]) + "]" * n)
        else:
            node[key] = any_value(rng)
    elif isinstance(node, list) and node:
        i = rng.randrange(len(node))
        if kind == 0:
            del node[i]
        elif kind == 1:  # many more elements (of a small one: the bodies stay under MAX_UPLOAD_BYTES)
            small = len(dumps(node[i])) < 10_000
            node.extend([node[i]] * rng.choice([1, 2, 63, 64, 200] if small else [1, 2]))
        elif kind == 2:
            node.insert(i, any_value(rng))
        elif kind == 3:
            node[i] = [node[i]]
        else:
            node[i] = any_value(rng)
    else:
        if isinstance(node, list):
            node.append(any_value(rng))
        else:
            node[rng.choice(["inputs", "instances", "name"])] = any_value(rng)
    return body


def mutate_text(rng, text):
    """One mutation of the body's bytes."""
    kind = rng.randrange(5)
    if kind == 0 and text:
        return text[:rng.randrange(len(text))]
    if kind == 1 and text:
        i = rng.randrange(len(text))
        return text[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) + text[i + 1:]
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if kind == 3:
        return text + rng.choice([b"}", b"]", b",", b"\x00", b" " * 10, b"{}"])
    return rng.choice([b"[", b"{", b'{"inputs":'])[:1] * rng.choice([1, 50, 5000]) + text


def make_case(i):
    """Case i of the fuzzer: (path, body, headers), from random.Random(SEED + i) alone."""
    rng = random.Random(SEED + i)
    make = rng.choices([m for m, _ in SEEDS], weights=[w for _, w in SEEDS])[0]
    body, tail = make(rng)
    path = V1_PATH if make is seed_v1 else rng.choice(V2_PATHS)
    text_mutation = rng.random() < 0.15
    for _ in range(rng.choice([0, 1, 1, 2, 3])):  # a fifth stay valid, to reach the worker and back
        body = mutate_tree(rng, body)
    head = dumps(body).encode("utf-8", "surrogatepass")
    if text_mutation:
        head = mutate_text(rng, head)
    headers = {"Content-Type": "application/json"}
    if tail is not None or rng.random() < 0.05:
        tail = tail or b""
        if rng.random() < 0.1:
            tail = mutate_text(rng, tail)
        length = str(len(head))
        if rng.random() < 0.1:
            length = rng.choice(["0", "-1", "x", str(len(head) + len(tail) + 1), str(len(head) // 2), "1e3",
                                 "9" * 50, ""])
        headers[HEADER] = length
        head += tail
    return path, head[:MAX_BODY], headers


def check(url, session, i):
    """(status, None) if case i is answered as it must be, else (status, what went wrong)."""
    path, body, headers = make_case(i)
    try:
        response = session.post(url + path, data=body, headers=headers, timeout=120)
    except requests.RequestException as exc:
        return None, f"no answer ({exc!r})"
    status, content = response.status_code, response.content
    try:
        if HEADER in response.headers:  # binary tensor data: the JSON header, then the tensors' bytes
            answer = json.loads(content[:int(response.headers[HEADER])])
        else:
            answer = json.loads(content)
    except ValueError:
        return status, f"{status}, the answer is not JSON: {content[:200]!r}"
    if not isinstance(answer, dict) or status >= 500 or (status >= 400 and not isinstance(answer.get("error"), str)):
        return status, f"{status} {str(answer)[:300]}"
    return status, None


@pytest.mark.timeout(900)
def test_10000_mutated_v2_and_tf_serving_bodies_get_no_5xx(service):
    service.start_worker(BATCH_SIZE=64)
    url, web = service.start_web()
    local = threading.local()

    def one(i):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return check(url, local.session, i)

    started = time.monotonic()
    statuses, failures = Counter(), []
    with ThreadPoolExecutor(THREADS) as pool:
        for i, (status, failure) in enumerate(pool.map(one, range(CASES))):
            statuses[status] += 1
            if failure:
                failures.append((i, failure))
    print(f"{CASES} cases over HTTP, {THREADS} threads, {time.monotonic() - started:.0f} s: "
          f"{dict(sorted(statuses.items(), key=str))}")
    if failures:
        i, failure = failures[0]
        path, body, _ = make_case(i)
        pytest.fail(f"{len(failures)} of {CASES} cases failed; the first, case {i} (make_case({i})): {failure}\n"
                    f"POST {path} {body[:300]!r}{'...' if len(body) > 300 else ''}")
    assert statuses[200] > CASES // 20, statuses  # the mutations leave enough bodies valid to reach the worker
    with open(web.log_path, "rb") as f:
        log = f.read()
    assert b"request.crashed" not in log
    # The fuzzed text the log quotes (names, datatypes, ids) is escaped and cut: no raw control character, no
    # line past LOG_LINE_MAX bytes.
    lines = log.split(b"\n")
    assert max(len(line) + 1 for line in lines) <= settings.LOG_LINE_MAX
    assert not [line for line in lines if re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", line)][:1]
