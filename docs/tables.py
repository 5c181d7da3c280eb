"""The write-up's generated tables: each reads a result file and returns HTML, or a "not measured yet" box.

Used by docs/build.py; a directive {{gen: NAME}} in writeup.md calls Results.gen_NAME. Numbers are never typed
into writeup.md: they come from these functions or from inline [[source: path]] look-ups.
"""
import ast
import html
import json
import os
import re

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
BUILD = os.path.join(DOCS, "build")

# The tests that show each fix: docs/build.py runs them (step 4), section 4 shows their outcome.

EVIDENCE_TESTS = [
    "tests/test_service.py::test_two_web_servers_two_workers_200_concurrent_requests",
    "tests/test_reliability.py::test_sigkill_mid_batch_loses_nothing_and_answers_nothing_twice",
    "tests/test_reliability.py::test_all_workers_dead_504_then_recovery_and_abandoned_jobs_dropped",
    "tests/test_service.py::test_no_worker_means_504_after_request_timeout_and_nothing_left",
    "tests/test_reliability.py::test_junk_on_the_queue_is_answered_or_dropped_and_the_worker_lives",
    "tests/test_service.py::test_requests_complete_by_polling_without_notifications",
    "tests/test_reliability.py::test_redis_down_for_10s_under_load",
    "tests/test_notifications.py::test_results_set_while_no_listener_is_subscribed_are_still_answered",
]



# --- generated tables (each reads a result file; missing → "not measured yet") ---------------------

def esc(value):
    return html.escape(str(value))


def not_measured(what, how):
    return (f'<div class="missing"><strong>Not measured yet.</strong> {what} '
            f'<span class="how">To measure: {how}</span></div>')


def provenance(when, mach, source, quick=False):
    m = mach or {}
    parts = [f"measured {esc(when)}" if when else "date not recorded"]
    if m:
        parts.append(esc(", ".join(str(x) for x in [f"{m.get('cpus')} CPUs" if m.get("cpus") else None,
                                                     m.get("cpu"), m.get("memory"), m.get("platform")] if x)))
    else:
        parts.append("machine not recorded")
    warn = ('<br/><span class="bad">A --quick run (stand-in model, a handful of requests): these figures only '
            'show that the benchmark works.</span>') if quick else ""
    return f'<p class="provenance">Source: <code>{esc(source)}</code>; {"; ".join(parts)}.{warn}</p>'


def _md_inline(text):
    """The README's Markdown cell as HTML: `code` and **bold** only."""
    text = esc(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def table(header, rows, cls=""):
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Results:
    def __init__(self, live, race, tests, sources, meta, stress_demo=None, figures=None):
        steps = (("live", live), ("race", race), ("tests", tests), ("course_stress", stress_demo))
        self.errors = {name: value["error"] for name, value in steps if isinstance(value, dict) and "error" in value}
        live, race, tests, stress_demo = [None if isinstance(v, dict) and "error" in v else v for _, v in steps]
        self.live, self.race, self.tests, self.stress_demo, self.meta = live, race, tests, stress_demo, meta
        self.sources = sources  # result files by name ("bench", "notify", ...), each with its "_path"
        self.bench = sources.get("bench")
        self.bench_path = (self.bench or {}).get("_path", "bench/results/latest.json")
        self.figures = figures or {}

    def value(self, source, path):
        """An inline number [[source: a.b.0.c]] from a result file, or a red "not measured" mark."""
        node = self.sources.get(source)
        if source in ("live", "race", "course_stress"):
            node = {"live": self.live, "race": self.race, "course_stress": self.stress_demo}[source]
        for part in path.split("."):
            if isinstance(node, list) and part.lstrip("-").isdigit():
                node = node[int(part)] if -len(node) <= int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.get(part)
            else:
                node = None
            if node is None:
                return f'<span class="bad" title="{esc(source)}: {esc(path)}">not measured</span>'
        if isinstance(node, float):
            return f"{node:,.3f}".rstrip("0").rstrip(".") if abs(node) < 10 else f"{node:,.1f}".rstrip("0").rstrip(".")
        if isinstance(node, int):
            return f"{node:,}"
        return esc(node)

    def plot(self, name, caption, missing_what, missing_how):
        """A measured figure drawn by docs/plots.py, or the "not measured" box."""
        if name not in self.figures:
            return not_measured(missing_what, missing_how)
        return (f'<figure class="diagram plot"><img src="{self.figures[name]}" alt="{esc(name)}"/>'
                f'<figcaption>{caption}</figcaption></figure>')

    def failed(self, name, what):
        """The "not measured" box for a step that raised, with its error, or None."""
        if name not in self.errors:
            return None
        return not_measured(f"{what} failed in this build: <code>{esc(self.errors[name][-600:])}</code>",
                            "fix the error and run <code>make docs</code> again.")

    # section 1
    def gen_job_sizes(self):
        """Bytes of one job on the queue, ours vs the course's, computed from the real encoders."""
        import base64
        import numpy as np
        from imgq.jobs import message
        pixels = np.zeros((224, 224, 3), dtype=np.uint8)
        ours = message.make_job(message.new_id(), pixels, 30.0)
        course_image = base64.b64encode(np.zeros((1, 224, 224, 3), dtype=np.float32).tobytes()).decode()
        course = json.dumps({"id": "3f2c1d4e-0000-4000-8000-000000000000", "image": course_image})
        rows = [["course", "<code>image_queue</code>", "float32 (1, 224, 224, 3)", f"{224 * 224 * 3 * 4:,}",
                 f"{len(course):,}"],
                ["ours", "<code>imgq:queue</code>", "uint8 (224, 224, 3)", f"{224 * 224 * 3:,}", f"{len(ours):,}"]]
        return (table(["design", "key", "pixels", "raw bytes", "element on the list, bytes"], rows) +
                f'<p class="provenance">Computed at build time ({esc(self.meta["when"])}) by encoding a 224×224 '
                f'image with <code>job.make_job</code> and with the course\'s float32 + base64 encoding.</p>')

    # section 3
    def gen_castle(self):
        if self.failed("live", "The live run"):
            return self.failed("live", "The live run")
        live = self.live
        if not live:
            return not_measured("No live run in this build.", "<code>make docs</code> (without --fast).")
        if not live.get("castle_found"):
            return not_measured("castle_image.jpg was not found next to the repository (../shared/).",
                                "put castle_image.jpg in ../shared/ and run <code>make docs</code>.")
        parts = []
        for run in live["castle"]:
            lines = [l for l in run.get("stdout", "").splitlines() if re.match(r"\d+\. ", l)]
            if run.get("returncode") != 0 or not lines:
                parts.append(not_measured(f"simple_request.py failed for {esc(run['model_requested'])}: "
                                          f"<code>{esc(run.get('stderr', '').strip()[-300:])}</code>",
                                          "<code>make docs</code> with a working model."))
                continue
            rows = []
            for line in lines:
                m = re.match(r"(\d+)\. (.+): ([0-9.]+)$", line)
                rows.append([m.group(1), f"<code>{esc(m.group(2))}</code>", m.group(3)])
            parts.append(f'<p class="tablecap">Model that answered: <strong>{esc(run.get("model", "?"))}</strong> '
                         f'(request id <code>{esc(run.get("id", "?"))}</code>)</p>')
            parts.append(table(["rank", "label", "probability"], rows, "narrow"))
            parts.append(f'<pre class="console">$ {esc(run["command"])}\n{esc(run["stdout"].rstrip())}</pre>')
        r50 = live.get("resnet50") or {}
        if not r50.get("available"):
            parts.append(f'<div class="missing"><strong>ResNet50: not run.</strong> Its ImageNet weights were not '
                         f'available on the build machine ({esc(r50.get("why_not", "?"))}), and nothing is '
                         f'downloaded. Set <code>RESNET50_WEIGHTS</code> to Keras\' '
                         f'<code>resnet50_weights_tf_dim_ordering_tf_kernels.h5</code> and rebuild to add its '
                         f'table.</div>')
        parts.append(provenance(live["when"], live["machine"], "live run by docs/build.py"))
        return "\n".join(parts)

    # section 3
    def gen_castle_compare(self):
        """The course's ResNet50 reference beside every model and runtime this build served castle with."""
        live = self.live or {}
        rows = [["course (pyimagesearch), quoted", "ResNet50, Keras, ImageNet weights", "Keras / TensorFlow",
                 "castle", "0.8742"]]
        for run in live.get("castle", []):
            if run.get("top1"):
                rows.append(["this service, measured in this build", esc(run.get("model", run["model_requested"])),
                             esc(run.get("runtime", "?")), esc(run["top1"]), f'{run["top1_probability"]:.4f}'])
        r50 = live.get("resnet50") or {}
        if not r50.get("available"):
            rows.append(["this service", "ResNet50", "—", "not run", esc(f'no weights file here ({r50.get("why_not", "?")})')])
        thumb = ""
        if self.figures.get("castle_thumb"):
            thumb = (f'<figure class="thumb"><img src="{self.figures["castle_thumb"]}" alt="castle_image.jpg"/>'
                     f'<figcaption>castle_image.jpg (thumbnail made at build time from ../shared/)</figcaption></figure>')
        why = ('<p class="small">Why the probabilities differ: a different network (EfficientNet-Lite0, 4.7 M '
               'parameters, 75.1% ImageNet top-1, against ResNet50\'s 25.6 M parameters and 74.9%) trained '
               'separately, so its confidence on one photo differs; a different input pipeline (the course resizes '
               'with Keras\' nearest-neighbour `load_img` and Caffe-style mean subtraction, this service decodes and '
               'resizes with Pillow and applies each model\'s own normalisation); and, between our two runtimes, '
               'float rounding in a converted graph (within 0.001, checked by the tests). The label is the same.</p>')
        return thumb + table(["who", "model", "runtime", "top-1", "probability"], rows) + why

    # section 4
    def gen_fanout(self):
        rows = ((self.sources.get("notify") or {}).get("fanout") or {}).get("rows")
        if not rows:
            return not_measured("The notification fan-out was not measured.", "<code>make bench-notify</code>.")
        body = [[r["web_processes"], r["listeners_subscribed"], f'{r["ok"]}/{r["requests"]}',
                 f'{r["redis_output_bytes_per_request"]:,}', f'{r["extra_output_bytes_per_request_vs_1"]:+,}',
                 r["web_cpu_ms_per_request"]] for r in rows]
        n = self.sources["notify"]
        return (table(["web processes", "listeners subscribed", "answered", "Redis output bytes / request",
                       "vs 1 process", "web CPU ms / request"], body) +
                provenance(n.get("when"), n.get("machine"), n["_path"], n.get("quick")))

    # section 5
    def gen_notify_latency(self):
        cdf = (self.sources.get("notify") or {}).get("cdf")
        if not cdf:
            return not_measured("Notifications against polling were not measured.", "<code>make bench-notify</code>.")
        rows = []
        for mode, m in cdf["modes"].items():
            reps = m["repeats"]
            p50 = [r["latency_ms"]["p50"] for r in reps]
            p95 = [r["latency_ms"]["p95"] for r in reps]
            cmds = [r["commands_per_request"] for r in reps]
            n = sum(r["latency_ms"]["n"] for r in reps)
            rows.append([esc(mode), f"{n:,} in {len(reps)}", f"{min(p50):.0f}–{max(p50):.0f}",
                         f"{min(p95):.0f}–{max(p95):.0f}", f"{min(cmds):.2f}–{max(cmds):.2f}",
                         sum(r["failed"] for r in reps)])
        n = self.sources["notify"]
        st = cdf["settings"]
        return (table(["waiting by", "requests in repeats", "p50 ms (range over repeats)", "p95 ms (range)",
                       "Redis commands / request (range)", "failed"], rows) +
                f'<p class="provenance">{st["concurrency"]} clients, stand-in {st["standin_latency_ms"]} ms per '
                f'batch, BATCH_SIZE {st["batch_size"]}.</p>' +
                provenance(n.get("when"), n.get("machine"), n["_path"], n.get("quick")))

    def gen_notify_sweep(self):
        sweep = (self.sources.get("notify") or {}).get("sweep")
        if not sweep:
            return not_measured("The waiting-time sweep was not measured.", "<code>make bench-notify</code>.")
        by = {}
        for r in sweep["rows"]:
            by.setdefault(r["standin_latency_s"], {})[r["mode"]] = r
        modes = ["notifications", "polling 0.25 s", "polling 1 s"]
        rows = []
        for latency, m in sorted(by.items()):
            rows.append([f"{latency:g} s"] + [f'{m[k]["commands_per_request"]:.1f} ({m[k]["commands_per_s"]:.0f}/s)'
                                              if k in m else "—" for k in modes])
        return table(["stand-in per batch"] + [f"{k}: commands / request (per s)" for k in modes], rows)

    # section 6
    def gen_course_stress(self):
        if self.failed("course_stress", "The stress-test demonstration"):
            return self.failed("course_stress", "The stress-test demonstration")
        d = self.stress_demo
        if not d:
            return not_measured("The stress-test demonstration did not run.", "<code>make docs</code>.")
        slow, down, ours = d["slow_service"], d["server_down"], d["ours"]
        rows = [["course's loop, slow service", slow["sent"], slow["reported_ok"], slow["reported_failed"],
                 f'<span class="bad">{slow["never_reported"]}</span>', slow["tracebacks"], slow["exit_code"]],
                ["course's loop, nothing listening", down["sent"], down["reported_ok"], down["reported_failed"],
                 f'<span class="bad">{down["never_reported"]}</span>', down["tracebacks"], down["exit_code"]],
                ["ours (stress_test.py), slow service", ours["sent"], ours["succeeded"], ours["failed"], 0, 0,
                 ours["exit_code"]]]
        return (table(["client", "sent", "reported OK", "reported failed", "never reported", "tracebacks",
                       "exit code"], rows) +
                provenance(d["when"], d["machine"], "docs/course_stress_demo.py and stress_test.py, run by docs/build.py"))

    # results
    def gen_before_after(self):
        """Course vs this service vs goal, one row per figure, each with its source and sample size."""
        b, race, notify = self.bench or {}, self.race or {}, self.sources.get("notify") or {}
        rows = []

        def verdict(ok):
            return '<span class="good">met</span>' if ok else '<span class="bad">missed</span>'
        red = b.get("redis")
        if red:
            rows.append(["Redis bytes per request", f'{red["course_bytes_per_request"]["bytes"]:,} (computed from what '
                         f'it sends)', f'{red["per_request_low_load"]["bytes"]:,} = {red["fraction_of_course"]} of it',
                         "≤ 0.25 of the course", verdict(red["fraction_of_course"] <= 0.25), "one run"])
        if race.get("total"):
            t = race["total"]
            rows.append(["jobs run twice / never run, 2 web servers × 2 workers",
                         f'{t["course"]["run_more_than_once"]} / {t["course"]["never_run"]} of {t["course"]["pushed"]}',
                         f'{t["ours"]["run_more_than_once"]} / {t["ours"]["never_run"]} of {t["ours"]["pushed"]}', "0 / 0",
                         verdict(t["ours"]["run_more_than_once"] == 0 and t["ours"]["never_run"] == 0),
                         f'{len(race.get("rounds", []))} rounds'])
        modes = (notify.get("cdf") or {}).get("modes") or {}
        if "notifications" in modes and "polling 0.25 s" in modes:
            def p50s(mode):
                reps = modes[mode]["repeats"]
                values = [r["latency_ms"]["p50"] for r in reps]
                return f'{min(values):.0f}–{max(values):.0f} ms', sum(r["latency_ms"]["n"] for r in reps), len(reps)
            course, n, k = p50s("polling 0.25 s")
            ours, _, _ = p50s("notifications")
            rows.append(["latency p50, stand-in model (the waiting alone)", f"{course} (polling 0.25 s)",
                         f"{ours} (notifications)", "lower", "", f"n = {n:,} each, {k} repeats (range shown)"])
        for name, label in (("saturation_ratio", "saturated requests/s ÷ model-alone images/s"),
                            ("low_load_overhead_ms", "one request at a time: p50 minus the model's batch-1 time, ms"),
                            ("idle_commands_per_s", "idle Redis commands/s (1 web server, 1 worker)"),
                            ("scaling_4_over_1", "4 workers ÷ 1 worker (100 ms stand-in)"),
                            ("queue_path_rps", "queue path requests/s (instant stand-in)")):
            v = (b.get("verdicts") or {}).get(name)
            if v:
                course = {"idle_commands_per_s": "8 per idle worker (4 LRANGE/s) + 4 GET/s per waiting request",
                          "scaling_4_over_1": "jobs run twice / lost (race)"}.get(name, "—")
                rows.append([label, course, esc(v["value"]), esc(v["goal"]), verdict(v["met"]), "one run"])
        if not rows:
            return not_measured("No benchmark results.", "<code>make bench</code>, <code>make bench-notify</code>.")
        load = (b.get("machine") or {}).get("loadavg_before")
        return (table(["figure", "course", "this service", "goal", "", "sample"], rows) +
                provenance(b.get("when"), b.get("machine"), self.bench_path, b.get("quick")) +
                (f'<p class="provenance">Load average before the benchmark: {esc(load)}.</p>' if load else ""))

    def gen_runtimes(self):
        """The runtime section of bench/results/latest.json: each model alone on each runtime, and the new
        defaults against the previous ones end to end (bench/sweep.py)."""
        b = self.bench or {}
        title = "Model runtimes: TensorFlow graph against LiteRT (XNNPACK)"
        alone, vs = b.get("model_alone"), b.get("defaults_vs_today")
        if not alone or not vs:
            return not_measured(f"{title}: no runtime section in the benchmark file.", "<code>make bench</code>.")
        rows = [[esc(r["model"]) + (" (random weights)" if r.get("weights") == "random" else ""), esc(r["runtime"]),
                 str(r["threads"]), f'{r["batch_1_ms"]:.2f}', f'{r["images_per_s"]:.1f}'] for r in alone["rows"]]
        ends = []
        for name, label in (("today", "previous defaults"), ("new", "the defaults")):
            d = vs[name]
            ends.append([label, esc(d["MODEL_RUNTIME"]), str(d["BATCH_SIZE"]), str(d["MODEL_THREADS"]),
                         f'{d["saturated"]["requests_per_s"]:.1f}', f'{d["saturated"]["latency_ms"]["p95"]:.0f}',
                         f'{d["one_at_a_time"]["latency_ms"]["p50"]:.2f}'])
        ratios = (f'<p class="provenance">Saturated requests/s, the defaults over the previous ones: '
                  f'{vs["saturated_ratio"]} (goal {esc(vs["goals"]["saturated_ratio"])}); one request at a time p50: '
                  f'{vs["one_at_a_time_p50_ratio"]} (goal {esc(vs["goals"]["one_at_a_time_p50_ratio"])}); Lite0 '
                  f'alone, best LiteRT over best TensorFlow: '
                  f'{alone["litert_over_tensorflow"]["efficientnet_lite0"]} (goal >= 1.8).</p>')
        return (f'<p class="tablecap">{esc(title)}: the model alone, random uint8 input</p>' +
                table(["model", "runtime", "threads", "batch 1 ms", "images/s at batch 32"], rows) +
                '<p class="tablecap">End to end, castle_image.jpg uploads, measured in turns</p>' +
                table(["", "runtime", "BATCH_SIZE", "threads", "saturated req/s", "p95 ms", "one request p50 ms"],
                      ends) + ratios + provenance(b.get("when"), b.get("machine"), self.bench_path, b.get("quick")))

    def gen_peers(self):
        """bench/peers/run.py's result: every system at every concurrency, one row each."""
        r = self.sources.get("peers")
        title = "Against the servers a user would pick instead (same model and runtime, same client)"
        if not r or not r.get("systems"):
            return not_measured(f"{title}: no result file.", "<code>make bench-peers</code>.")
        names = {"service": "this service (queue)", "flask": "Flask, model in the request", "litserve": "LitServe",
                 "ray": "Ray Serve"}
        rows = []
        for system, data in r["systems"].items():
            for point in data.get("points", []):
                lat = point.get("latency_ms", {})
                rows.append([esc(names.get(system, system)), str(point["concurrency"]),
                             f'{point["requests_per_s"]:.1f}', f'{lat.get("p50", 0):.0f}', f'{lat.get("p95", 0):.0f}',
                             f'{point.get("server_cpu_ms_per_request", 0):.1f}',
                             f'{point.get("cpu_cores", {}).get("others", 0):.2f}',
                             str(point.get("wrong_answers", 0))])
        machine = dict(r.get("machine") or {})
        return (f'<p class="tablecap">{esc(title)}</p>' +
                table(["system", "clients", "req/s", "p50 ms", "p95 ms", "server CPU ms/req", "others' cores",
                       "wrong"], rows) +
                provenance(r.get("date"), machine, r["_path"], r.get("quick")) +
                f'<p class="provenance">Model {esc(r.get("model"))}; load average at start '
                f'{esc(machine.get("load_average_at_start"))}; {r.get("wrong_answers_total", 0)} wrong answers, '
                f'{r.get("failed_requests_total", 0)} failed requests in all.</p>')

    def gen_capacity(self):
        """The capacity plan, computed from bench/results/latest.json: CPU per request of each tier at
        saturation, the model's own cost, Redis' bytes per request, and what one core or one link carries."""
        b = self.bench or {}
        sat, model, redis_ = b.get("saturation"), b.get("model"), b.get("redis")
        if not sat or not model or not redis_ or b.get("quick"):
            return not_measured("Capacity plan: no full benchmark run.", "<code>make bench</code>.")
        rps, cores = sat["requests_per_s"], sat["cpu_cores"]
        web = 1000 * cores.get("web-1", 0) / rps
        worker = 1000 * cores.get("worker-0", 0) / rps
        model_ms = model["batch_ms"] / model["batch_size"] * model.get("threads", 1)
        per_request_bytes = redis_["per_request_low_load"]["bytes"]
        queue_path = max(r["requests_per_s"] for r in b.get("queue_path", {}).get("runs", [{"requests_per_s": 0}]))
        rows = [
            ["web server (upload, decode + resize, job, wait, answer)", f"{web:.1f} ms CPU", f"{1000 / web:.0f} requests/s"],
            ["worker, the model (LiteRT)", f"{model_ms:.1f} ms CPU at most ({model.get('threads')} threads)",
             f"{1000 / model_ms:.0f} images/s"],
            ["worker, all of it (take, parse, model, results)", f"{worker:.1f} ms CPU", f"{1000 / worker:.0f} requests/s"],
            ["Redis, through its network", f"{per_request_bytes / 1000:.0f} KB",
             f"{125e6 / per_request_bytes:.0f} requests/s per Gbit/s"],
        ]
        text = (f'<p>So a machine that runs both tiers needs about {web + worker:.1f} ms of CPU per request: '
                f'{1000 / (web + worker):.0f} requests/s per core, with about '
                f'{round(100 * worker / (web + worker))}% of the cores for workers (<code>WORKERS</code> x '
                f'<code>MODEL_THREADS</code>) and the rest for web processes (<code>WEB_PROCESSES</code>, one core '
                f'each). One Redis is limited first by its network ({125e6 / per_request_bytes:.0f} requests/s on '
                f'1 Gbit/s, ten times that on 10 Gbit/s), then by its one core; on this machine the queue path alone '
                f'reached {queue_path:.0f} requests/s with the web server as the limit. Beyond that: smaller jobs '
                f'(a re-encoded 224x224 JPEG instead of raw pixels), or one deployment per model or tenant, each with '
                f'its own hash tag (<code>KEY_PREFIX={{imgq-a}}</code>) on its own Redis or Cluster slot.</p>')
        return (table(["cost per request", "measured at saturation", "one core (or link) carries"], rows) + text +
                provenance(b.get("when"), b.get("machine"), self.bench_path, b.get("quick")))

    def gen_page_screenshot(self):
        path = os.path.join(DOCS, "page.png")
        if not os.path.exists(path):
            return not_measured("No screenshot of the page.", "the browser test writes docs/page.png.")
        return (f'<figure class="diagram plot"><img src="{path}" alt="the page"/><figcaption>The page during a '
                f'burst of copies of castle_image.jpg on one EfficientNet-Lite0 worker (docs/page.png, taken by '
                f'docs/page_screenshot.py).</figcaption></figure>')

    # answers at a glance
    def gen_missed_goals(self):
        """Every goal of the benchmark that was missed, by how much, from the verdicts in the result file."""
        b = self.bench
        if not b or not b.get("verdicts"):
            return not_measured("No benchmark verdicts: goals met or missed are unknown.", "<code>make bench</code>.")
        verdicts = b["verdicts"]
        missed = {name: v for name, v in verdicts.items() if not v.get("met")}
        load = (b.get("machine") or {}).get("loadavg_before")
        head = (f'<p class="small"><strong>Benchmark goals:</strong> {len(verdicts) - len(missed)} of {len(verdicts)} '
                f'met in the run of {esc(b.get("when"))} (load average before it: {esc(load)}).')
        if not missed:
            return head + "</p>"
        items = "; ".join(f'{esc(name.replace("_", " "))}: measured {esc(v["value"])}, goal {esc(v["goal"])}'
                          for name, v in missed.items())
        return head + f' <span class="bad">Missed:</span> {items}. Section “Results” says what limits each.</p>'

    # section 4
    def gen_race(self):
        if self.failed("race", "The race demonstration"):
            return self.failed("race", "The race demonstration")
        race = self.race
        if not race:
            return not_measured("The race demonstration did not run in this build.",
                                "<code>python -m docs.race_demo</code> or <code>make docs</code>.")
        rows = []
        for r in race["rounds"]:
            c, o = r["course"], r["ours"]
            rows.append([f'{r["second_worker_offset_ms"]} ms', c["pushed"],
                         f'<span class="{"bad" if c["run_more_than_once"] else ""}">{c["run_more_than_once"]}</span>',
                         f'<span class="{"bad" if c["never_run"] else ""}">{c["never_run"]}</span>',
                         o["run_more_than_once"], o["never_run"]])
        t = race["total"]
        rows.append(["<strong>total</strong>", t["course"]["pushed"], f'<strong>{t["course"]["run_more_than_once"]}</strong>',
                     f'<strong>{t["course"]["never_run"]}</strong>', f'<strong>{t["ours"]["run_more_than_once"]}</strong>',
                     f'<strong>{t["ours"]["never_run"]}</strong>'])
        header = ["B starts after A", "jobs", "course: run twice", "course: never run", "ours: run twice",
                  "ours: never run"]
        return (table(header, rows) +
                f'<p class="provenance">Each round: {race["web_servers"]} pushing threads × {race["jobs_per_round"] // 2} '
                f'jobs, {esc(race["push_spacing_ms"])} ms apart; {race["workers"]} workers, BATCH_SIZE '
                f'{race["batch_size"]}, "predict" {esc(race["predict_ms"])} ms, the course\'s '
                f'SERVER_SLEEP {race["server_sleep_s"]} s. A job never run is a request whose web server polls '
                f'forever. {race["seconds"]} s in all.</p>' +
                provenance(race["when"], race["machine"], "docs/race_demo.py, run by docs/build.py"))

    def gen_tests(self):
        if self.failed("tests", "Running the tests"):
            return self.failed("tests", "Running the tests")
        t = self.tests
        if not t:
            return not_measured("The tests were not run in this build.", "<code>make docs</code> or "
                                "<code>make test</code>.")
        rows = []
        for test in EVIDENCE_TESTS:
            outcome = next((v for k, v in t["outcomes"].items() if k == test or k.startswith(test + "[")), None)
            variants = [v for k, v in t["outcomes"].items() if k == test or k.startswith(test + "[")]
            shown = ", ".join(sorted(set(variants))) if variants else "not run"
            cls = "good" if variants and set(variants) == {"PASSED"} else "bad"
            f, name = test.split("::")
            rows.append([f"<code>{esc(f.replace('tests/', ''))}</code>", f"<code>{esc(name)}</code>",
                         f'<span class="{cls}">{esc(shown)}{f" ×{len(variants)}" if len(variants) > 1 else ""}</span>'])
            del outcome
        return (table(["file", "test", "result"], rows, "tests") +
                f'<p class="provenance">pytest: {esc(t["summary"])}. ' +
                provenance(t["when"], t["machine"], "pytest run by docs/build.py")[len('<p class="provenance">'):])

    # section 5
    def _bench(self):
        if self.bench and self.bench.get("quick"):
            return self.bench, None
        if not self.bench:
            return None, not_measured(
                "<code>bench/results/latest.json</code> was not there when this PDF was built, so there are no "
                "measured latency and command figures for this section.",
                "<code>make bench</code> (a few minutes), then <code>make docs</code>.")
        return self.bench, None

    def gen_polling(self):
        b, missing = self._bench()
        if missing:
            return missing
        poll = b.get("polling")
        if not poll:
            return not_measured("The benchmark file has no 'polling' section.", "<code>make bench</code>.")
        n, p = poll["notifications"], poll["polling_0.25s"]
        names = sorted(set(n["commands_by_name"]) | set(p["commands_by_name"]))

        def row(label, d):
            lat = d["latency_ms"] or {}
            return [label, lat.get("p50", "–"), lat.get("p95", "–"), lat.get("max", "–"), d["commands_per_request"]]
        rows = [row("notifications, backup GETDEL every 1 s (ours)", n), row("polling every 0.25 s (course's way)", p)]
        by_name = table(["Redis command"] + [esc(k) for k in names],
                        [["notifications"] + [n["commands_by_name"].get(k, 0) for k in names],
                         ["polling 0.25 s"] + [p["commands_by_name"].get(k, 0) for k in names]], "small")
        idle = b.get("idle")
        idle_text = ""
        if idle:
            idle_text = (f'<p>With no traffic at all, one web server and one worker cost Redis '
                         f'<strong>{idle["commands_per_s"]}</strong> commands per second '
                         f'({idle["sent_by_clients_per_s"]} sent by clients, {idle["run_inside_scripts_per_s"]} run '
                         f'inside the heartbeat script): the heartbeat every {idle["heartbeat_interval_s"]:g} s and a '
                         f'blocking pop that returns every {idle["block_timeout_s"]:g} s. The course\'s idle worker '
                         f'sends an LRANGE every 0.25 s: 4 commands per second per worker, forever.</p>')
        nl, pl = (n["latency_ms"] or {}).get("p50"), (p["latency_ms"] or {}).get("p50")
        summary = ""
        if nl is not None and pl is not None:
            summary = (f'<p>Median latency: <strong>{nl} ms</strong> with notifications, <strong>{pl} ms</strong> '
                       f'polling every 0.25 s ({round(pl - nl, 1):+g} ms); Redis commands per request: '
                       f'<strong>{n["commands_per_request"]}</strong> against <strong>{p["commands_per_request"]}</strong>. '
                       f'Polling sends one more GETDEL for every 0.25 s a request waits, so the gap in commands grows '
                       f'with the time spent in the queue; at one request at a time that time is short.</p>')
        return (table(["mode (one request at a time)", "p50 ms", "p95 ms", "max ms", "Redis commands / request"],
                      rows) + summary + '<p class="tablecap">Redis commands per request, by name (INFO commandstats; '
                "commands run inside Lua scripts count too):</p>" + by_name + idle_text +
                provenance(b.get("when"), b.get("machine"), self.bench_path, b.get("quick")))

    def gen_bench_summary(self):
        b, missing = self._bench()
        if missing:
            return missing
        rows = []
        m = b.get("model")
        if m:
            rows.append(["model alone", f'{esc(m["model"])}: batch 1 {m["batch_1_ms"]} ms; batch {m["batch_size"]} '
                                        f'{m["batch_ms"]} ms = {m["images_per_s"]} images/s'])
        low = b.get("low_load")
        if low:
            rows.append(["one request at a time", f'p50 {low["latency_ms"]["p50"]} ms, p95 {low["latency_ms"]["p95"]} '
                                                  f'ms; overhead over the model {low["overhead_ms"]} ms'])
            bd = low.get("breakdown_p50") or {}
            rows.append(["where the time goes (p50 ms)", esc(", ".join(f"{k[:-3]} {v}" for k, v in bd.items()))])
        sat = b.get("saturation")
        if sat:
            rows.append(["saturation", f'{sat["requests_per_s"]} requests/s with {sat["clients"]} clients, mean batch '
                                       f'{sat["mean_batch"]}; {sat["ratio_to_model"]} of the model\'s own images/s'])
            if sat.get("cpu_ms_per_request") is not None:
                rows.append(["CPU per request at saturation", f'{sat["cpu_ms_per_request"]} ms (all processes) → at most '
                                                               f'{sat.get("cpu_bound_ceiling_rps")} requests/s on these cores'])
        red = b.get("redis")
        if red:
            rows.append(["Redis bytes per request", f'{red["per_request_low_load"]["bytes"]:,} (course: '
                                                    f'{red["course_bytes_per_request"]["bytes"]:,}, computed) = '
                                                    f'{red["fraction_of_course"]} of the course'])
        sc = b.get("scaling")
        if sc:
            rows.append(["scaling (stand-in, fixed latency)", esc(", ".join(
                f'{r["workers"]} workers {r["requests_per_s"]} req/s' for r in sc["runs"])) +
                f' (4/1 = {sc["four_over_one"]})'])
        qp = b.get("queue_path")
        if qp:
            rows.append(["queue path (instant stand-in)", esc(", ".join(
                f'{r["web_processes"]} web process(es) {r["requests_per_s"]} req/s' for r in qp["runs"]))])
        if b.get("quick"):
            rows.insert(0, ['<span class="bad">quick run</span>', "the file comes from <code>--quick</code>: "
                                                                   "stand-in model, a handful of requests"])
        return table(["figure", "measured"], rows, "kv") + provenance(b.get("when"), b.get("machine"), self.bench_path,
                                                                    b.get("quick"))

    # section 6
    def gen_stress(self):
        if self.failed("live", "The live run"):
            return self.failed("live", "The live run")
        live = self.live or {}
        runs = [r for r in live.get("stress") or [] if os.path.exists(r.get("report", ""))]
        if not runs:
            return not_measured("The stress test did not run in this build.", "<code>make docs</code>.")
        reports = []
        for r in runs:
            with open(r["report"]) as f:
                reports.append(json.load(f))

        def cells(fn):
            return [fn(rep) for rep in reports]
        lat = lambda key: cells(lambda rep: rep["latency_ok"][key])  # noqa: E731
        rows = [["command"] + [f'<code>{esc(r["command"].split(" --url")[0].replace("python ", ""))}</code>' for r in runs],
                ["sent"] + cells(lambda rep: rep["sent"]),
                ["succeeded"] + cells(lambda rep: rep["succeeded"]),
                ["failed"] + cells(lambda rep: f'{rep["failed"]}' + (f' {esc(rep["failed_by_kind"])}' if rep["failed"] else "")),
                ["elapsed, s"] + cells(lambda rep: rep["elapsed_s"]),
                ["throughput, succeeded requests/s"] + cells(lambda rep: rep["throughput_rps"]),
                ["latency p50, ms"] + lat("p50_ms"), ["latency p95, ms"] + lat("p95_ms"),
                ["latency p99, ms"] + lat("p99_ms"), ["latency max, ms"] + lat("max_ms")]
        first = runs[0]
        stdout = first["stdout"].rstrip().replace(BUILD + "/", "").replace(REPO + "/", "")
        out = [f'<p class="tablecap">What the stress test printed ({esc(first["name"])}):</p>'
               f'<pre class="console">$ {esc(first["command"])}\n{esc(stdout)}</pre>',
               table([""] + [esc(r["name"]) for r in runs], rows, "kv")]
        for r in runs:
            if os.path.exists(r["plot"]):
                out.append(f'<figure class="diagram plot"><img src="{r["plot"]}" alt="stress test plot"/>'
                           f'<figcaption>{esc(r["name"])}: the PNG written by <code>stress_test.py --plot</code> in this '
                           f'run, latency histogram (left) and latency by start time (right).</figcaption></figure>')
        setup = live.get("stress_setup", {})
        out.append(provenance(live["when"], live["machine"],
                              f'stress_test.py against {setup.get("web_processes", 1)} gunicorn web process and '
                              f'{setup.get("workers", 1)} {setup.get("model", "?")} worker (BATCH_SIZE 32), started by '
                              f'docs/build.py; client and service share the machine' +
                              (f' (load average {live["loadavg_before"][0]} before the live run, '
                               f'{live["loadavg_after"][0]} after)' if live.get("loadavg_after") else "")))
        return "\n".join(out)

    # section 7
    def gen_trace(self):
        if self.failed("live", "The live run"):
            return self.failed("live", "The live run")
        tr = (self.live or {}).get("trace")
        if not tr:
            return not_measured("No request was traced in this build.", "<code>make docs</code> (without --fast).")
        web = "\n".join(esc(line) for line in tr["web"])
        worker = "\n".join(esc(line) for line in tr["worker"])
        # The request's id is its trace id: the web's lines carry it as id=, the worker's as trace= (beside the
        # job's own id).
        hl = lambda text: text.replace(tr["id"], f'<span class="hit">{tr["id"]}</span>')  # noqa: E731
        return (f'<p class="tablecap">Web server log (gunicorn process), every line with <code>id={esc(tr["id"])}</code>:</p>'
                f'<pre class="log">{hl(web)}</pre>'
                f'<p class="tablecap">Worker log, every line with the same id (as <code>trace=</code>):</p><pre class="log">{hl(worker)}</pre>' +
                provenance(self.live["when"], self.live["machine"], f"grep id={tr['id']} over the logs of the live run"))

    # section 7
    def gen_log_calls(self):
        """Every log() call in the service's own files (every .py at the top of the repository), found with
        ast: action, level, fields, file:line."""
        rows = []
        for relpath in sorted(f for f in os.listdir(REPO) if f.endswith(".py")):
            with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "log" \
                        and node.args and isinstance(node.args[0], ast.Constant):
                    level = next((k.value.value for k in node.keywords if k.arg == "level"
                                  and isinstance(k.value, ast.Constant)), "INFO")
                    fields = ", ".join(k.arg for k in node.keywords if k.arg and k.arg != "level")
                    rows.append((relpath, node.lineno, node.args[0].value, level, fields))
        rows.sort()
        return table(["action", "level", "fields", "where"],
                     [[f"<code>{esc(a)}</code>", esc(lv), f"<code>{esc(fl)}</code>", f"{esc(r)}:{n}"]
                      for r, n, a, lv, fl in rows], "small")

    # appendix
    def gen_settings(self):
        """Every setting: its group and default from settings.py (read with ast, wherever the _str/_int/...
        call sits), its meaning from the README's configuration table (the one place it is written)."""
        with open(os.path.join(REPO, "imgq", "settings.py"), encoding="utf-8") as f:
            source = f.read()
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        meanings = {}
        for line in readme.split("## Configuration", 1)[-1].split("\n## ", 1)[0].splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3 and cells[0].startswith("`"):
                for name in re.findall(r"`([A-Z_0-9]+)`", cells[0]):
                    meanings[name] = cells[-1]
        lines = source.splitlines()
        groups = [(i + 1, line.strip().lstrip("#").strip().strip("- ")) for i, line in enumerate(lines)
                  if line.strip().startswith("# ---")]
        rows = []
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("_str", "_int", "_float", "_bool") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                continue
            name = node.args[0].value
            default = node.args[1] if len(node.args) > 1 else None
            try:
                value = ast.literal_eval(default)
                shown = ("1" if value else "0") if node.func.id == "_bool" else (str(value) if value != "" else "(empty)")
            except (ValueError, TypeError, SyntaxError):  # computed (a path under the home folder ...): our own file
                value = eval(compile(ast.Expression(default), "settings.py", "eval"), {"os": os})  # noqa: S307
                shown = str(value).replace(os.path.expanduser("~"), "~")
            group = max(((line, g) for line, g in groups if line < node.lineno), default=(0, ""))[1]
            rows.append((node.lineno, group, name, shown))
        rows.sort()
        body, last = [], None
        for _, group, name, shown in rows:
            if group != last:
                body.append(f'<tr class="group"><td colspan="3">{esc(group)}</td></tr>')
                last = group
            meaning = _md_inline(meanings.get(name, ""))
            body.append(f"<tr><td><code>{esc(name)}</code></td><td><code>{esc(shown)}</code></td><td>{meaning}</td></tr>")
        return ('<table class="small settings"><thead><tr><th>variable</th><th>default</th>'
                '<th>meaning (the README\'s configuration table)</th></tr></thead><tbody>' + "".join(body) +
                "</tbody></table>")

    def gen_build_info(self):
        m = self.meta
        return (f'<table class="kv"><tbody>'
                f'<tr><td>built</td><td>{esc(m["when"])}</td></tr>'
                f'<tr><td>source commit</td><td><code>{esc(m["commit"])}</code></td></tr>'
                f'<tr><td>machine</td><td>{esc(m["machine"]["cpus"])} CPUs, {esc(m["machine"]["cpu"])}, '
                f'{esc(m["machine"]["memory"])}, {esc(m["machine"]["platform"])}, Python {esc(m["machine"]["python"])}</td></tr>'
                f'<tr><td>benchmark file</td><td>{esc(self.bench_path) + " (" + esc(self.bench.get("when")) + ")" if self.bench else "not present: sections 5 and part of 1 say “not measured yet”"}</td></tr>'
                f'</tbody></table>')

