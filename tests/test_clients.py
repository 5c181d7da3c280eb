"""The clients (simple_request.py, stress_test.py) and the benchmark runner, run as a user runs them.

Against real services from conftest (MODEL=standin: a grey image of level g comes back as class g with
probability 0.9). The benchmark test runs `bench/run.py --quick` only to check that it works and writes
every section: no speed is asserted here.
"""
import json
import os
import subprocess
import sys

from PIL import Image

from conftest import REPO, free_port, grey_png, standin_label


def run(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_simple_request_prints_the_course_lines(service, tmp_path):
    service.start_worker()
    url, _ = service.start_web()
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(77))
    done = run("simple_request.py", str(image), "--url", url + "/predict")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"1. {standin_label(77)}: 0.9000"
    assert len(lines) == 5 and all(line.startswith(f"{i + 1}. ") for i, line in enumerate(lines))


def test_simple_request_says_clearly_when_the_server_is_down(tmp_path):
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(1))
    done = run("simple_request.py", str(image), "--url", f"http://127.0.0.1:{free_port()}/predict")
    assert done.returncode != 0
    assert "cannot connect" in done.stderr and "is the server running" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_stress_test_joins_every_request_and_writes_json_and_png(service, tmp_path):
    service.start_worker(BATCH_SIZE=8)
    url, _ = service.start_web()
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(128))
    report, plot = tmp_path / "report.json", tmp_path / "latency.png"
    done = run("stress_test.py", "-n", "20", "--spacing", "0.01", "--concurrency", "5", "--image", str(image),
               "--url", url + "/predict", "--json", str(report), "--plot", str(plot))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sent         20" in done.stdout and "succeeded    20" in done.stdout
    assert "p50" in done.stdout and "p99" in done.stdout
    body = json.loads(report.read_text())
    assert body["sent"] == 20 and body["succeeded"] == 20 and body["failed"] == 0
    assert len(body["requests"]) == 20 and body["latency_ok"]["p50_ms"] > 0
    assert body["ran"]["date"].endswith("Z") and "cores" in body["ran"]["machine"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The figure says how it was made and marks the percentiles (also written to the PNG's text chunks).
    info = Image.open(plot).info
    assert info["Title"].startswith("20 requests, one every 0.01 s, at most 5 in flight")
    assert url + "/predict" in info["Title"] and body["ran"]["date"][:10] in info["Title"]
    lat = body["latency_ok"]
    assert info["Description"] == f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms"


def test_stress_test_counts_failures_by_status_and_exits_non_zero(service, tmp_path):
    url, _ = service.start_web(REQUEST_TIMEOUT=1)  # no worker: every request times out with 504
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(5))
    report = tmp_path / "report.json"
    done = run("stress_test.py", "-n", "4", "--spacing", "0", "--concurrency", "4", "--image", str(image),
               "--url", url + "/predict", "--json", str(report), "--no-progress")
    assert done.returncode != 0
    assert "HTTP 504" in done.stdout and "Traceback" not in done.stderr
    assert json.loads(report.read_text())["failed_by_kind"] == {"HTTP 504": 4}


def test_both_clients_send_the_api_key_from_the_environment(service, tmp_path):
    service.start_worker()
    url, _ = service.start_web(API_KEYS="k3y")
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(9))
    keyless = run("stress_test.py", "-n", "2", "--spacing", "0", "--image", str(image), "--url", url + "/predict",
                  "--no-progress")
    assert keyless.returncode != 0 and "HTTP 401" in keyless.stdout
    with_key = {"env": dict(os.environ, IMGQ_API_KEY="k3y")}
    stress = run("stress_test.py", "-n", "2", "--spacing", "0", "--image", str(image), "--url", url + "/predict",
                 "--no-progress", **with_key)
    assert stress.returncode == 0 and "succeeded    2" in stress.stdout, stress.stdout + stress.stderr
    simple = run("simple_request.py", str(image), "--url", url + "/predict", **with_key)
    assert simple.returncode == 0 and simple.stdout.startswith(f"1. {standin_label(9)}: "), simple.stderr


def test_stress_test_counts_connection_errors(tmp_path):
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(5))
    done = run("stress_test.py", "-n", "3", "--spacing", "0", "--image", str(image), "--no-progress",
               "--url", f"http://127.0.0.1:{free_port()}/predict")
    assert done.returncode != 0
    assert "connection error" in done.stdout and "Traceback" not in done.stderr


def test_quick_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "quick.json"
    done = run("-m", "bench.run", "--quick", "--out", str(out), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    r = json.loads(out.read_text())
    for section in ("model", "low_load", "redis", "saturation", "saturation_client_resized", "idle", "polling",
                    "scaling", "queue_path",
                    "verdicts"):
        assert section in r, section
    assert r["model"]["batch_1_ms"] > 0 and r["model"]["images_per_s"] > 0
    assert r["low_load"]["succeeded"] == r["low_load"]["sent"] > 0
    assert set(r["low_load"]["breakdown_p50"]) >= {"prepare_ms", "queue_ms", "inference_ms", "delivery_ms"}
    assert r["saturation"]["requests_per_s"] > 0 and r["saturation"]["failed_by_kind"] == {}
    assert r["redis"]["per_request_low_load"]["bytes"] > 150_528  # at least the pixels cross Redis
    assert r["redis"]["course_bytes_per_request"]["bytes"] > 4 * 150_528
    assert r["idle"]["commands_per_s"] >= 0
    assert set(r["polling"]) == {"notifications", "polling_0.25s"}
    assert [x["workers"] for x in r["scaling"]["runs"]] == [1, 2, 4]
    assert all(x["succeeded"] > 0 for x in r["scaling"]["runs"] + r["queue_path"]["runs"])
    assert all("met" in v for v in r["verdicts"].values())
