"""docs/benchmarks.md from the result files in bench/results/: the one page that quotes measured figures.

Every number on the page is read from a result file here, and every table says when and on what machine its file
was measured, so a figure can never outlive the run it came from. The prose between the tables lives in this
script and only explains; where it needs a number it computes it from the same files.

    python -m docs.benchmarks            # rewrite docs/benchmarks.md
    python -m docs.benchmarks --check    # exit 1 when docs/benchmarks.md differs from what the files give now
"""
import argparse
import datetime
import difflib
import glob
import json
import os
import re
import sys

from imgq.models import registry

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
RESULTS = os.path.join(REPO, "bench", "results")
PAGE = os.path.join(DOCS, "benchmarks.md")

# The result files, in the page's order: file name -> (what makes it, the page's section heading).
FILES = {
    "latest.json": ("`make bench`", "The service on one machine (`make bench`)"),
    "peers.json": ("`make bench-peers`", "Against the servers you would pick instead (`make bench-peers`)"),
    "tax.json": ("`make bench-tax`", "Where a request's CPU goes (`make bench-tax`)"),
    "tune.json": ("`make tune`", "The worker's shape, measured on the machine (`make tune`)"),
    "notifications.json": ("`make bench-notify`", "Notifications against polling (`make bench-notify`)"),
    "soak.json": ("`make soak`", "Twenty minutes of mixed load (`make soak`)"),
}

# What each goal of `make bench` measures, in words (the file names them by key).
GOALS = {
    "saturation_ratio": "saturated req/s ÷ the model's images/s alone",
    "low_load_overhead_ms": "one request at a time: p50 − the model's batch-1 time (ms)",
    "redis_bytes_fraction_of_course": "Redis bytes per request ÷ the course design's",
    "idle_commands_per_s": "Redis commands/s while idle (1 web server, 1 worker)",
    "scaling_4_over_1": "req/s with 4 workers ÷ with 1 (100 ms stand-in model)",
    "queue_path_rps": "req/s of the queue path alone (instant stand-in model)",
    "lite0_litert_over_tensorflow": "EfficientNet-Lite0 alone: LiteRT ÷ TensorFlow images/s",
    "resnet50_auto_over_tensorflow": "ResNet50 alone: its `auto` runtime ÷ TensorFlow images/s",
    "saturated_new_over_today": "saturated req/s: the defaults ÷ the TensorFlow configuration",
    "one_at_a_time_p50_new_over_today": "one request at a time p50: the defaults ÷ the TensorFlow configuration",
}

STAGES = {  # one request at a time: where its time goes (keys of low_load.breakdown_p50)
    "upload_and_http_ms": "upload and HTTP",
    "prepare_ms": "prepare (decode + resize, in the web server)",
    "queue_ms": "waiting on the queue",
    "inference_ms": "inference (the batch's model call)",
    "delivery_ms": "delivery (result → notification → GETEX → response)",
    "client_total_ms": "total, as the client saw it",
}

SYSTEMS = {"service": "this service", "flask": "Flask, model in the request", "litserve": "LitServe",
           "ray": "Ray Serve"}


# --- formatting -----------------------------------------------------------------------------------

def num(value, digits=None):
    """A figure as the page prints it: thousands separated, as many decimals as the file recorded."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if digits is not None:
            return f"{value:,.{digits}f}"
        if abs(value) >= 1000:
            return f"{value:,.0f}" if value.is_integer() else f"{value:,}"
        return f"{value:g}"
    return str(value)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def when(value):
    """The file's own date, as `YYYY-MM-DD HH:MM UTC` (files record ISO times or `... UTC` strings)."""
    if not value:
        return "not recorded in the file"
    text = str(value).replace(" UTC", "+00:00")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def provenance(data):
    """(date, CPU model, machine) as a result file records them; what it does not record is said so."""
    machine = data.get("machine") or {}
    cpu = machine.get("cpu_model") or machine.get("cpu") or "not recorded in the file"
    parts = []
    cores = machine.get("cpus") or machine.get("cpu_count")
    if cores:
        parts.append(f"{cores} CPUs")
    if machine.get("platform"):
        parts.append(machine["platform"])
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    before = machine.get("loadavg_before") or machine.get("load_average_at_start")
    after = machine.get("loadavg_after") or machine.get("load_average_at_end")
    if before:
        parts.append("load average before " + " / ".join(num(x) for x in before))
    if after:
        parts.append("after " + " / ".join(num(x) for x in after))
    return when(data.get("when") or data.get("date")), cpu, ", ".join(parts) or "not recorded in the file"


def measured_line(name, data):
    date, cpu, machine = provenance(data)
    return [f"Measured {date}. CPU: {cpu}. Machine: {machine}. Source: `bench/results/{name}`.", ""]


def pct(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- sections -------------------------------------------------------------------------------------

def overview(results):
    lines = ["## The result files", "",
             "Each section below is one file; each table is read from it, with the date, the CPU and the machine "
             "that file records. The client, the service and Redis share the machine's cores in every run, so "
             "throughput is what one machine does with everything on it, not what a web tier or a worker tier "
             "does alone. Rerun a benchmark on your machine before you size anything from these figures.", ""]
    rows = []
    for name, (command, heading) in FILES.items():
        data = results.get(name)
        if data is None:
            rows.append([f"`{name}`", command, "not measured yet", "", ""])
            continue
        date, cpu, machine = provenance(data)
        rows.append([f"[`{name}`](#{slug(heading)})", command, date, cpu, machine])
    return lines + table(["file", "made by", "measured", "CPU model", "machine"], rows)


def service_section(name, b):
    heading = FILES[name][1]
    lines = [f"## {heading}", "",
             "`make bench` starts its own Redis, gunicorn and model workers, loads them with "
             f"{b.get('image', 'an image')} uploads ({num(b.get('image_bytes'))} bytes) and writes this file. "
             "`bench/README.md` says what each section does.", ""]
    lines += measured_line(name, b)
    if b.get("quick"):
        return lines + ["This file comes from `--quick` (the stand-in model): its figures say nothing about "
                        "speed. Run `make bench` for a real one.", ""]
    verdicts = b.get("verdicts") or {}
    if verdicts:
        lines += ["### Goals", "",
                  "The goals are the ones `bench/run.py` checked when it wrote the file.", ""]
        lines += table(["figure", "measured", "goal", "met"],
                       [[GOALS.get(key, key), num(v.get("value")), v.get("goal"), num(v.get("met"))]
                        for key, v in verdicts.items()])

    model = b.get("model") or {}
    if model:
        per_image = model["batch_ms"] / model["batch_size"]
        lines += ["### The model alone", "",
                  f"{model['model']} on {model['runtime']}, {model['threads']} threads, in a process of its own: "
                  "the rate nothing built around it can exceed.", ""]
        lines += table(["batch 1", f"batch {model['batch_size']}", "images/s at that batch"],
                       [[f"{num(model['batch_1_ms'])} ms", f"{num(model['batch_ms'])} ms "
                         f"({per_image:.2f} ms per image)", num(model["images_per_s"])]])

    low = b.get("low_load") or {}
    if low:
        lat = low["latency_ms"]
        lines += ["### One request at a time", "",
                  f"{num(low['sent'])} requests, one after another; p50 {num(lat['p50'])} ms, "
                  f"p95 {num(lat['p95'])} ms, p99 {num(lat['p99'])} ms. Where the p50 request's time goes "
                  "(each stage's own p50, so they need not add up exactly):", ""]
        lines += table(["stage", "p50 ms"], [[STAGES.get(k, k), num(v)]
                                             for k, v in (low.get("breakdown_p50") or {}).items()])
        if "overhead_ms" in low:
            lines += [f"Everything but the model: p50 {num(lat['p50'])} ms − the model's batch-1 "
                      f"{num(low['model_batch_1_ms'])} ms = **{num(low['overhead_ms'])} ms**.", ""]

    sat = b.get("saturation") or {}
    if sat:
        lines += ["### Saturation", "",
                  f"{sat['clients']} closed-loop clients for {num(round(sat['elapsed_s']))} s. CPU per request "
                  "counts every process on the machine; the ceiling is the machine's cores divided by it.", ""]
        rows = [["the course's image", sat]]
        if b.get("saturation_client_resized"):
            resized = b["saturation_client_resized"]
            rows.append([f"a 224x224 JPEG the client made ({num(resized['upload_bytes'])} bytes)", resized])
        lines += table(["uploads", "req/s", "÷ model alone", "p50 / p95 / p99 ms", "mean batch",
                        "CPU ms per request", "CPU-bound ceiling req/s"],
                       [[what, num(r["requests_per_s"]), num(r.get("ratio_to_model")),
                         " / ".join(num(r["latency_ms"][p]) for p in ("p50", "p95", "p99")),
                         num(r.get("mean_batch")), num(r.get("cpu_ms_per_request")),
                         num(r.get("cpu_bound_ceiling_rps"))] for what, r in rows])
        cores = sat.get("cpu_cores") or {}
        if cores:
            lines += ["Cores each process used during the saturation run:", ""]
            lines += table(list(cores), [[num(v) for v in cores.values()]])
        if model and sat.get("cpu_ms_per_request"):
            model_ms = model["batch_ms"] / model["batch_size"] * model["threads"]
            outside = sat["cpu_ms_per_request"] - model_ms
            lines += [f"What limits it: the model needs at most {model_ms:.1f} ms of CPU per image "
                      f"({model['threads']} threads), and the request costs {num(sat['cpu_ms_per_request'])} ms in "
                      f"all, so about {outside:.1f} ms goes outside the model: HTTP and the multipart parse, decoding "
                      "and resizing the upload, the job and its result through Redis. On a machine whose cores "
                      "the web servers, Redis, the client and the model all share, that CPU caps requests/s below "
                      "the model's own rate; uploads the client already shrank cost less to decode, and web "
                      "servers on cores of their own leave the model as the limit.", ""]

    redis_ = b.get("redis") or {}
    if redis_:
        lines += ["### Redis per request", "",
                  "Bytes in and out of Redis and commands per request (INFO deltas), against what the course's "
                  "design sends for the same image (float32 base64 in a JSON job, RPUSH + LRANGE, the result SET "
                  "and GET, polling):", ""]
        rows = []
        for key, what in (("per_request_low_load", "one request at a time"),
                          ("per_request_saturation", "at saturation")):
            r = redis_.get(key)
            if r:
                rows.append([what, num(r["bytes"]), num(r["commands"])])
        course = redis_.get("course_bytes_per_request") or {}
        if course:
            rows.append(["the course's design (computed)", num(course["bytes"]), ""])
        lines += table(["", "bytes", "commands"], rows)
        if "fraction_of_course" in redis_:
            lines += [f"This service moves {num(redis_['fraction_of_course'])} of the course's bytes: raw pixels "
                      "after a small JSON header instead of base64 floats.", ""]

    idle = b.get("idle") or {}
    if idle:
        lines += [f"Idle, with {idle['web_servers']} web server and {idle['workers']} worker for "
                  f"{num(round(idle['seconds']))} s: {num(idle['commands_per_s'])} Redis commands/s "
                  f"({num(idle['sent_by_clients_per_s'])} sent by clients, "
                  f"{num(idle['run_inside_scripts_per_s'])} run inside Lua scripts), at "
                  f"`HEARTBEAT_INTERVAL={idle['heartbeat_interval_s']}` and "
                  f"`BLOCK_TIMEOUT={idle['block_timeout_s']}`.", ""]

    polling = b.get("polling") or {}
    if polling:
        lines += ["Results by keyspace notification against polling (one request at a time):", ""]
        lines += table(["mode", "p50 ms", "p95 ms", "commands per request"],
                       [[mode.replace("_", " "), num(r["latency_ms"]["p50"]), num(r["latency_ms"]["p95"]),
                         num(r["commands_per_request"])] for mode, r in polling.items()])

    scaling = b.get("scaling") or {}
    if scaling.get("runs"):
        lines += ["### Scaling over workers", "",
                  f"A stand-in model that sleeps {scaling['standin_latency_ms']} ms per batch, "
                  f"`BATCH_SIZE={scaling['batch_size']}`, {scaling['clients']} clients: the queue should hand "
                  "each worker its share, so requests/s should grow with the workers.", ""]
        lines += table(["workers", "req/s", "ideal req/s", "p50 ms"],
                       [[r["workers"], num(r["requests_per_s"]), num(r["ideal_requests_per_s"]),
                         num(r["latency_ms"]["p50"])] for r in scaling["runs"]])
        lines += [f"4 workers ÷ 1: **{num(scaling['four_over_one'])}x**.", ""]

    queue_path = b.get("queue_path") or {}
    if queue_path.get("runs"):
        lines += ["### The queue path alone", "",
                  f"An instant stand-in model and {queue_path['image']} uploads from {queue_path['clients']} "
                  "clients: what the web servers, Redis and the worker loop carry when the model costs nothing.",
                  ""]
        lines += table(["web processes", "req/s", "p50 / p95 ms", "mean batch"],
                       [[r["web_processes"], num(r["requests_per_s"]),
                         f"{num(r['latency_ms']['p50'])} / {num(r['latency_ms']['p95'])}", num(r["mean_batch"])]
                        for r in queue_path["runs"]])

    lines += runtimes(b)
    lines += capacity(b)
    return lines


def runtimes(b):
    lines = []
    alone = b.get("model_alone") or {}
    if alone.get("rows"):
        lines += ["### Runtimes and the defaults", "",
                  "Both models alone on both runtimes (random pixels; ResNet50 with random weights where its "
                  "file is absent, which changes nothing about speed):", ""]
        lines += table(["model", "runtime", "threads", "batch 1 ms", "batch", "images/s at that batch"],
                       [[r["model"], r["runtime"], r["threads"], num(r["batch_1_ms"]), r["batch_size"],
                         num(r["images_per_s"])] for r in alone["rows"]])
        best = alone.get("best_images_per_s") or {}
        ratio = alone.get("litert_over_tensorflow") or {}
        if best:
            lines += ["Best images/s of each model and runtime, over threads and batch sizes: " +
                      ", ".join(f"{k} {num(v)}" for k, v in best.items()) + ". LiteRT ÷ TensorFlow: " +
                      ", ".join(f"{k} {num(v)}" for k, v in ratio.items()) + ". `MODEL_RUNTIME=auto` serves " +
                      ", ".join(f"{m} on {r}" for m, r in registry.AUTO_RUNTIME.items()) +
                      " (`AUTO_RUNTIME` in `imgq/models/registry.py`); the faster under load in this file, where a "
                      "worker runs full batches: " +
                      ", ".join(f"{model} on {max(runtimes, key=runtimes.get)}"
                                for model, runtimes in _by_model(best).items()) + ".", ""]
    versus = b.get("defaults_vs_today") or {}
    if versus.get("new") and versus.get("today"):
        knobs = ("MODEL_RUNTIME", "BATCH_SIZE", "BATCH_WAIT_MS", "MODEL_THREADS", "WORKERS")
        lines += ["The defaults against the same service on TensorFlow, measured in turns:", ""]
        rows = []
        for key, what in (("new", "the defaults"), ("today", "on TensorFlow")):
            r = versus[key]
            rows.append([what, ", ".join(f"`{k}={r[k]}`" for k in knobs if k in r),
                         num(r["saturated"]["requests_per_s"]),
                         " / ".join(num(x) for x in r["saturated"].get("rounds_requests_per_s", [])),
                         num(r["one_at_a_time"]["latency_ms"]["p50"]), num(r.get("failed"))])
        lines += table(["", "settings", "saturated req/s", "per round", "one at a time p50 ms", "failed"], rows)
    sweep = b.get("runtime_sweep") or {}
    if sweep.get("points"):
        lines += [f"The sweep: {sweep['model']} with {sweep['image']} uploads, {num(sweep['duration_s'])} s per "
                  "point, clients = 2 x `BATCH_SIZE` x `WORKERS` (at least 8, at most 64). Each cell: saturated "
                  "req/s (p95 ms) / one request at a time p50 ms.", ""]
        for runtime in sorted({p["MODEL_RUNTIME"] for p in sweep["points"]}):
            points = [p for p in sweep["points"] if p["MODEL_RUNTIME"] == runtime]
            shapes = sorted({(p["WORKERS"], p["MODEL_THREADS"]) for p in points})
            header = [f"{runtime}: `BATCH_SIZE`"] + [f"{w} worker{'s' * (w > 1)} x {t} thread{'s' * (t > 1)}"
                                                    for w, t in shapes]
            rows = []
            for size in sorted({p["BATCH_SIZE"] for p in points}):
                row = [size]
                for w, t in shapes:
                    found = [p for p in points if (p["BATCH_SIZE"], p["WORKERS"], p["MODEL_THREADS"]) == (size, w, t)]
                    if found:
                        s, one = found[0]["saturated"], found[0]["one_at_a_time"]
                        row.append(f"{num(s['requests_per_s'])} ({num(round(s['latency_ms']['p95']))}) / "
                                   f"{num(one['latency_ms']['p50'])}")
                    else:
                        row.append("")
                rows.append(row)
            lines += table(header, rows)
        best = sweep.get("best") or {}
        if best:
            lines += ["Best point of each runtime: " + "; ".join(
                f"{runtime}: `BATCH_SIZE={p['BATCH_SIZE']}`, {p['WORKERS']} worker(s) x {p['MODEL_THREADS']} "
                f"thread(s), {num(p['saturated']['requests_per_s'])} req/s" for runtime, p in best.items()) +
                ". The defaults in `imgq/settings.py` follow the best point; at low load a batch is only as large "
                "as the queue, so a large `BATCH_SIZE` costs a lone request nothing.", ""]
    return lines


def _by_model(best):
    """{"model/runtime": images/s} -> {model: {runtime: images/s}}."""
    grouped = {}
    for key, value in best.items():
        model, _, runtime = key.partition("/")
        grouped.setdefault(model, {})[runtime] = value
    return grouped


def capacity(b):
    sat, model, redis_ = b.get("saturation"), b.get("model"), b.get("redis")
    if not sat or not model or not redis_ or not sat.get("cpu_cores"):
        return []
    rps, cores = sat["requests_per_s"], sat["cpu_cores"]
    web = 1000 * cores.get("web-1", 0) / rps
    worker = 1000 * cores.get("worker-0", 0) / rps
    model_ms = model["batch_ms"] / model["batch_size"] * model["threads"]
    per_request = redis_["per_request_low_load"]["bytes"]
    best_queue = max((r["requests_per_s"] for r in (b.get("queue_path") or {}).get("runs", [])), default=None)
    lines = ["### Capacity plan", "",
             "CPU per request of each tier at saturation (its cores ÷ requests/s), and what one core or one link "
             "carries at that cost. [Operations](operations.md#capacity-plan) says how to use it.", ""]
    lines += table(["cost per request", "measured", "one core (or link) carries"], [
        ["web server: upload, decode + resize, job, wait, answer", f"{web:.1f} ms CPU", f"{1000 / web:.0f} req/s"],
        ["worker, the model alone", f"{model_ms:.1f} ms CPU at most ({model['threads']} threads)",
         f"{1000 / model_ms:.0f} images/s"],
        ["worker, all of it: take, parse, model, results", f"{worker:.1f} ms CPU", f"{1000 / worker:.0f} req/s"],
        ["Redis, through its network", f"{num(per_request)} bytes",
         f"{125e6 / per_request:.0f} req/s per Gbit/s"],
    ])
    text = (f"A machine that runs both tiers needs about {web + worker:.1f} ms of CPU per request, "
            f"{1000 / (web + worker):.0f} requests/s per core, with about {round(100 * worker / (web + worker))}% "
            "of the cores for workers (`WORKERS` x `MODEL_THREADS`) and the rest for web processes "
            "(`WEB_PROCESSES`, one core each). One Redis is bounded by its network "
            f"({125e6 / per_request:.0f} requests/s per Gbit/s) and by its one core")
    if best_queue:
        text += f"; the queue path alone reached {num(best_queue)} requests/s here, with the web server as the limit"
    return lines + [text + ".", ""]


def ceiling_lines(p, systems, concurrency):
    """Where this service is under 0.95x the Flask app: its req/s ratio as the product of two, the cores it kept
    busy over the Flask app's and the Flask app's CPU per request over its own."""
    service = {pt["concurrency"]: pt for pt in (systems.get("service") or {}).get("points", [])}
    flask = {pt["concurrency"]: pt for pt in (systems.get("flask") or {}).get("points", [])}
    parts = []
    for c in concurrency:
        pt, peer = service.get(c), flask.get(c)
        if not (pt and peer and pt.get("vs_flask") and pt.get("server_cpu_ms_per_request")
                and peer.get("server_cpu_ms_per_request")) or pt["vs_flask"]["requests_per_s"] >= 0.95:
            continue
        ours, theirs = pt["cpu_cores"]["server"], peer["cpu_cores"]["server"]
        cpu, peer_cpu = pt["server_cpu_ms_per_request"], peer["server_cpu_ms_per_request"]
        parts.append(f"at {c} client{'s' * (c > 1)}, {num(ours)} cores busy against its {num(theirs)} "
                     f"({ours / theirs:.2f}x) and {num(cpu)} ms of CPU per request against its {num(peer_cpu)} "
                     f"({peer_cpu / cpu:.2f}x)")
    if not parts:
        return []
    return ["Where this service is under 0.95x the Flask app, its req/s ratio is the cores it kept busy over the "
            "Flask app's times the Flask app's CPU per request over its own: " + "; ".join(parts) + ". The CPU "
            "beyond the Flask app's is the queue's (the job into and out of Redis, the result and its "
            "notification) and the web tier's: "
            "[where a request's CPU goes](#where-a-requests-cpu-goes-make-bench-tax).", ""]


def peers_section(name, p):
    lines = [f"## {FILES[name][1]}", "",
             "The same model on the same runtime, served four ways and loaded by the same closed-loop client "
             f"({p.get('client', 'bench/load.py')}); every answer is checked for the label "
             f"`{p.get('expect')}`. `bench/README.md` describes each system.", ""]
    lines += measured_line(name, p)
    packages = p.get("peer_packages") or {}
    if packages:
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in packages.items()) + f". "
                  f"{num(p.get('warmup_s'))} s warm-up, then {num(p.get('duration_s'))} s per point.", ""]
    systems = p.get("systems") or {}
    rows = []
    for key, system in systems.items():
        what = (system.get("config") or {}).get("what", "")
        rows.append([f"{SYSTEMS.get(key, key)}", what])
    lines += table(["system", "what runs"], rows)
    concurrency = p.get("concurrency") or []
    header = ["system"] + [f"{c} client{'s' * (c > 1)}: req/s, p50 / p95 ms" for c in concurrency] + [
        "server CPU ms per request"]
    rows = []
    for key, system in systems.items():
        points = {pt["concurrency"]: pt for pt in system.get("points", [])}
        row = [SYSTEMS.get(key, key)]
        for c in concurrency:
            pt = points.get(c)
            row.append(f"{num(pt['requests_per_s'])}, {num(pt['latency_ms']['p50'])} / {num(pt['latency_ms']['p95'])}"
                       if pt else "")
        row.append(" / ".join(num(points[c].get("server_cpu_ms_per_request")) for c in concurrency if c in points))
        rows.append(row)
    lines += table(header, rows)
    lines += [f"Wrong answers: {num(p.get('wrong_answers_total'))}; failed requests: "
              f"{num(p.get('failed_requests_total'))}.", ""]
    ratio_rows = []
    for key, system in systems.items():
        points = {pt["concurrency"]: pt for pt in system.get("points", []) if pt.get("vs_flask")}
        if points:
            ratio_rows.append([SYSTEMS.get(key, key)] + [
                f"{num(points[c]['vs_flask']['requests_per_s'])}x, {num(points[c]['vs_flask']['p95'])}x, "
                f"{num(points[c]['vs_flask']['cpu_ms_per_request_more'])} ms" if c in points else ""
                for c in concurrency])
    if ratio_rows:
        lines += ["Beside the Flask app in the same run (req/s ratio, p95 ratio, CPU ms per request more; the "
                  "`others` CPU of each point in the JSON says whether the machine was busy meanwhile):", ""]
        lines += table(["system"] + [f"{c} client{'s' * (c > 1)}" for c in concurrency], ratio_rows)
    lines += ceiling_lines(p, systems, concurrency)
    per_cpu = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "peers-*.json"))):
        if os.path.basename(path).startswith("peers-quick"):
            continue
        with open(path) as f:
            run = json.load(f)
        service = {pt["concurrency"]: pt for pt in run.get("systems", {}).get("service", {}).get("points", [])}
        per_cpu.append([run.get("machine", {}).get("cpu_model", "?"), str(run.get("date", ""))[:16]] + [
            f"{num(service[c]['vs_flask']['requests_per_s'])}x" if c in service and service[c].get("vs_flask")
            else "" for c in concurrency])
    if per_cpu:
        lines += ["The latest full run on each CPU measured (`bench/results/peers-<cpu>.json`): this service's "
                  "req/s over the Flask app's in that run.", ""]
        lines += table(["CPU", "date"] + [f"{c} client{'s' * (c > 1)}" for c in concurrency], per_cpu)
    leaders = []
    for c in concurrency:
        best = max(((k, pt) for k, s in systems.items() for pt in s.get("points", []) if pt["concurrency"] == c),
                   key=lambda kp: kp[1]["requests_per_s"], default=None)
        if best:
            leaders.append(f"{c}: {SYSTEMS.get(best[0], best[0])}")
    if leaders:
        lines += ["Most requests/s at each concurrency — " + "; ".join(leaders) + ". On cores that every system "
                  "shares with its client, the figure that decides is CPU per request: the plain Flask app does "
                  "the same decoding and model work without the queue. What the queue's extra CPU buys is what "
                  "the Flask app lacks: web servers and workers on different machines, jobs that outlive the "
                  "worker that took them, backpressure (503 when the queue is full) and requests that wait "
                  "without holding a model.", ""]
    if os.path.exists(os.path.join(RESULTS, "peers.png")):
        lines += ["![Requests/s against p95 latency for each system](../bench/results/peers.png)", ""]
    return lines


def notifications_section(name, n):
    lines = [f"## {FILES[name][1]}", "",
             "How a waiting request learns that its result is there: a keyspace notification (the default, with "
             "its own backup read every `BACKUP_POLL_S`; \"notifications, 1 s backup\" reads every second as the "
             "code before did) or polling (`NOTIFICATIONS=0`, every `POLL_INTERVAL`). Measured with the stand-in "
             "model, whose latency is fixed, so the differences are the delivery's.", ""]
    lines += measured_line(name, n)
    cdf = n.get("cdf") or {}
    if cdf.get("modes"):
        s = cdf["settings"]
        lines += [f"Latency: {s['repeats']} repeats of {num(s['requests_per_repeat'])} requests, "
                  f"{s['concurrency']} clients, stand-in latency {s['standin_latency_ms']} ms, "
                  f"`BATCH_SIZE={s['batch_size']}`. Each cell: the lowest and highest of the repeats.", ""]
        rows = []
        for mode, m in cdf["modes"].items():
            reps = m["repeats"]

            def span(key, reps=reps):
                values = [r["latency_ms"][key] for r in reps]
                return f"{num(min(values))}–{num(max(values))}"
            rows.append([mode, span("p50"), span("p95"), span("p99"),
                         f"{num(min(r['commands_per_request'] for r in reps))}–"
                         f"{num(max(r['commands_per_request'] for r in reps))}",
                         num(sum(r["failed"] for r in reps))])
        lines += table(["mode", "p50 ms", "p95 ms", "p99 ms", "commands per request", "failed"], rows)
    sweep = n.get("sweep") or {}
    if sweep.get("rows"):
        lines += ["Waiting time against Redis commands, as the model gets slower (p50 of the time a request "
                  "waited; commands per request and per second over the whole run):", ""]
        lines += table(["model latency s", "mode", "wait p50 ms", "commands per request", "commands/s"],
                       [[num(r["standin_latency_s"]), r["mode"], num(r["wait_ms_p50"]),
                         num(r["commands_per_request"]), num(r["commands_per_s"])] for r in sweep["rows"]])
        lines += ["Polling adds commands for every interval a request waits; notifications add one read per "
                  "`BACKUP_POLL_S` waited.", ""]
    fanout = (n.get("fanout") or {}).get("rows")
    if fanout:
        lines += ["Fan-out: every web process's listener receives every result's event.", ""]
        lines += table(["web processes", "listeners", "Redis output bytes per request", "extra vs 1",
                        "web CPU ms per request"],
                       [[r["web_processes"], r["listeners_subscribed"], num(r["redis_output_bytes_per_request"]),
                         num(r["extra_output_bytes_per_request_vs_1"]), num(r["web_cpu_ms_per_request"])]
                        for r in fanout])
    lost = n.get("lost") or {}
    if lost.get("requests"):
        answered = [r["answered_s"] for r in lost["requests"]]
        statuses = sorted({r["status"] for r in lost["requests"]})
        lines += [f"A lost notification: the listener's connection was killed {lost['kills']} times while results "
                  f"were written (stand-in latency {num(lost['worker_latency_s'])} s). All "
                  f"{len(answered)} requests were answered (status {', '.join(map(str, statuses))}), the last after "
                  f"{num(max(answered))} s: the wake-up when the listener subscribes again, or the `POLL_INTERVAL` "
                  f"check ({num(lost['poll_interval_s'])} s) while it is down, finds what a dropped event missed.", ""]
    return lines


def soak_section(name, s):
    summary = s.get("summary") or {}
    lines = [f"## {FILES[name][1]}", "",
             "The real service (Redis, gunicorn, EfficientNet-Lite0 workers) under good uploads that must come "
             "back right, bad uploads that must get a 4xx, and clients that hang up before the answer, while a "
             "worker is killed with SIGKILL every few minutes. It checks that nothing is lost and nothing grows.",
             ""]
    lines += measured_line(name, s)
    if not summary:
        return lines
    kinds = summary.get("by_kind_and_status") or {}
    outcome = "; ".join(f"{kind}: " + ", ".join(f"{num(count)} {status}" for status, count in statuses.items())
                        for kind, statuses in kinds.items())
    lines += table(["minutes", "requests started/s", "model", "requests", "outcomes", "failures", "worker kills",
                    "passed"],
                   [[summary.get("minutes"), summary.get("rate"), summary.get("model"), num(summary.get("requests")),
                     outcome, num(summary.get("failures")), num(summary.get("worker_kills")),
                     num(summary.get("passed"))]])
    samples = s.get("samples") or []
    if samples:
        settled = [x for x in samples if x["t"] >= samples[-1]["t"] / 5] or samples  # after the first fifth

        def span(values):
            return f"{min(values):.1f}–{max(values):.1f}"
        lines += ["After the first fifth of the run (warm-up):", ""]
        lines += table(["web processes' RSS MB (sum)", "workers' RSS MB (sum)", "Redis used MB",
                        "the deployment's keys", "web RSS growth MB"],
                       [[span([sum(x["rss_mb"].get("web", [])) for x in settled]),
                         span([sum(x["rss_mb"].get("worker", [])) for x in settled]),
                         span([x["redis_mb"] for x in settled]),
                         f"{min(x['keys'] for x in settled)}–{max(x['keys'] for x in settled)}",
                         num(summary.get("web_rss_growth_mb"))]])
        lines += [f"Keys at the end: {summary.get('keys_at_end')} (heartbeats, the workers set, their model "
                  "records, the metrics hash); keys left over that should not be: "
                  f"{len(summary.get('left_over') or [])}.", ""]
    if os.path.exists(os.path.join(RESULTS, "soak.png")):
        lines += ["![Soak run: answers per status, Redis keys and memory over time, worker kills dotted]"
                  "(../bench/results/soak.png)", ""]
    return lines


def tax_section(name, t):
    lines = [f"## {FILES[name][1]}", ""]
    lines += measured_line(name, t)
    model, decode = t.get("model_alone_cpu_ms_per_image_1_thread"), t.get("decode_cpu_ms_per_upload")
    lines += [f"The service at its defaults (one worker, `{t.get('model')}`, castle uploads), as `make bench-peers` "
              f"starts it; {num(t.get('warmup_s'))} s warm-up, then {num(t.get('duration_s'))} s per point. Every "
              "thread's CPU seconds over the requests answered, by the name it gives the system (the first round of "
              "the defaults below; `worker: model` is the model threads, which hand batches to the lanes and run "
              "a lone image on the multi-thread interpreter, `worker: lane` the one-thread lanes). Two costs any "
              f"server of this model pays: the model alone, {num(model)} ms of CPU per image on one thread, and "
              f"decoding + resizing castle, {num(decode)} ms; the last row is everything else.", ""]
    runs = (t.get("runs") or {}).get("defaults") or []
    if runs:
        points = runs[0]
        labels = sorted({label for pt in points for label in pt["thread_cpu_ms_per_request"]})
        header = ["CPU ms per request"] + [f"{pt['concurrency']} client{'s' * (pt['concurrency'] > 1)}"
                                           for pt in points]
        rows = [[label] + [num(pt["thread_cpu_ms_per_request"].get(label, 0)) for pt in points] for label in labels]
        rows.append(["**the whole service**"] + [f"**{num(pt['service_cpu_ms_per_request'])}**" for pt in points])
        if model is not None and decode is not None:
            rows.append(["beyond the model alone and the decode"] + [
                num(round(pt["service_cpu_ms_per_request"] - model - decode, 2)) for pt in points])
        rows.append(["req/s (mean batch)"] + [f"{num(pt['requests_per_s'])} ({num(pt['mean_batch'])})"
                                              for pt in points])
        lines += table(header, rows)
    medians = t.get("medians") or {}
    if medians:
        concurrency = [m["concurrency"] for m in next(iter(medians.values()))]
        lines += [f"The defaults against lanes undone, a change tried and not kept, and the alternative, each "
                  f"started afresh in turns ({num(t.get('rounds'))} rounds; the same machine's noise hits them "
                  "alike): medians of req/s, p95 ms and CPU ms per request; failed requests over every round.", ""]
        rows = []
        for key, what in (t.get("configs") or {}).items():
            by_c = {m["concurrency"]: m for m in medians.get(key, [])}
            failed = sum(pt["failed"] for rnd in (t.get("runs") or {}).get(key, []) for pt in rnd)
            rows.append([what] + [f"{num(by_c[c]['requests_per_s'])}, {num(by_c[c]['p95_ms'])}, "
                                  f"{num(by_c[c]['service_cpu_ms_per_request'])}" if c in by_c else ""
                                  for c in concurrency] + [num(failed)])
        lines += table(["configuration"] + [f"{c} client{'s' * (c > 1)}" for c in concurrency] + ["failed"], rows)
    return lines


def tune_section(name, t):
    lines = [f"## {FILES[name][1]}", ""]
    lines += measured_line(name, t)
    clients = t.get("clients") or []
    lines += [f"`make tune` on this machine: each candidate started afresh, in turns ({num(t.get('rounds'))} rounds), "
              f"`{t.get('model')}`, {t.get('upload')} uploads, {num(t.get('warmup_s'))} s warm-up, then "
              f"{num(t.get('duration_s'))} s per point. A round's score is the geometric mean of its req/s over the "
              f"client counts; a candidate replaces the defaults only when ahead of them by "
              f"{num(round(100 * (t.get('margin') or 0)))}% or more in every round, with no failed request and the "
              "defaults' answers "
              "([configuration](configuration.md#this-machines-own-settings-make-tune)).", ""]
    rows = []
    for cand, rounds in (t.get("runs") or {}).items():
        why = (t.get("why") or {}).get(cand, {})
        settings_ = " ".join(f"`{k}={v}`" for k, v in (t.get("candidates") or {}).get(cand, {}).items()) or "—"
        by_c = [" / ".join(num(rnd[i]["requests_per_s"]) for rnd in rounds) for i in range(len(clients))]
        gains = " / ".join(f"{g * 100:+.1f}%" for g in why.get("gain_by_round", []))
        rows.append([cand, settings_] + by_c + [" / ".join(num(x) for x in why.get("score_by_round", [])),
                                                gains if cand != "defaults" else "", num(why.get("failed"))])
    lines += table(["candidate", "sets"] + [f"req/s, {c} client{'s' * (c > 1)}" for c in clients]
                   + ["score", "against the defaults", "failed"], rows)
    lines += [f"Chosen: **{t.get('winner')}** (each cell: round 1 / round 2 ...).", ""]
    return lines


SECTIONS = {"latest.json": service_section, "peers.json": peers_section, "tax.json": tax_section,
            "tune.json": tune_section, "notifications.json": notifications_section, "soak.json": soak_section}


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def load(results_dir):
    found = {}
    for name in FILES:
        path = os.path.join(results_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                found[name] = json.load(f)
    return found


def render(results_dir=RESULTS):
    results = load(results_dir)
    lines = ["# Benchmarks", "",
             "What the service measured, run by run: the only page of these docs with measured figures.", "",
             "<!-- Generated by `python -m docs.benchmarks` from bench/results/*.json; edit the script, not "
             "this file. tests/test_docs.py checks that the two agree. -->", ""]
    lines += overview(results)
    for name, section in SECTIONS.items():
        if name in results:
            lines += section(name, results[name])
        else:
            lines += [f"## {FILES[name][1]}", "", f"Not measured yet: run {FILES[name][0]}.", ""]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=RESULTS, help="folder of the result files (default: %(default)s)")
    parser.add_argument("--out", default=PAGE, help="the page to write or check (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and print a diff when the page is not what the files give")
    args = parser.parse_args(argv)
    page = render(args.results)
    if args.check:
        current = open(args.out).read() if os.path.exists(args.out) else ""
        if current != page:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), page.splitlines(True),
                                                       args.out, "generated"))
            print(f"{args.out} is out of date: run `python -m docs.benchmarks`", file=sys.stderr)
            return 1
        return 0
    with open(args.out, "w") as f:
        f.write(page)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
