"""The runtime sweep: which MODEL_RUNTIME, BATCH_SIZE, MODEL_THREADS and WORKERS serve castle uploads best.

    python -m bench.sweep            # the full grid (~8 minutes) → bench/results/sweep.json + a table
    python -m bench.sweep --quick    # seconds: stand-in model, a tiny grid (checks the harness works)

Where it sits: outside the service, like bench/run.py (which calls run_sweep, compare_defaults and
model_alone from `make bench`). One redis-server and one gunicorn (imgq/testing.py) serve the whole sweep;
for each point the workers are started with that point's settings, loaded with bench/load.py (closed-loop
clients sending castle_image.jpg), and stopped. Each point measures:
  saturated  enough clients to keep every worker's batches full: requests/s, p50/p95 latency, mean batch
  one        one request at a time: p50/p95 latency
Grid: runtime {tensorflow, litert} x BATCH_SIZE {1, 2, 4, 8, 32} x MODEL_THREADS {1, 2} x WORKERS {1, 2}.

model_alone runs bench/model_speed.py for both models on both runtimes with 1 and 2 threads (ResNet50 on
random weights saved once in MODEL_CACHE_DIR when no real weights file is present: speed does not depend on
the weights' values). compare_defaults measures "today's default" (TensorFlow, BATCH_SIZE=32, TensorFlow's
own threads, one worker) next to the new defaults in the same run and reports the ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from imgq import settings
from bench import load
from imgq.testing import Stack

HERE = os.path.dirname(os.path.abspath(__file__))


def _stderr(line):
    print(line, file=sys.stderr, flush=True)

RUNTIMES = ("tensorflow", "litert")
BATCH_SIZES = (1, 2, 4, 8, 32)
THREADS = (1, 2)
WORKERS = (1, 2)
# What `make run` did before the LiteRT runtime: the figure the new defaults are compared with.
TODAY = {"MODEL_RUNTIME": "tensorflow", "BATCH_SIZE": 32, "BATCH_WAIT_MS": 0, "MODEL_THREADS": 0, "WORKERS": 1}


def new_defaults():
    """The settings `make run` uses now (MODEL_THREADS unset: the launcher gives each worker cores // WORKERS)."""
    workers = settings.WORKERS
    threads = settings.MODEL_THREADS or max(1, (os.cpu_count() or 1) // workers)
    return {"MODEL_RUNTIME": settings.MODEL_RUNTIME, "BATCH_SIZE": settings.BATCH_SIZE,
            "BATCH_WAIT_MS": settings.BATCH_WAIT_MS, "MODEL_THREADS": threads, "WORKERS": workers}


def _stats(values):
    if not values:
        return None
    a = np.asarray(values, dtype=float) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2), "n": len(a)}


def _summary(result):
    ok = [r for r in result["records"] if r["status"] == "ok"]
    failed = len(result["records"]) - len(ok)
    return {"requests_per_s": round(len(ok) / result["elapsed_s"], 1) if result["elapsed_s"] else None,
            "latency_ms": _stats([r["latency_s"] for r in ok]), "failed": failed,
            "mean_batch": round(float(np.mean([r["timings"]["batch"] for r in ok])), 1) if ok else None}


def _start_workers(stack, count, env, timeout=300):
    procs = [stack.start_worker(wait=False, **env) for _ in range(count)]
    deadline = time.monotonic() + timeout
    while not all(stack.worker_alive(p) for p in procs):
        for p in procs:
            if p.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start within {timeout}s:\n{p.log_text()[-2000:]}")
        time.sleep(0.05)
    return procs


def measure_point(stack, predict, upload, config, duration, one_n):
    """Start config["WORKERS"] workers with config's settings, measure saturated and one-at-a-time, stop them."""
    env = {k: v for k, v in config.items() if k != "WORKERS"}
    procs = _start_workers(stack, config["WORKERS"], env)
    try:
        clients = min(64, max(8, 2 * config["BATCH_SIZE"] * config["WORKERS"]))
        load.run(predict, upload, total=clients, concurrency=clients)  # warm: first batches, connections
        saturated = _summary(load.run(predict, upload, duration=duration, concurrency=clients))
        load.run(predict, upload, total=2, concurrency=1)
        one = _summary(load.run(predict, upload, total=one_n, concurrency=1))
        stack.check_alive()
    finally:
        for p in procs:
            stack.stop(p)
    return dict(config, clients=clients, saturated=saturated, one_at_a_time=one)


def run_sweep(image_bytes, model="efficientnet_lite0", runtimes=RUNTIMES, batch_sizes=BATCH_SIZES,
              threads=THREADS, workers=WORKERS, duration=3.0, one_n=15, log=_stderr):
    """Every point of the grid on one Redis + one gunicorn; returns {"points": [...], "best": {runtime: point}}."""
    upload = (image_bytes, "castle_image.jpg")
    points = []
    started = time.monotonic()
    with Stack(MODEL=model) as stack:
        url, _ = stack.start_web(processes=settings.WEB_PROCESSES)
        predict = url + "/predict"
        for runtime in runtimes:
            for batch in batch_sizes:
                for t in threads:
                    for w in workers:
                        config = {"MODEL_RUNTIME": runtime, "BATCH_SIZE": batch, "BATCH_WAIT_MS": 0,
                                  "MODEL_THREADS": t, "WORKERS": w}
                        p = measure_point(stack, predict, upload, config, duration, one_n)
                        points.append(p)
                        log(f"[sweep] {runtime:<10} batch {batch:>2} threads {t} workers {w}: "
                            f"{p['saturated']['requests_per_s']:>6} req/s p50 {p['saturated']['latency_ms']['p50']} "
                            f"p95 {p['saturated']['latency_ms']['p95']} ms | one at a time p50 "
                            f"{p['one_at_a_time']['latency_ms']['p50']} ms")
    best = {}
    for runtime in runtimes:
        mine = [p for p in points if p["MODEL_RUNTIME"] == runtime and p["saturated"]["requests_per_s"]]
        if mine:
            best[runtime] = max(mine, key=lambda p: p["saturated"]["requests_per_s"])
    return {"model": model, "image": "castle_image.jpg", "duration_s": duration, "one_at_a_time_n": one_n,
            "points": points, "best": best, "seconds": round(time.monotonic() - started, 1),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def interleaved(image_bytes, configs, model="efficientnet_lite0", rounds=3, duration=3.0, one_n=10, log=_stderr):
    """Several configurations side by side, measured in turns: each has its own web server and workers on one
    Redis (idle ones only block on their own queue), and every round loads each in turn, so a busy machine's
    ups and downs fall on all of them alike. Returns {name: point}: the median of the rounds' requests/s,
    and latency percentiles over every round's requests."""
    upload = (image_bytes, "castle_image.jpg")
    out = {}
    with Stack(MODEL=model) as first:
        stacks = {}
        try:
            for name, config in configs.items():
                stack = first if not stacks else Stack(redis_server=first.redis_server, MODEL=model)
                url, _ = stack.start_web(processes=settings.WEB_PROCESSES)
                _start_workers(stack, config["WORKERS"], {k: v for k, v in config.items() if k != "WORKERS"})
                stacks[name] = (stack, url + "/predict")
            runs = {name: {"rps": [], "sat": [], "one": [], "batch": [], "failed": 0} for name in configs}
            for r in range(rounds):
                for name, config in configs.items():
                    stack, predict = stacks[name]
                    clients = min(64, max(8, 2 * config["BATCH_SIZE"] * config["WORKERS"]))
                    load.run(predict, upload, total=clients, concurrency=clients)
                    sat = load.run(predict, upload, duration=duration, concurrency=clients)
                    load.run(predict, upload, total=2, concurrency=1)
                    one = load.run(predict, upload, total=one_n, concurrency=1)
                    stack.check_alive()
                    ok = [x for x in sat["records"] if x["status"] == "ok"]
                    mine = runs[name]
                    mine["rps"].append(len(ok) / sat["elapsed_s"])
                    mine["sat"] += [x["latency_s"] for x in ok]
                    mine["batch"] += [x["timings"]["batch"] for x in ok]
                    mine["one"] += [x["latency_s"] for x in one["records"] if x["status"] == "ok"]
                    mine["failed"] += sum(x["status"] != "ok" for x in sat["records"] + one["records"])
                    log(f"[interleaved] round {r + 1} {name}: {mine['rps'][-1]:.1f} req/s")
        finally:
            for stack, _ in list(stacks.values())[1:]:
                stack.stop_all()
    for name, config in configs.items():
        mine = runs[name]
        out[name] = dict(config, saturated={"requests_per_s": round(float(np.median(mine["rps"])), 1),
                                            "rounds_requests_per_s": [round(x, 1) for x in mine["rps"]],
                                            "latency_ms": _stats(mine["sat"]),
                                            "mean_batch": (round(float(np.mean(mine["batch"])), 1)
                                                           if mine["batch"] else None)},
                         one_at_a_time={"latency_ms": _stats(mine["one"])}, failed=mine["failed"])
    return out


def compare_defaults(image_bytes, model="efficientnet_lite0", rounds=3, duration=5.0, one_n=15, log=_stderr):
    """Today's default (TensorFlow, BATCH_SIZE=32, TensorFlow's own threads) next to the new defaults, measured
    in turns in the same run (interleaved), castle uploads."""
    out = interleaved(image_bytes, {"today": dict(TODAY), "new": new_defaults()}, model, rounds, duration, one_n, log)
    for name in ("today", "new"):
        p = out[name]
        log(f"[defaults] {name}: {p['saturated']['requests_per_s']} req/s, one at a time p50 "
            f"{p['one_at_a_time']['latency_ms']['p50']} ms")
    today, new = out["today"], out["new"]
    out["saturated_ratio"] = round(new["saturated"]["requests_per_s"] / today["saturated"]["requests_per_s"], 2)
    out["one_at_a_time_p50_ratio"] = round(new["one_at_a_time"]["latency_ms"]["p50"]
                                           / today["one_at_a_time"]["latency_ms"]["p50"], 2)
    out["goals"] = {"saturated_ratio": ">= 1.4", "one_at_a_time_p50_ratio": "<= 0.5"}
    out["met"] = {"saturated_ratio": out["saturated_ratio"] >= 1.4,
                  "one_at_a_time_p50_ratio": out["one_at_a_time_p50_ratio"] <= 0.5}
    return out


def random_resnet50_weights():
    """A local ResNet50 weights file for speed figures: the real one if present, else random weights saved once
    in MODEL_CACHE_DIR (same file on every run, so its conversion is cached too)."""
    from imgq.models import resnet50
    path, _ = resnet50.find_weights()
    if path:
        return path, "imagenet"
    path = os.path.join(settings.MODEL_CACHE_DIR, "bench-resnet50-random-" + resnet50.RESNET50_FILE)
    if not os.path.exists(path):
        os.makedirs(settings.MODEL_CACHE_DIR, exist_ok=True)
        code = ("import sys, h5py, keras; from keras.src.legacy.saving import legacy_h5_format; "
                "keras.utils.set_random_seed(0); f = h5py.File(sys.argv[1] + '.partial', 'w'); "
                "legacy_h5_format.save_weights_to_hdf5_group(f, keras.applications.ResNet50(weights=None)); f.close()")
        subprocess.run([sys.executable, "-c", code, path], check=True, capture_output=True, timeout=600)
        os.replace(path + ".partial", path)
    return path, "random"


def model_alone(models_=("efficientnet_lite0", "resnet50"), runtimes=RUNTIMES, threads=THREADS, batch_size=32,
                repeats=5, log=_stderr):
    """bench/model_speed.py for every model x runtime x threads: batch-1 ms and images/s at batch_size."""
    rows = []
    for model in models_:
        env = dict(os.environ)
        weights = None
        if model == "resnet50":
            path, weights = random_resnet50_weights()
            env["RESNET50_WEIGHTS"] = path
        for runtime in runtimes:
            for t in threads:
                cmd = [sys.executable, "-m", "bench.model_speed", model, "--batch-size", str(batch_size),
                       "--repeats", str(repeats), "--runtime", runtime, "--threads", str(t)]
                done = subprocess.run(cmd, cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=900,
                                      env=env)
                if done.returncode != 0:
                    raise RuntimeError(f"model_speed failed:\n{done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                if weights:
                    row["weights"] = weights
                rows.append(row)
                log(f"[model] {model:<18} {runtime:<10} threads {t}: batch 1 {row['batch_1_ms']} ms, "
                    f"batch {batch_size} {row['images_per_s']} images/s")
    best = {}
    for model in models_:
        for runtime in runtimes:
            mine = [r for r in rows if r["model"] == model and r["runtime"] == runtime]
            # Best configuration of each: threads, and batch 1 or batch_size (Lite0 on LiteRT is fastest at 1).
            best[f"{model}/{runtime}"] = max(max(r["images_per_s"], round(1000 / r["batch_1_ms"], 1)) for r in mine)
    ratios = {m: round(best[f"{m}/litert"] / best[f"{m}/tensorflow"], 2) for m in models_
              if f"{m}/litert" in best and f"{m}/tensorflow" in best}
    return {"rows": rows, "best_images_per_s": best, "litert_over_tensorflow": ratios}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="seconds: stand-in model, a tiny grid")
    p.add_argument("--image", default=None, help="upload (default: castle_image.jpg)")
    p.add_argument("--duration", type=float, default=None, help="seconds of saturated load per point")
    p.add_argument("--no-models", action="store_true", help="skip the model-alone figures")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from simple_request import read_image
    try:
        _, image_bytes = read_image(args.image)
    except ValueError as exc:
        print(f"sweep: {exc} (give one with --image)", file=sys.stderr)
        return 2
    log = _stderr
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
           "loadavg_before": [round(x, 2) for x in os.getloadavg()], "quick": args.quick}
    if args.quick:
        out["sweep"] = run_sweep(image_bytes, "standin", batch_sizes=(1, 4), threads=(1,), workers=(1, 2),
                                 duration=args.duration or 0.7, one_n=3, log=log)
    else:
        out["sweep"] = run_sweep(image_bytes, duration=args.duration or 3.0, log=log)
        if not args.no_models:
            out["model_alone"] = model_alone(log=log)
    path = args.out or os.path.join(HERE, "results", "sweep-quick.json" if args.quick else "sweep.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    for runtime, b in out["sweep"]["best"].items():
        print(f"best {runtime}: BATCH_SIZE={b['BATCH_SIZE']} MODEL_THREADS={b['MODEL_THREADS']} "
              f"WORKERS={b['WORKERS']}: {b['saturated']['requests_per_s']} req/s")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
