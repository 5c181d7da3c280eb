"""Load generator for the benchmarks: closed-loop clients on keep-alive connections.

stress_test.py (requests, a new multipart body per request) costs the client more CPU per request than
the queue path costs the server, and client and server share the same 2 cores. Here the multipart body is
encoded once, each client thread keeps one http.client connection open, and the answer is parsed with
json only. The CPU time this process spends is returned with the figures, so a report can say how much of
the machine the client itself took.
"""
import http.client
import json
import threading
import time
import urllib.parse
import uuid


def multipart(image_bytes, filename="image.jpg", field="image", boundary=None):
    """(body, content type) of a multipart/form-data upload with one file field."""
    boundary = boundary or uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + image_bytes + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run(url, upload, total=None, duration=None, concurrency=1, timeout=60.0):
    """Send POSTs of `upload` = (image bytes, file name) from `concurrency` threads until `total` were
    started or `duration` s passed.

    Each request gets a fresh multipart boundary, as real clients (requests, curl, browsers) send: the
    server compiles a regex per new boundary (werkzeug), which a reused body would let it cache.

    Returns {"records": [...], "elapsed_s", "client_cpu_s"}; each record has start_s, latency_s, status
    ("ok", "HTTP 504", "connection error", "timeout") and the server's `timings` and the answer's `top1` label
    when it succeeded.
    """
    assert total or duration, "give a request count, a duration, or both"
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/predict"
    records, lock = [], threading.Lock()
    started = [0]
    t0 = time.perf_counter()
    stop_at = t0 + duration if duration else None

    def next_ticket():
        with lock:
            if (total and started[0] >= total) or (stop_at and time.perf_counter() >= stop_at):
                return False
            started[0] += 1
            return True

    def client():
        conn = None
        mine = []
        while next_ticket():
            begin = time.perf_counter()
            record = {"start_s": begin - t0}
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
                body, content_type = multipart(*upload)
                conn.request("POST", path, body, {"Content-Type": content_type, "Connection": "keep-alive"})
                response = conn.getresponse()
                data = response.read()
                if response.status == 200:
                    record["status"] = "ok"
                    answer = json.loads(data)
                    record["timings"] = answer.get("timings")
                    # Top-1 label, so a benchmark can count wrong answers (bench/peers/run.py does).
                    predictions = answer.get("predictions") or [{}]
                    record["top1"] = predictions[0].get("label")
                else:
                    record["status"] = f"HTTP {response.status}"
                if response.will_close:
                    conn.close()
                    conn = None
            except TimeoutError:
                record["status"] = "timeout"
                conn = _close(conn)
            except (OSError, http.client.HTTPException):
                record["status"] = "connection error"
                conn = _close(conn)
            record["latency_s"] = time.perf_counter() - begin
            mine.append(record)
        _close(conn)
        with lock:
            records.extend(mine)

    cpu0 = time.process_time()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # Bounded join: every request has its own timeout, so this only guards against the unexpected.
    give_up = time.monotonic() + (duration or 0) + timeout + 30
    for t in threads:
        t.join(max(0.0, give_up - time.monotonic()))
    elapsed = time.perf_counter() - t0
    records.sort(key=lambda r: r["start_s"])
    return {"records": records, "elapsed_s": elapsed, "client_cpu_s": time.process_time() - cpu0}


def _close(conn):
    if conn is not None:
        conn.close()
    return None
