"""Notifications against polling, measured (the write-up's question 5): `make bench-notify`.

    python -m bench.notifications              # about 4 minutes → bench/results/notifications.json
    python -m bench.notifications --quick      # seconds: checks that every section runs

Where it sits: outside the service, like bench/run.py. It starts its own redis-server, one gunicorn web
server at a time and one stand-in worker (imgq/testing.py), so what is measured is the waiting, not a model:

  cdf       end-to-end latency of >= 1,000 requests per mode, in repeats: keyspace notifications (with the
            backup poll every BACKUP_POLL_S=5 s while the listener hears, and every 1 s), the course's polling
            every 0.25 s, polling every 1 s
  sweep     Redis commands per request and per second against the time a request spends waiting: the
            stand-in sleeps 0.1 .. 5 s per batch, in each mode
  fanout    every web process's listener receives every result's event: Redis output bytes and web CPU
            per request with 1, 2 and 4 web processes
  lost      a lost notification: the pub/sub connections are killed (CLIENT KILL TYPE pubsub) while
            requests wait, and their results are set while no listener is subscribed; the timeline shows
            when each request was answered and by what (the resubscribe wake-up or the backup poll)
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import sys
import threading
import time

import numpy as np
import redis
import requests

from bench import load
from imgq.jobs import keys
from bench.run import CpuMeter, RedisMeter, cpu_model, ms_stats, tiny_png
from imgq.testing import Stack

HERE = os.path.dirname(os.path.abspath(__file__))

MODES = {  # name → web server settings
    "notifications": {"NOTIFICATIONS": 1, "POLL_INTERVAL": 1.0, "BACKUP_POLL_S": 5.0},
    # the backup poll at full speed even while the listener hears (the default before BACKUP_POLL_S)
    "notifications, 1 s backup": {"NOTIFICATIONS": 1, "POLL_INTERVAL": 1.0, "BACKUP_POLL_S": 1.0},
    "polling 0.25 s": {"NOTIFICATIONS": 0, "POLL_INTERVAL": 0.25},
    "polling 1 s": {"NOTIFICATIONS": 0, "POLL_INTERVAL": 1.0},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few requests per section: checks that it runs")
    p.add_argument("--requests", type=int, default=400, help="requests per repeat in the CDF (default 400)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the CDF per mode (default 3)")
    p.add_argument("--concurrency", type=int, default=16, help="clients at once (default 16)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "notifications.json"))
    p.add_argument("--only", choices=list(SECTIONS), action="append",
                   help="run this section only (repeatable); the others are kept from the --out file")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.repeats = 20, 1
    return args


def web_for(stack, mode, processes=1, current=None):
    if current is not None:
        stack.stop(current)
    url, web = stack.start_web(processes=processes, **MODES[mode])
    # start_web returns when one process answers; each process subscribes its own listener when it boots.
    listeners = processes if MODES[mode]["NOTIFICATIONS"] else 0
    deadline = time.monotonic() + 60
    while subscribed(stack) != listeners and time.monotonic() < deadline:
        time.sleep(0.05)
    load.run(url + "/predict", (tiny_png(), "t.png"), total=4, concurrency=2)  # warm: connections, listener
    return url, web


def subscribed(stack):
    """Connections with a pattern subscription: one per web process whose listener is up."""
    return sum(1 for c in stack.redis().client_list() if int(c.get("psub", 0)) > 0)


def section_cdf(args):
    """Latency of many requests in each mode; the standin answers at once, so the wait is the mode's own."""
    out = {}
    with Stack(MODEL="standin", STANDIN_LATENCY_MS=20, BATCH_SIZE=32) as stack:
        stack.start_worker()
        web = None
        for mode in MODES:
            url, web = web_for(stack, mode, current=web)
            meter = RedisMeter(stack.redis())
            repeats = []
            for _ in range(args.repeats):
                meter.start()
                result = load.run(url + "/predict", (tiny_png(), "t.png"), total=args.requests,
                                  concurrency=args.concurrency)
                redis_use = meter.stop(args.requests)
                ok = [r["latency_s"] * 1000 for r in result["records"] if r["status"] == "ok"]
                repeats.append({"latency_ms": ms_stats(ok), "failed": args.requests - len(ok),
                                "commands_per_request": redis_use["per_request"]["commands"],
                                "sorted_ms": [round(v, 2) for v in sorted(ok)]})
            out[mode] = {"repeats": repeats,
                         "p50_spread_ms": [min(r["latency_ms"]["p50"] for r in repeats),
                                           max(r["latency_ms"]["p50"] for r in repeats)]}
            stack.check_alive()
    return {"settings": {"standin_latency_ms": 20, "batch_size": 32, "concurrency": args.concurrency,
                         "requests_per_repeat": args.requests, "repeats": args.repeats}, "modes": out}


def section_sweep(args):
    """Commands per request and per second against the time spent waiting (the stand-in's latency)."""
    latencies = [0.1, 0.5, 1.0, 2.0, 5.0] if not args.quick else [0.1, 0.5]
    rows = []
    for latency in latencies:
        with Stack(MODEL="standin", STANDIN_LATENCY_MS=latency * 1000, BATCH_SIZE=64) as stack:
            stack.start_worker()
            web = None
            for mode in MODES:
                url, web = web_for(stack, mode, current=web)
                meter = RedisMeter(stack.redis())
                n = args.concurrency * (1 if args.quick else 2)
                meter.start()
                result = load.run(url + "/predict", (tiny_png(), "t.png"), total=n, concurrency=args.concurrency)
                redis_use = meter.stop(n)
                ok = [r for r in result["records"] if r["status"] == "ok"]
                waits = [r["timings"]["total_ms"] for r in ok]
                rows.append({"standin_latency_s": latency, "mode": mode, "requests": n, "ok": len(ok),
                             "wait_ms_p50": round(float(np.median(waits)), 1) if waits else None,
                             "commands_per_request": redis_use["per_request"]["commands"],
                             "commands_per_s": round(redis_use["commands"] / redis_use["seconds"], 1),
                             "commands_by_name": redis_use["per_request"]["commands_by_name"]})
                stack.check_alive()
    return {"settings": {"batch_size": 64, "concurrency": args.concurrency}, "rows": rows}


def section_fanout(args):
    """Redis output bytes and web CPU per request with 1, 2 and 4 web processes (notifications on)."""
    rows = []
    n = 60 if args.quick else 1000
    with Stack(MODEL="standin", BATCH_SIZE=32) as stack:
        stack.start_worker()
        web = None
        for processes in (1, 2, 4):
            url, web = web_for(stack, "notifications", processes=processes, current=web)
            meter, cpu = RedisMeter(stack.redis()), CpuMeter(stack)
            meter.start()
            cpu.start()
            t0 = time.monotonic()
            result = load.run(url + "/predict", (tiny_png(), "t.png"), total=n, concurrency=args.concurrency)
            wall = time.monotonic() - t0
            cores = cpu.stop()
            redis_use = meter.stop(n)
            web_cpu = sum(v for k, v in cores.items() if k.startswith("web")) * wall
            subscribers = subscribed(stack)
            rows.append({"web_processes": processes, "listeners_subscribed": subscribers, "requests": n,
                         "ok": sum(r["status"] == "ok" for r in result["records"]),
                         "redis_output_bytes_per_request": redis_use["per_request"]["output_bytes"],
                         "web_cpu_ms_per_request": round(1000 * web_cpu / n, 2)})
            stack.check_alive()
    one = rows[0]["redis_output_bytes_per_request"]
    for row in rows:
        row["extra_output_bytes_per_request_vs_1"] = row["redis_output_bytes_per_request"] - one
    return {"rows": rows}


def lost_notification_run(stack, url, worker, n=8, kill_every_s=0.005):
    """Requests wait; from the moment all their jobs are in Redis until the worker has SET every result (its
    job.done lines: the worker must log at DEBUG), the listener's connection is killed again and again, so no
    listener is subscribed when the results are SET and their events are lost. Returns each request's timeline.

    Times are seconds from the first request. Each request is answered either when the listener resubscribes
    (it wakes every waiting request once) or by its own poll every POLL_INTERVAL: never at its timeout.
    """
    client = stack.redis()
    t0, wall0 = time.monotonic(), time.time()
    events = {"kills": [], "t0_wall": wall0}
    stop = threading.Event()

    def queued():
        return client.llen(keys.queue(stack.prefix)) + sum(
            client.llen(k) for k in client.scan_iter(keys.inflight("*", stack.prefix)))

    def killer():
        while not stop.is_set():
            killed = client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            if killed:
                events["kills"].append(round(time.monotonic() - t0, 3))
            time.sleep(kill_every_s)

    def one(level):
        started = time.monotonic() - t0
        r = requests.post(url + "/predict", files={"image": ("g.png", _grey(level))}, timeout=60)
        return {"level": level, "sent_s": round(started, 3), "answered_s": round(time.monotonic() - t0, 3),
                "status": r.status_code, "id": r.json().get("id"),
                "queue_ms": (r.json().get("timings") or {}).get("queue_ms")}

    written_before = worker.log_text().count("job.done")
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one, level) for level in range(10, 10 + n)]
        deadline = time.monotonic() + 30
        while queued() < n and time.monotonic() < deadline:  # every job pushed, none answered yet
            time.sleep(0.005)
        kill_thread = threading.Thread(target=killer, daemon=True)
        kill_thread.start()
        deadline = time.monotonic() + 60
        while worker.log_text().count("job.done") - written_before < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the last SET's event is published while nobody listens
        stop.set()
        kill_thread.join()
        rows = [f.result() for f in futures]
    events["kill_window_s"] = [events["kills"][0], events["kills"][-1]] if events["kills"] else None
    if not events["kills"]:
        raise RuntimeError("no pub/sub connection was killed: the listener was not subscribed")
    return rows, events


def _grey(level):
    import io
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (level, level, level)).save(out, "PNG")
    return out.getvalue()


def section_lost(args):
    with Stack(MODEL="standin", STANDIN_LATENCY_MS=1500, BATCH_SIZE=32, LOG_LEVEL="INFO") as stack:
        worker = stack.start_worker(LOG_LEVEL="DEBUG")  # its job.done lines say when each result was SET
        url, web = web_for(stack, "notifications")
        rows, events = lost_notification_run(stack, url, worker)
        deadline = time.monotonic() + 15
        while subscribed(stack) < 1 and time.monotonic() < deadline:  # when the listener came back
            time.sleep(0.05)
        web_log, worker_log = web.log_text(), worker.log_text()
    def seconds(line):  # a log line's UTC time, in seconds from the first request
        when = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
        return round(when.replace(tzinfo=datetime.timezone.utc).timestamp() - events["t0_wall"], 3)

    # When each result was SET: the worker logs job.done just before.
    done_at = {}
    for line in worker_log.splitlines():
        m = re.search(r" id=(\w+)", line)
        if m and "job.done" in line:
            done_at[m.group(1)] = seconds(line)
    for row in rows:
        row["result_set_s"] = done_at.get(row["id"])
    # The listener is down from the first kill until it subscribes again after the last one (it backs off between
    # attempts, so that is later than the last kill).
    subscriptions = [seconds(line) for line in web_log.splitlines() if "listener.subscribed" in line]
    last_kill = events["kill_window_s"][1]
    back = min((t for t in subscriptions if t >= last_kill), default=None)
    return {"requests": rows, "kills": len(events["kills"]), "kill_window_s": events["kill_window_s"],
            "unsubscribed_s": [events["kill_window_s"][0], back], "listener_subscriptions_in_log": len(subscriptions),
            "poll_interval_s": MODES["notifications"]["POLL_INTERVAL"], "worker_latency_s": 1.5}


SECTIONS = {"cdf": section_cdf, "sweep": section_sweep, "fanout": section_fanout, "lost": section_lost}


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    out = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu_model": cpu_model(),
                       "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
           "quick": args.quick}
    if args.only:
        with open(args.out) as f:
            kept = json.load(f)
        # The file's date and machine stay those of its full run; a section run again carries its own.
        out = dict(kept, sections_rerun=dict(kept.get("sections_rerun", {}),
                                             **{name: out["when"] for name in args.only}))
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        t = time.monotonic()
        print(f"[notify] {name} ...", file=sys.stderr, flush=True)
        out[name] = fn(args)
        print(f"[notify] {name}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    if not args.only:
        out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        out["total_seconds"] = round(time.monotonic() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    for mode, m in out["cdf"]["modes"].items():
        print(f"{mode:16s} p50 {[r['latency_ms']['p50'] for r in m['repeats']]} ms, "
              f"commands/request {[r['commands_per_request'] for r in m['repeats']]}")
    for row in out["fanout"]["rows"]:
        print(f"fan-out: {row['web_processes']} web processes: {row['redis_output_bytes_per_request']} B out/request, "
              f"web CPU {row['web_cpu_ms_per_request']} ms/request")
    lost = out["lost"]["requests"]
    print(f"lost notification: {sum(r['status'] == 200 for r in lost)}/{len(lost)} answered, latest at "
          f"{max(r['answered_s'] for r in lost)} s")
    print(f"{args.out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
