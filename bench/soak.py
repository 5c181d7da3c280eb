"""Soak run: the service under a long, mixed, bounded load, watched for leaks.

    python -m bench.soak                        # 20 minutes (make soak): real model, 2 web processes, 2 workers
    python -m bench.soak --minutes 1 --quick    # a one-minute smoke run with the stand-in model

Starts its own Redis, gunicorn and workers (imgq/testing.py), then for the whole run sends a paced mix of
uploads: good images (castle_image.jpg, or grey PNGs with the stand-in), bad ones (text, truncated JPEG,
oversized dimensions) and clients that hang up before their answer. Every few minutes one worker is stopped
hard (SIGKILL) and a new one started. Every few seconds it samples the Redis key count (the deployment's own
keys), Redis' used memory and each process's RSS. Writes bench/results/soak.json and soak.png (outcomes per
status over time, keys, memory) and fails (exit 1) if a good upload was answered wrongly or not at all, a
bad one got anything but a 4xx, or memory or keys grew.
"""
import argparse
import io
import json
import os
import random
import signal
import socket
import sys
import threading
import time

import psutil
import requests

from imgq.testing import Stack

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASTLE = os.path.normpath(os.path.join(REPO, "..", "shared", "castle_image.jpg"))
RESULTS = os.path.join(REPO, "bench", "results")


def grey_png(level):
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (level, level, level)).save(out, "PNG")
    return out.getvalue()


def bad_uploads(castle):
    from PIL import Image
    huge = io.BytesIO()
    Image.new("L", (1, 1)).save(huge, "PNG")
    # A PNG whose header claims 60000 x 60000 pixels: refused before any pixel is decoded.
    data = bytearray(huge.getvalue())
    data[16:24] = (60000).to_bytes(4, "big") * 2
    return [("notes.txt", b"this is not an image\n"), ("cut.jpg", castle[: len(castle) // 3]),
            ("huge.png", bytes(data)), ("empty.jpg", b"")]


def abandon(url, body, content_type):
    """Send a whole request, then hang up before the answer."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.05)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--rate", type=float, default=8, help="requests started per second (default 8)")
    p.add_argument("--restart-every", type=float, default=240, help="seconds between worker kills (default 240)")
    p.add_argument("--quick", action="store_true", help="stand-in model (no TensorFlow), for a smoke run")
    p.add_argument("--out", default=os.path.join(RESULTS, "soak.json"))
    args = p.parse_args(argv)
    from bench.load import multipart

    standin = args.quick or not os.path.exists(CASTLE)
    castle = open(CASTLE, "rb").read() if os.path.exists(CASTLE) else grey_png(7)
    env = dict(MODEL="standin" if standin else "efficientnet_lite0", HEARTBEAT_INTERVAL=1, HEARTBEAT_TTL=4,
               BLOCK_TIMEOUT=5, LOG_LEVEL="WARNING")
    from imgq import models
    labels = models.imagenet_labels()
    records, samples, events, lock = [], [], [], threading.Lock()
    stop = threading.Event()
    with Stack(**env) as stack:
        workers = [stack.start_worker(), stack.start_worker()]
        url, web = stack.start_web(processes=2)
        redis_client = stack.redis()
        t0 = time.time()

        def one(kind, payload):
            began = time.time() - t0
            status, ok = None, False
            try:
                if kind == "abandon":
                    body, ctype = multipart(*payload)
                    abandon(url, body, ctype)
                    status, ok = "abandoned", True
                else:
                    name, data, expect = payload
                    r = requests.post(url + "/predict", files={"image": (name, data)}, timeout=60)
                    status = r.status_code
                    if kind == "good":
                        ok = r.status_code == 200 and r.json()["predictions"][0]["label"] == expect
                        # A worker killed under its batch: the job is requeued and still answered (200); a 504
                        # would mean it was lost.
                    else:
                        ok = 400 <= r.status_code < 500 and r.headers.get("Content-Type", "").startswith(
                            "application/json")
            except Exception as exc:  # counted as a failure, never lost in a thread's traceback
                status = type(exc).__name__
            with lock:
                records.append({"t": round(began, 2), "kind": kind, "status": status, "ok": ok,
                                "latency_s": round(time.time() - t0 - began, 3)})

        def sampler():
            while not stop.is_set():
                procs = {}
                for proc in stack.procs:
                    try:
                        root = psutil.Process(proc.popen.pid)
                        rss = sum(q.memory_info().rss for q in [root] + root.children(recursive=True))
                        procs.setdefault(proc.name, []).append(round(rss / 2**20, 1))
                    except psutil.Error:
                        pass
                try:
                    keys = len(stack.keys())
                    used = redis_client.info("memory")["used_memory"]
                except Exception:
                    keys, used = None, None
                samples.append({"t": round(time.time() - t0, 1), "keys": keys,
                                "redis_mb": used and round(used / 2**20, 2), "rss_mb": procs})
                stop.wait(5)

        threading.Thread(target=sampler, daemon=True).start()
        rng = random.Random(0)
        bad = bad_uploads(castle)
        threads = []
        next_kill = time.time() + args.restart_every
        end = time.time() + args.minutes * 60
        n = 0
        while time.time() < end:
            roll = rng.random()
            if roll < 0.7:
                if standin:
                    level = rng.randrange(256)
                    payload, kind = ("g.png", grey_png(level), labels[level]), "good"
                else:
                    payload, kind = ("castle_image.jpg", castle, "castle"), "good"
            elif roll < 0.9:
                payload, kind = (*rng.choice(bad), None), "bad"
            else:
                payload, kind = (castle if not standin else grey_png(3), "castle_image.jpg"), "abandon"
            t = threading.Thread(target=one, args=(kind, payload), daemon=True)
            t.start()
            threads.append(t)
            n += 1
            if time.time() >= next_kill:
                victim = workers.pop(0)
                victim.popen.send_signal(signal.SIGKILL)
                events.append({"t": round(time.time() - t0, 1), "event": f"worker pid {victim.popen.pid} killed"})
                stack.procs.remove(victim)
                workers.append(stack.start_worker(wait=False))
                next_kill += args.restart_every
            time.sleep(max(0.0, t0 + n / args.rate - time.time()))
        for t in threads:
            t.join(90)
        time.sleep(6)  # results of abandoned requests expire with their deadline; let the sampler see the end
        stop.set()
        final_keys = stack.keys()

    out = summarise(records, samples, events, final_keys, args, env)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    plot(out, os.path.splitext(args.out)[0] + ".png")
    print(json.dumps(out["summary"], indent=1))
    return 0 if out["summary"]["passed"] else 1


def summarise(records, samples, events, final_keys, args, env):
    by_kind = {}
    for r in records:
        d = by_kind.setdefault(r["kind"], {})
        d[str(r["status"])] = d.get(str(r["status"]), 0) + 1
    failures = [r for r in records if not r["ok"]]
    rss = {}
    for s in samples:
        for name, values in s["rss_mb"].items():
            rss.setdefault(name, []).append((s["t"], sum(values)))

    def growth(series):
        # Memory after the first fifth of the run against the last fifth: warm-up excluded.
        if len(series) < 10:
            return None
        k = len(series) // 5
        first = sum(v for _, v in series[k:2 * k]) / k
        last = sum(v for _, v in series[-k:]) / k
        return round(last - first, 1)

    web_growth = growth(rss.get("web", []))
    keys_series = [s["keys"] for s in samples if s["keys"] is not None]
    summary = {
        "minutes": args.minutes, "rate": args.rate, "model": env["MODEL"], "requests": len(records),
        "by_kind_and_status": by_kind, "failures": len(failures), "failure_examples": failures[:10],
        "worker_kills": len(events), "web_rss_growth_mb": web_growth,
        "keys_max": max(keys_series) if keys_series else None, "keys_at_end": len(final_keys),
        "final_keys": final_keys,
    }
    # Left at the end: the live workers' registration, heartbeats and model records, and the counters that
    # outlive processes by design (stats, counters); no job, result, in-flight list or attempt count.
    kept = {"heartbeat", "workers", "worker_models", "stats", "counters"}
    summary["left_over"] = [k for k in final_keys if k.split(":")[1] not in kept]
    summary["passed"] = (not failures and not summary["left_over"]
                         and (web_growth is None or web_growth < 100))
    return {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "summary": summary, "events": events,
            "samples": samples, "records": records}


def plot(out, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    records, samples = out["records"], out["samples"]
    statuses = sorted({str(r["status"]) for r in records})
    width = 10
    end = max([r["t"] for r in records] + [1])
    bins = [i * width for i in range(int(end // width) + 2)]
    for status in statuses:
        counts = [sum(1 for r in records if str(r["status"]) == status and lo <= r["t"] < lo + width) for lo in bins]
        a.plot(bins, counts, label=status)
    a.set_ylabel(f"answers per {width} s")
    a.legend(fontsize=7, ncol=4)
    b.plot([s["t"] for s in samples], [s["keys"] for s in samples], label="keys of the deployment")
    b.set_ylabel("Redis keys")
    for name in sorted({n for s in samples for n in s["rss_mb"]}):
        c.plot([s["t"] for s in samples if name in s["rss_mb"]],
               [sum(s["rss_mb"][name]) for s in samples if name in s["rss_mb"]], label=f"{name} RSS (all)")
    c.set_ylabel("MiB")
    c.set_xlabel("seconds")
    c.legend(fontsize=7)
    for ev in out["events"]:
        for ax in (a, b, c):
            ax.axvline(ev["t"], color="grey", linestyle=":", linewidth=0.8)
    s = out["summary"]
    fig.suptitle(f"Soak: {s['minutes']:g} min, {s['rate']:g} req/s started, {s['model']}, {s['worker_kills']} worker "
                 f"kills (dotted), {s['requests']} requests, {s['failures']} failures ({out['when']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
