"""Trace ids end to end: a request's W3C traceparent (or a fresh one) is in the response, in the web server's
log lines for the request, and in the worker's lines for its jobs; X-Request-ID is echoed."""
import re

import requests

from imgq.observe import tracing
from conftest import grey_png

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def lines_with(text, trace):
    return [line for line in text.splitlines() if f"trace={trace}" in line]


def test_traceparent_parsing_follows_the_spec():
    assert tracing.parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (TRACE, PARENT, "01")
    assert tracing.parse_traceparent(f"00-{TRACE.upper()}-{PARENT}-00") == (TRACE, PARENT, "00")
    assert tracing.parse_traceparent(f"cc-{TRACE}-{PARENT}-01-future") == (TRACE, PARENT, "01")  # later version
    for bad in (None, "", "garbage", f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01",
                f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{PARENT}-01-extra", f"00-{TRACE[:-1]}-{PARENT}-01"):
        assert tracing.parse_traceparent(bad) is None, bad


def test_a_traceparent_reaches_the_response_and_every_log_line_of_web_and_worker(service):
    worker = service.start_worker()
    url, web = service.start_web()
    response = requests.post(url + "/predict", files={"image": ("g.png", grey_png(9))}, timeout=30,
                             headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "X-Request-ID": "order-17"})
    assert response.status_code == 200
    echoed = tracing.parse_traceparent(response.headers["traceparent"])
    assert echoed[0] == TRACE and echoed[1] != PARENT and echoed[2] == "01"  # same trace, this server's span
    assert response.headers["X-Request-ID"] == "order-17"
    assert response.json()["id"] == "order-17"

    # Every web line of the request carries the trace; request.done names the request and its job.
    web_lines = [line for line in web.log_text().splitlines() if f"trace={TRACE}" in line]
    assert {"request.received", "job.pushed", "request.done"} <= {line.split()[5] for line in web_lines}
    done = next(line for line in web_lines if " request.done " in line)
    assert "id=order-17" in done
    job_id = re.search(r"job=(\w+)", done).group(1)
    # The worker's lines for that job carry the same trace.
    worker_lines = [line for line in worker.log_text().splitlines() if job_id in line]
    assert worker_lines and all(f"trace={TRACE}" in line for line in worker_lines), worker_lines
    assert any(" job.done " in line for line in worker_lines)

    # A v2 request of two images: both jobs carry its trace on the worker.
    body = {"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [2, 224, 224, 3],
                        "data": [3] * (224 * 224 * 3) + [4] * (224 * 224 * 3)}]}
    other = "0af7651916cd43dd8448eb211c80319c"
    response = requests.post(url + "/v2/models/standin/infer", json=body, timeout=60,
                             headers={"traceparent": f"00-{other}-{PARENT}-00"})
    assert response.status_code == 200, response.text
    assert response.headers["traceparent"].split("-")[1] == other
    assert len([line for line in lines_with(worker.log_text(), other) if "job.done" in line]) == 2
    assert lines_with(web.log_text(), other)


def test_a_request_without_one_gets_a_fresh_trace(service):
    url, web = service.start_web()
    seen = set()
    for headers in ({}, {"traceparent": "not-a-traceparent", "X-Request-ID": "bad id with spaces"}):
        response = requests.get(url + "/healthz", headers=headers, timeout=10)  # no worker: 503, still traced
        parsed = tracing.parse_traceparent(response.headers["traceparent"])
        assert parsed is not None and response.headers["X-Request-ID"] == parsed[0]
        seen.add(parsed[0])
    assert len(seen) == 2
    # A rejected upload's log line carries the fresh trace too.
    response = requests.post(url + "/predict", files={"image": ("a.txt", b"not an image")}, timeout=10)
    trace = response.headers["traceparent"].split("-")[1]
    assert response.status_code == 400
    assert [line for line in lines_with(web.log_text(), trace) if "request.rejected" in line]


def test_the_job_carries_the_trace_and_asks_for_probabilities_only_when_told():
    import json

    import numpy as np

    from imgq.jobs import message
    pixels = np.zeros((224, 224, 3), np.uint8)
    def header(raw):
        return json.loads(raw.split(b"\n", 1)[0])

    plain = header(message.make_job("a" * 32, pixels, 30))
    assert "trace" not in plain and "outputs" not in plain  # no trace given, and /predict's default
    traced = header(message.make_job("b" * 32, pixels, 30, outputs="probabilities", trace=TRACE))
    assert traced["trace"] == TRACE and traced["outputs"] == "probabilities"
    row = np.random.default_rng(0).random(1000, dtype=np.float32)
    assert np.array_equal(message.decode_probabilities(message.encode_probabilities(row)), row)


def test_json_log_lines_carry_the_trace_too(service):
    import json
    url, web = service.start_web(LOG_FORMAT="json")
    response = requests.post(url + "/predict", files={"image": ("a.txt", b"not an image")}, timeout=10,
                             headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.status_code == 400
    records = [json.loads(line) for line in web.log_text().splitlines() if line.startswith("{")]
    assert [r for r in records if r["action"] == "request.rejected" and r.get("trace") == TRACE], records
