"""Slow and idle clients against the real gunicorn (gunicorn.conf.py: gevent worker, BodyDeadline).

Where it sits: the HTTP edge, before Flask sees a request. 200 connections that send nothing, half a
request head, or a head and 10 bytes of a promised body must not stop a normal request being answered
(under gthread, 140 of them held every thread); and the server must end them: 408 JSON for a body that does
not arrive within BODY_TIMEOUT, a plain close for a head that does not arrive within HEADER_TIMEOUT.
"""
import json
import socket
import statistics
import time

import requests

from conftest import grey_png, standin_label

HEAD = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n")


def open_slow_connections(port, n):
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        kind = ("idle", "half-head", "stalled-body")[i % 3]
        if kind == "half-head":
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        elif kind == "stalled-body":
            s.sendall(HEAD + b"0123456789")
        conns.append((kind, s))
    return conns


def answer_of(sock, timeout):
    """What the server sent before closing (b"" for a plain close); None if still open after `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return data


def test_200_slow_connections_do_not_block_a_normal_request_and_are_ended(service):
    service.start_worker()
    url, web = service.start_web(processes=2, BODY_TIMEOUT=4, HEADER_TIMEOUT=2)
    port = int(url.rsplit(":", 1)[1])
    conns = open_slow_connections(port, 200)
    opened = time.monotonic()
    try:
        times = []
        for level in (10, 20, 30):
            started = time.monotonic()
            r = requests.post(url + "/predict", files={"image": ("g.png", grey_png(level))}, timeout=30)
            times.append(time.monotonic() - started)
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] == standin_label(level)
        # Loose bounds a busy machine cannot break (normal: ~10 ms each); gthread took > 20 s here.
        assert statistics.median(times) < 1 and max(times) < 3, times

        # The server ends every one of them by itself (HEADER_TIMEOUT 2 s, BODY_TIMEOUT 4 s).
        answers = {kind: [] for kind in ("idle", "half-head", "stalled-body")}
        for kind, s in conns:
            answers[kind].append(answer_of(s, timeout=max(1.0, opened + 30 - time.monotonic())))
        assert all(a is not None for got in answers.values() for a in got), "some connection was never closed"
        assert all(a == b"" for a in answers["idle"] + answers["half-head"])
        for a in answers["stalled-body"]:
            head, _, body = a.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head
            assert "BODY_TIMEOUT" in json.loads(body)["error"]
    finally:
        for _, s in conns:
            s.close()
    assert "Traceback" not in web.log_text()


def test_a_body_that_arrives_slowly_but_in_time_is_served(service):
    service.start_worker()
    url, _ = service.start_web(BODY_TIMEOUT=20)
    port = int(url.rsplit(":", 1)[1])
    image = grey_png(42)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"g.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--b--\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(HEAD.replace(b"100000", str(len(body)).encode()).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        for i in range(0, len(body), len(body) // 4 + 1):  # in four pieces, 0.3 s apart
            s.sendall(body[i:i + len(body) // 4 + 1])
            time.sleep(0.3)
        answer = answer_of(s, timeout=30)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload)["predictions"][0]["label"] == standin_label(42)
