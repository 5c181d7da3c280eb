"""The queue's tax: where each CPU millisecond of a request goes, and what each change of the defaults bought.

    python -m bench.tax                      # `make bench-tax`: about 15 minutes, bench/results/tax.json
    python -m bench.tax --quick              # a minute: 1 and 16 clients, short points, one round

Where it sits: outside the service, like bench/peers/run.py, whose service it starts the same way
(imgq/testing.py: redis-server, gunicorn with WEB_PROCESSES processes, one worker, MODEL=efficientnet_lite0,
castle_image.jpg uploads from bench/load.py's closed-loop clients).

1. Where: at each concurrency, every thread's CPU seconds (/proc, user + system) over the requests answered,
   grouped by process (web, worker, Redis) and by the name the thread gives the system
   (imgq/observe/threads.py: model, lane, writer, heartbeat, callbacks, decode; a gunicorn process'
   main thread is its event loop, a worker's its taking loop; threads LiteRT starts for itself keep the
   name "python"). Beside them, the two costs every server of this model pays whatever it is built
   around: the model alone on one thread per image, and decoding + resizing one upload, both measured here
   first. What is left is what the queue, HTTP and Python cost.
2. Changes: the defaults against lanes undone (MODEL_LANES=0, the defaults before them), against a change
   tried and not kept (DECODE_INLINE_PIXELS=0: every upload decoded off the event loop), and against the
   alternative (WORKERS=2, each MODEL_THREADS = cores // 2), in turns (round 1: A B C D, round 2: A B C D ...) with a
   fresh web server and worker for each configuration, so a busy spell of the machine hits all alike.
   Each point: req/s, p50/p95, CPU ms per request of the whole service, failed requests by kind.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from typing import Any

import psutil

from bench import load, overhead
from bench.run import cpu_model
from imgq.testing import Stack

HERE = os.path.dirname(os.path.abspath(__file__))
CASTLE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "castle_image.jpg"))
RESULTS = os.path.join(HERE, "results")
MODEL = "efficientnet_lite0"

# name → (what it is, worker env, web env, workers)
CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, Any], int]] = {
    "defaults": ("the defaults", {}, {}, 1),
    "no lanes": ("MODEL_LANES=0: every batch on the two-thread interpreter (the defaults before lanes)",
                 {"MODEL_LANES": 0}, {}, 1),
    "decode off the loop": ("DECODE_INLINE_PIXELS=0: castle decoded in the decode pool (tried, not kept)", {},
                            {"DECODE_INLINE_PIXELS": 0}, 1),
    "2 workers x 1 thread": ("WORKERS=2, each MODEL_THREADS = cores // 2 as `make run` gives them (the alternative)",
                             {"MODEL_THREADS": max(1, (os.cpu_count() or 2) // 2)}, {}, 2),
}


def thread_seconds(pids: list[int]) -> dict[tuple[int, int, str], float]:
    """(process id, thread id, the thread's system name) → CPU seconds, for the processes and their children."""
    out: dict[tuple[int, int, str], float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                for t in proc.threads():
                    try:
                        with open(f"/proc/{proc.pid}/task/{t.id}/comm") as f:
                            name = f.read().strip()
                    except OSError:
                        continue
                    if t.id == proc.pid:
                        name = "main"
                    out[(proc.pid, t.id, name)] = t.user_time + t.system_time
            except psutil.NoSuchProcess:
                continue
    return out


def role(kind: str, name: str) -> str:
    if kind == "web":
        return {"main": "event loop (decoding up to DECODE_INLINE_PIXELS)", "decode": "decode pool"}.get(name, "other")
    if kind == "worker":
        return {"main": "taking (main)", "python": "model (LiteRT's own threads)"}.get(name, name)
    return kind


def model_cpu_ms_per_image(repeats: int = 40) -> float:
    """The model alone on one thread, one image per invoke: what the Flask app pays per request for it."""
    from imgq import settings
    settings.MODEL_THREADS = 1
    return overhead.model_cpu_ms_per_image(MODEL, 1, repeats)


def decode_cpu_ms(data: bytes, repeats: int = 100) -> float:
    from imgq.web.images import _decode, _open
    _decode(_open(data), 224, 224)
    started = time.process_time()
    for _ in range(repeats):
        _decode(_open(data), 224, 224)
    return (time.process_time() - started) * 1000 / repeats


def measure(url: str, upload: tuple[bytes, str], concurrency: int, duration: float, warmup: float,
            procs: dict[str, list[int]]) -> dict[str, Any]:
    load.run(url, upload, duration=warmup, concurrency=concurrency)
    before = {kind: thread_seconds(pids) for kind, pids in procs.items()}
    result = load.run(url, upload, duration=duration, concurrency=concurrency)
    after = {kind: thread_seconds(pids) for kind, pids in procs.items()}
    ok = [r for r in result["records"] if r["status"] == "ok"]
    wrong = sum(1 for r in ok if r.get("top1") != "castle")
    n = max(len(ok), 1)
    by_process: dict[str, float] = {}
    by_thread: dict[str, float] = {}
    for kind in procs:
        for key, seconds in after[kind].items():
            used = seconds - before[kind].get(key, 0.0)
            by_process[kind] = by_process.get(kind, 0.0) + used
            label = f"{kind}: {role(kind, key[2])}"
            by_thread[label] = by_thread.get(label, 0.0) + used
    latencies = sorted(r["latency_s"] * 1000 for r in ok)
    batches = [r["timings"]["batch"] for r in ok if r.get("timings")]
    return {
        "concurrency": concurrency, "requests_per_s": round(len(ok) / result["elapsed_s"], 1),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "p95_ms": round(latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
        "failed": len(result["records"]) - len(ok), "wrong": wrong,
        "failed_by_kind": dict(Counter(r["status"] for r in result["records"] if r["status"] != "ok")),
        "answers": sorted({str(r.get("top1")) for r in ok}),
        "mean_batch": round(sum(batches) / len(batches), 2) if batches else None,
        "cpu_ms_per_request": {k: round(v * 1000 / n, 2) for k, v in by_process.items()},
        "service_cpu_ms_per_request": round(sum(by_process.values()) * 1000 / n, 2),
        "thread_cpu_ms_per_request": {k: round(v * 1000 / n, 2) for k, v in sorted(by_thread.items())
                                      if v * 1000 / n >= 0.01},
        "cores": round(sum(by_process.values()) / result["elapsed_s"], 2),
    }


def median(values: list[Any]) -> float | None:
    """The median of the points that answered anything (a point with no answer has no latency)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def start(stack: Stack, name: str) -> tuple[str, dict[str, list[int]], list[Any]]:
    _, worker_env, web_env, workers = CONFIGS[name]
    return start_service(stack, worker_env, web_env, workers)


def start_service(stack: Stack, worker_env: dict[str, Any], web_env: dict[str, Any], workers: int,
                  processes: int = 2) -> tuple[str, dict[str, list[int]], list[Any]]:
    """`workers` workers and a web server of `processes` processes on the stack's Redis: (the /predict URL,
    the process ids measure() reads by kind, the processes to stop)."""
    started = [stack.start_worker(timeout=300, **worker_env) for _ in range(workers)]
    base, web = stack.start_web(processes=processes, **web_env)
    procs = {"web": [web.popen.pid], "worker": [w.popen.pid for w in started],
             "redis": [stack.redis_server.proc.popen.pid]}
    return base + "/predict", procs, started + [web]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 16 clients, 4 s points, one round")
    parser.add_argument("--concurrency", default=None, help="client counts (default 1,4,16,64)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per point (default 10)")
    parser.add_argument("--rounds", type=int, default=None, help="turns of the changes (default 3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="the changes to measure, comma-separated")
    parser.add_argument("--out", default=None, help="default bench/results/tax.json (tax-quick.json with --quick)")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,4,16,64")).split(",")]
    duration = args.duration or (4.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    rounds = args.rounds or (1 if args.quick else 3)
    configs = [c for c in args.configs.split(",") if c]
    out_path = args.out or os.path.join(RESULTS, "tax-quick.json" if args.quick else "tax.json")
    with open(CASTLE, "rb") as f:
        data = f.read()
    upload = (data, "castle_image.jpg")
    report: dict[str, Any] = {
        "command": "make bench-tax" + (" (--quick)" if args.quick else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
        "model": MODEL, "duration_s": duration, "warmup_s": warmup, "rounds": rounds,
        "configs": {name: CONFIGS[name][0] for name in configs},
    }
    report["model_alone_cpu_ms_per_image_1_thread"] = round(model_cpu_ms_per_image(), 2)
    report["decode_cpu_ms_per_upload"] = round(decode_cpu_ms(data), 2)
    print(f"{report['machine']['cpu_model']}: model alone {report['model_alone_cpu_ms_per_image_1_thread']} ms "
          f"CPU per image on one thread, decode + resize {report['decode_cpu_ms_per_upload']} ms per castle upload",
          flush=True)
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in configs}
    with Stack(MODEL=MODEL) as stack:
        for r in range(rounds):
            for name in configs:
                url, procs, started = start(stack, name)
                points = []
                for c in concurrency:
                    point = measure(url, upload, c, duration, warmup, procs)
                    points.append(point)
                    print(f"round {r + 1} {name:20} c={c:<3} {point['requests_per_s']:6.1f} req/s  "
                          f"p50 {point['p50_ms']} p95 {point['p95_ms']} ms  CPU {point['service_cpu_ms_per_request']} "
                          f"ms/request  failed {point['failed']} wrong {point['wrong']}", flush=True)
                runs[name].append(points)
                for proc in started:
                    stack.stop(proc)
    report["runs"] = runs
    report["medians"] = {
        name: [{"concurrency": c,
                **{k: median([rnd[i][k] for rnd in rounds_]) for k in
                   ("requests_per_s", "p50_ms", "p95_ms", "service_cpu_ms_per_request")}}
               for i, c in enumerate(concurrency)]
        for name, rounds_ in runs.items()}
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out_path}")
    bad = sum(p["failed"] + p["wrong"] for rounds_ in runs.values() for rnd in rounds_ for p in rnd)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
