"""The peers benchmark: this service against the servers you would pick instead, same model, same client.

    python -m bench.peers.run            # all four systems, concurrency 1, 4, 16, 64 (about 6-8 minutes)
    python -m bench.peers.run --quick    # about a minute and a half: short points at concurrency 1 and 64
    python -m bench.peers.run --systems flask,ray --duration 10

Where it sits: outside the service. It creates bench/peers/.venv (the service's requirements.txt plus
bench/peers/requirements.txt: LitServe, Ray Serve) on first use, then, one system at a time, starts it,
loads it with bench/load.py's closed-loop client (castle uploads, multipart field `image`), stops it and
kills whatever of it is still alive:

  service   this project through imgq/testing.py: redis-server + gunicorn (WEB_PROCESSES x WEB_THREADS)
            + WORKERS=1 model worker, default settings
  flask     bench/peers/flask_app.py: the model called inside the request, gunicorn 2 processes x 8 threads
  litserve  bench/peers/litserve_app.py: LitServe batching (max_batch_size, batch_timeout), 2 workers
  ray       bench/peers/ray_app.py: Ray Serve @serve.batch, 2 replicas, a private local cluster

Every peer imports the project's models + helpers, so all four serve the same model (MODEL, default
efficientnet_lite0) on the same runtime (MODEL_RUNTIME and every other setting pass through the
environment). Each point: WARMUP s of load at that concurrency, then DURATION s measured. Every answer is
checked: its top-1 label must be `castle` (wrong answers are counted, in warm-ups too; 0 is the bar).
CPU: psutil over each system's process tree and session (imgq/testing.py's cpu_seconds, applied to every
process it started), the client's own CPU, and the rest of the machine ("others": says whether it was quiet).
Output: bench/results/peers.json and bench/results/peers.png (throughput against p95), and a table.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import requests

from imgq import settings
from bench import load
from bench.run import cpu_model
from bench.peers.common import READY
from imgq.testing import Proc, Stack, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

VENV = os.path.join(HERE, ".venv")
PEER_PYTHON = os.path.join(VENV, "bin", "python")
REQUIREMENTS = [os.path.join(REPO, "requirements.txt"), os.path.join(HERE, "requirements.txt")]
RESULTS = os.path.join(REPO, "bench", "results")
SYSTEMS = ("service", "flask", "litserve", "ray")
CASTLE = os.path.join(os.path.dirname(REPO), "shared", "castle_image.jpg")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about a minute and a half: concurrency 1 and 64, short points")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of %(default)s")
    p.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,4,16,64)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per point (default 15)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each point (default 3)")
    p.add_argument("--model", default="efficientnet_lite0", help="MODEL for every system (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE,
                   help="service BATCH_SIZE and the peers' max batch size (default: %(default)s)")
    p.add_argument("--batch-timeout-ms", type=float, default=10.0,
                   help="LitServe batch_timeout and Ray's batch_wait_timeout_s, in ms (default: %(default)s, "
                        "Ray's own default)")
    p.add_argument("--peer-tf-threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                   help="TF_INTRA_OP_THREADS of each of a peer's 2 model processes, as `make run` splits the "
                        "cores for WORKERS=2 (default: %(default)s; 0: TensorFlow decides)")
    p.add_argument("--image", default=CASTLE, help="upload (default: castle_image.jpg)")
    p.add_argument("--expect", default="castle", help="top-1 label every answer must have (default: %(default)s)")
    p.add_argument("--out", default=None, help="JSON output (default: bench/results/peers.json, "
                                               "peers-quick.json with --quick); the plot goes beside it")
    p.add_argument("--setup-only", action="store_true", help="create/refresh bench/peers/.venv and stop")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}: choose from {', '.join(SYSTEMS)}")
    default_c = "1,64" if args.quick else "1,4,16,64"
    args.concurrency = [int(c) for c in (args.concurrency or default_c).split(",")]
    args.duration = args.duration or (2.0 if args.quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 3.0)
    args.out = args.out or os.path.join(RESULTS, "peers-quick.json" if args.quick else "peers.json")
    return args


# --- the peers' own venv ---------------------------------------------------------------------------------

def requirements_digest():
    h = hashlib.sha256()
    for path in REQUIREMENTS:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def ensure_venv():
    """bench/peers/.venv with the service's and the peers' pins; rebuilt when either file changes.

    Separate from the service's .venv, so ray and litserve (and what they pull in) never reach the service.
    """
    stamp = os.path.join(VENV, ".installed")
    digest = requirements_digest()
    if os.path.exists(stamp) and os.path.exists(PEER_PYTHON):
        with open(stamp) as f:
            if f.read().strip() == digest:
                return
    print(f"installing the peers' venv {VENV} (once; a few minutes) ...", flush=True)
    if not os.path.exists(PEER_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([PEER_PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    cmd = [PEER_PYTHON, "-m", "pip", "install", "--quiet"]
    for path in REQUIREMENTS:
        cmd += ["-r", path]
    subprocess.run(cmd, check=True)
    with open(stamp, "w") as f:
        f.write(digest + "\n")


# --- processes and their CPU ------------------------------------------------------------------------------

class Tree:
    """Every process a system runs: the tree under each root plus every process in the roots' sessions
    (Ray's raylet starts workers that need not stay children of the driver). Remembers each one it saw,
    so clean-up can kill exactly those that are still alive, and nothing else on the machine."""

    def __init__(self, roots):
        self.roots = list(roots)  # psutil.Process of each started process
        self.seen = {}

    def processes(self):
        found = {}
        sessions = set()
        for root in self.roots:
            try:
                sessions.add(os.getsid(root.pid))
                for p in [root] + root.children(recursive=True):
                    found[(p.pid, p.create_time())] = p
            except (psutil.Error, OSError):
                pass
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) in sessions:
                    found[(p.pid, p.create_time())] = p
            except (psutil.Error, OSError):
                pass
        self.seen.update(found)
        return list(found.values())

    def cpu_seconds(self):
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def kill_leftovers(self):
        """SIGKILL every process seen that still runs (same pid and start time); returns how many."""
        killed = 0
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    killed += 1
            except psutil.Error:
                pass
        return killed


def machine_busy_seconds():
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def wait_ready(proc, url, count, timeout=300):
    """Until the app logged its READY line `count` times (each model process loaded) and answers a POST."""
    deadline = time.monotonic() + timeout
    while proc.log_text().count(READY) < count:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} not ready within {timeout}s:\n{proc.log_text()[-3000:]}")
        time.sleep(0.2)
    while True:
        try:
            with open(CASTLE if os.path.exists(CASTLE) else __file__, "rb") as f:
                if requests.post(url, files={"image": f}, timeout=30).status_code < 500:
                    return
        except requests.RequestException:
            pass
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} does not answer at {url}:\n{proc.log_text()[-3000:]}")
        time.sleep(0.2)


class Peer:
    """One peer app in the peers' venv, in a session of its own; stop() leaves none of its processes."""

    def __init__(self, name, args, workdir, env, ready_count, stop_signal, scratch=None):
        self.name, self.workdir, self.scratch = name, workdir, scratch
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/predict"
        argv = [a.replace("{port}", str(self.port)) for a in args]
        self.proc = Proc(name, argv, dict(env, PEER_PORT=str(self.port)), os.path.join(workdir, f"{name}.log"),
                         stop_signal)
        self.tree = Tree([psutil.Process(self.proc.popen.pid)])
        self.ready_count = ready_count

    def start(self):
        wait_ready(self.proc, self.url, self.ready_count)
        return self

    def alive(self):
        return self.proc.popen.poll() is None

    def stop(self):
        self.tree.processes()  # remember the latest children before the root goes
        try:
            self.proc.stop(timeout=30)
        finally:
            time.sleep(0.5)
            left = self.tree.kill_leftovers()
            if self.scratch:  # Ray's session files (sockets, its own logs; the driver's log keeps their output)
                shutil.rmtree(self.scratch, ignore_errors=True)
        return left


class ServiceSystem:
    """This project via imgq/testing.py: its own redis-server, gunicorn with the default WEB_PROCESSES x
    WEB_THREADS, one model worker (WORKERS=1, `make run`'s default)."""

    name = "service"

    def __init__(self, workdir, env):
        self.stack = Stack(workdir, **env)
        self.stack.start_worker(timeout=300)
        base, _ = self.stack.start_web(processes=settings.WEB_PROCESSES, threads=settings.WEB_THREADS)
        self.url = base + "/predict"
        procs = list(self.stack.procs) + [self.stack.redis_server.proc]
        self.tree = Tree([psutil.Process(p.popen.pid) for p in procs])
        self.log_text = lambda: "\n".join(p.log_text()[-1500:] for p in procs)

    def start(self):
        return self

    def alive(self):
        try:
            self.stack.check_alive()
            return True
        except Exception:
            return False

    def stop(self):
        self.tree.processes()
        try:
            self.stack.stop_all()
        finally:
            time.sleep(0.5)
            left = self.tree.kill_leftovers()
        return left


def make_system(name, args, workdir):
    env = dict(os.environ, MODEL=args.model, BATCH_SIZE=str(args.batch_size), PYTHONUNBUFFERED="1")
    if name == "service":
        return ServiceSystem(workdir, {"MODEL": args.model, "BATCH_SIZE": args.batch_size})
    env["PYTHONPATH"] = os.pathsep.join([HERE, REPO])
    if args.peer_tf_threads > 0:
        env["TF_INTRA_OP_THREADS"] = str(args.peer_tf_threads)
    timeout_s = str(args.batch_timeout_ms / 1000.0)
    if name == "flask":
        env.update(PEER_PROCESSES="2", PEER_THREADS="8")
        cmd = [PEER_PYTHON, "-m", "gunicorn", "-c", os.path.join(HERE, "gunicorn_flask.conf.py"),
               "--chdir", HERE, "flask_app:app"]
        return Peer(name, cmd, workdir, env, ready_count=2, stop_signal=signal.SIGINT)
    if name == "litserve":
        cmd = [PEER_PYTHON, os.path.join(HERE, "litserve_app.py"), "{port}", str(args.batch_size), timeout_s, "2"]
        return Peer(name, cmd, workdir, env, ready_count=2, stop_signal=signal.SIGINT)
    if name == "ray":
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DISABLE_DOCKER_CPU_WARNING="1")
        # Short: Ray puts Unix sockets under it, and their paths may not exceed 107 bytes.
        ray_tmp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
        cmd = [PEER_PYTHON, os.path.join(HERE, "ray_app.py"), "{port}", str(args.batch_size), timeout_s, "2", ray_tmp]
        return Peer(name, cmd, workdir, env, ready_count=1, stop_signal=signal.SIGTERM, scratch=ray_tmp)
    raise ValueError(name)


# --- measuring --------------------------------------------------------------------------------------------

def percentile(values, q):
    return round(float(np.percentile(values, q)), 1) if values else None


def check_answers(records, expect):
    ok = [r for r in records if r["status"] == "ok"]
    wrong = [r for r in ok if r.get("top1") != expect]
    failed = {}
    for r in records:
        if r["status"] != "ok":
            failed[r["status"]] = failed.get(r["status"], 0) + 1
    seen = {}
    for r in wrong:
        seen[str(r.get("top1"))] = seen.get(str(r.get("top1")), 0) + 1
    return ok, wrong, failed, seen


def measure_point(system, upload, concurrency, args):
    warm = load.run(system.url, upload, duration=args.warmup, concurrency=concurrency)
    _, warm_wrong, warm_failed, _ = check_answers(warm["records"], args.expect)
    server0, machine0, t0 = system.tree.cpu_seconds(), machine_busy_seconds(), time.monotonic()
    result = load.run(system.url, upload, duration=args.duration, concurrency=concurrency)
    wall = time.monotonic() - t0
    server = (system.tree.cpu_seconds() - server0) / wall
    machine = (machine_busy_seconds() - machine0) / wall
    client = result["client_cpu_s"] / wall
    ok, wrong, failed, seen = check_answers(result["records"], args.expect)
    right = len(ok) - len(wrong)
    latencies = [r["latency_s"] * 1000 for r in ok]
    return {
        "concurrency": concurrency,
        "sent": len(result["records"]), "answered_200": len(ok),
        "requests_per_s": round(right / result["elapsed_s"], 1) if result["elapsed_s"] else None,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99), "max": percentile(latencies, 100)},
        "wrong_answers": len(wrong), "wrong_labels": seen, "failed_by_kind": failed,
        "warmup": {"seconds": args.warmup, "sent": len(warm["records"]), "wrong_answers": len(warm_wrong),
                   "failed_by_kind": warm_failed},
        "cpu_cores": {"server": round(server, 2), "client": round(client, 2),
                      "others": round(max(0.0, machine - server - client), 2), "machine": round(machine, 2)},
        "server_cpu_ms_per_request": round(1000 * server * wall / right, 1) if right else None,
    }


def run_system(name, args, upload, workdir):
    out = {"config": describe(name, args)}
    started = time.monotonic()
    system = None
    try:
        system = make_system(name, args, workdir).start()
        out["startup_s"] = round(time.monotonic() - started, 1)
        out["points"] = []
        for c in args.concurrency:
            point = measure_point(system, upload, c, args)
            out["points"].append(point)
            print(f"  {name:9} c={c:<3} {point['requests_per_s']:>7} req/s  p50 {point['latency_ms']['p50']} ms  "
                  f"p95 {point['latency_ms']['p95']} ms  server CPU {point['cpu_cores']['server']} cores  "
                  f"wrong {point['wrong_answers'] + point['warmup']['wrong_answers']}  "
                  f"failed {sum(point['failed_by_kind'].values())}", flush=True)
            if not system.alive():
                raise RuntimeError(f"{name} died during the run")
    except Exception as exc:
        log = ""
        if system is not None:
            log = system.log_text() if hasattr(system, "log_text") else system.proc.log_text()
        out["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        out["log_tail"] = log[-3000:]
        print(f"  {name}: FAILED {out['error'][:2000]}", flush=True)
    finally:
        if system is not None:
            out["leftover_processes_killed"] = system.stop()
    return out


def describe(name, args):
    model = {"MODEL": args.model,
             "MODEL_RUNTIME": settings.MODEL_RUNTIME}
    if name == "service":
        return dict(model, what="redis + gunicorn + 1 worker (imgq/testing.py, default settings)",
                    web_processes=settings.WEB_PROCESSES, web_threads=settings.WEB_THREADS, workers=1,
                    BATCH_SIZE=args.batch_size, BATCH_WAIT_MS=settings.BATCH_WAIT_MS)
    threads = args.peer_tf_threads or "TensorFlow decides"
    if name == "flask":
        return dict(model, what="Flask, model called in the request, gunicorn gthread", processes=2, threads=8,
                    TF_INTRA_OP_THREADS=threads)
    if name == "litserve":
        return dict(model, what="LitServe dynamic batching", workers=2, max_batch_size=args.batch_size,
                    batch_timeout_s=args.batch_timeout_ms / 1000, TF_INTRA_OP_THREADS=threads)
    return dict(model, what="Ray Serve @serve.batch", replicas=2, num_cpus_per_replica=1,
                max_batch_size=args.batch_size, batch_wait_timeout_s=args.batch_timeout_ms / 1000,
                max_ongoing_requests=4 * args.batch_size, TF_INTRA_OP_THREADS=threads)


def against_flask(report):
    """Each system's point beside the Flask app's at the same concurrency, in the same run: req/s and latency
    as ratios, CPU per request as the difference in ms."""
    flask = {p["concurrency"]: p for p in report["systems"].get("flask", {}).get("points", [])}
    for name, system in report["systems"].items():
        for p in system.get("points", []):
            f = flask.get(p["concurrency"])
            if name == "flask" or not f or not f["requests_per_s"]:
                continue
            cpu, f_cpu = p["server_cpu_ms_per_request"], f["server_cpu_ms_per_request"]
            p["vs_flask"] = {
                "requests_per_s": round(p["requests_per_s"] / f["requests_per_s"], 3),
                "p50": round(p["latency_ms"]["p50"] / f["latency_ms"]["p50"], 3) if f["latency_ms"]["p50"] else None,
                "p95": round(p["latency_ms"]["p95"] / f["latency_ms"]["p95"], 3) if f["latency_ms"]["p95"] else None,
                "cpu_ms_per_request_more": round(cpu - f_cpu, 2) if cpu is not None and f_cpu is not None else None}


def package_versions():
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['litserve', 'ray', 'flask', 'gunicorn', 'tensorflow-cpu', 'numpy']}))")
    try:
        return json.loads(subprocess.run([PEER_PYTHON, "-c", code], capture_output=True, text=True,
                                         timeout=60, check=False).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# --- output -----------------------------------------------------------------------------------------------

def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, system in report["systems"].items():
        points = [p for p in system.get("points", []) if p["requests_per_s"] and p["latency_ms"]["p95"]]
        if not points:
            continue
        xs = [p["requests_per_s"] for p in points]
        ys = [p["latency_ms"]["p95"] for p in points]
        ax.plot(xs, ys, marker="o", label=name, linewidth=2.4 if name == "service" else 1.4)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"c={p['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("requests/s (correct answers)")
    ax.set_ylabel("p95 latency (ms, log)")
    others = [p["cpu_cores"]["others"] for s in report["systems"].values() for p in s.get("points", [])]
    busy = f"; other users took {np.mean(others):.1f} cores on average" if others and np.mean(others) > 0.2 else ""
    ax.set_title(f"{report['model']} on {report['machine']['cpu_count']} cores, closed loop "
                 f"(c = concurrent clients), {report['date'][:10]}{busy}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(report):
    print(f"\n{report['machine']['cpu_model']}, {report['machine']['cpu_count']} cores")
    print(f"{'system':9} {'c':>3} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'server cores':>12} "
          f"{'CPU ms/req':>10} {'others':>6} {'wrong':>5} {'failed':>6}  vs flask: req/s  p95  CPU ms")
    for name, system in report["systems"].items():
        if "error" in system and not system.get("points"):
            print(f"{name:9} FAILED: {system['error'].splitlines()[0][:100]}")
            continue
        for p in system.get("points", []):
            print(f"{name:9} {p['concurrency']:>3} {p['requests_per_s']:>7} {p['latency_ms']['p50']:>8} "
                  f"{p['latency_ms']['p95']:>8} {p['cpu_cores']['server']:>12} "
                  f"{p['server_cpu_ms_per_request'] or '-':>10} {p['cpu_cores']['others']:>6} "
                  f"{p['wrong_answers'] + p['warmup']['wrong_answers']:>5} {sum(p['failed_by_kind'].values()):>6}"
                  + (f"  {p['vs_flask']['requests_per_s']:>12} {p['vs_flask']['p95']} "
                     f"{p['vs_flask']['cpu_ms_per_request_more']}" if p.get("vs_flask") else ""))
    print(f"\nwrong answers (top-1 != {report['expect']!r}), all systems, warm-ups included: "
          f"{report['wrong_answers_total']}; failed requests: {report['failed_requests_total']}")


def main(argv=None):
    args = parse_args(argv)
    ensure_venv()
    if args.setup_only:
        return 0
    with open(args.image, "rb") as f:
        upload = (f.read(), os.path.basename(args.image))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through every stop() below
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model": args.model,
              "model_runtime": settings.MODEL_RUNTIME,
              "expect": args.expect, "image": os.path.basename(args.image),
              "concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup,
              "client": "bench/load.py: closed loop, keep-alive http.client, fresh multipart boundary per request",
              "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
              "peer_packages": package_versions(), "systems": {}}
    workdir = tempfile.mkdtemp(prefix="peers-")
    print(f"peers benchmark: {', '.join(args.systems)} at concurrency {args.concurrency}, {args.duration}s "
          f"per point after {args.warmup}s warm-up; logs in {workdir}", flush=True)
    for name in args.systems:
        sysdir = os.path.join(workdir, name)
        os.makedirs(sysdir)
        report["systems"][name] = run_system(name, args, upload, sysdir)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    against_flask(report)
    points = [p for s in report["systems"].values() for p in s.get("points", [])]
    report["wrong_answers_total"] = sum(p["wrong_answers"] + p["warmup"]["wrong_answers"] for p in points)
    report["failed_requests_total"] = sum(sum(p["failed_by_kind"].values())
                                          + sum(p["warmup"]["failed_by_kind"].values()) for p in points)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    if os.path.abspath(args.out) == os.path.abspath(os.path.join(RESULTS, "peers.json")):
        # The latest full run from each CPU stays beside the latest of all (docs/benchmarks.md shows each).
        slug = "".join(c if c.isalnum() else "-" for c in report["machine"]["cpu_model"].lower()).strip("-")
        with open(os.path.join(os.path.dirname(args.out), f"peers-{slug}.json"), "w") as f:
            json.dump(report, f, indent=1)
    png = os.path.splitext(args.out)[0] + ".png"
    plot(report, png)
    print_table(report)
    print(f"\nwrote {args.out} and {png}")
    failed_systems = [n for n, s in report["systems"].items() if "error" in s]
    return 1 if failed_systems or report["wrong_answers_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
