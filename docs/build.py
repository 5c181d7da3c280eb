"""`make docs`: build docs/writeup.pdf from docs/writeup.md, the real source files and real runs.

    python docs/build.py                 # everything (a few minutes): live run, tests, race demo, PDF
    python docs/build.py --fast          # no live service, no tests, no race demo: reuse docs/build/*.json
    python docs/build.py --bench FILE    # another benchmark result file (default bench/results/latest.json)

Steps:
  1. diagrams      docs/diagrams.py → docs/build/figures/*.svg (matplotlib, from the descriptions there)
  2. live run      a real redis-server + gunicorn web server + one worker with the real model: castle_image.jpg
                   through simple_request.py (section 3), its request id grepped out of both logs (section 7),
                   then stress_test.py twice, with the course's settings and saturating (section 6)
                   → docs/build/live.json, docs/build/stress_*.json and .png
  3. race demo     docs/race_demo.py: the course's LRANGE/LTRIM loop and our queue, two web servers and two
                   workers each (section 4) → docs/build/race.json
  4. tests         the service tests that show each fix, run with pytest → docs/build/tests.json
  5. results       bench/results/latest.json (make bench), read if present, else "not measured yet"
  6. Markdown      docs/writeup.md with its directives resolved → HTML → PDF (WeasyPrint, docs/style.css)

Directives in writeup.md (each on its own line):
  {{code: FILE::NAME}}                     a function, class, method (Class.name) or constant, by ast
  {{code: FILE::NAME | from "A" to "B"}}   only the lines from the first containing A to the next containing B
  {{doc: FILE}}                            the module docstring of FILE
  {{figure: NAME | CAPTION}}               a diagram from docs/diagrams.py
  {{gen: NAME}}                            a table or text made from a result file (functions gen_NAME below)
  <<<course: CAPTION  ...  >>>             the course's code, quoted (not ours: labelled as the course's)
Numbers are never typed into writeup.md: they come from the result files through {{gen: ...}}, and a
result that is missing prints a "not measured yet" box instead.
"""
import argparse
import ast
import datetime
import html
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
BUILD = os.path.join(DOCS, "build")
CASTLE = os.path.normpath(os.path.join(REPO, "..", "shared", "castle_image.jpg"))
BENCH = os.path.join(REPO, "bench", "results", "latest.json")
sys.path.insert(0, REPO)
sys.path.insert(0, DOCS)


def say(message):
    print(f"[docs] {message}", file=sys.stderr, flush=True)


# --- system check ----------------------------------------------------------------------------------

PANGO_PACKAGES = ["libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz0b", "fonts-dejavu-core"]


def weasyprint_module():
    """Import WeasyPrint; if its system libraries (Pango) are missing, install them with apt-get when root,
    else stop with the command to run."""
    try:
        import weasyprint
        return weasyprint
    except OSError as exc:
        problem = str(exc).splitlines()[0]
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PANGO_PACKAGES]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"WeasyPrint cannot load its system libraries ({problem}); installing {' '.join(PANGO_PACKAGES)}")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(command, check=True)
        import weasyprint
        return weasyprint
    sys.exit(f"docs: WeasyPrint needs Pango ({problem}). Install it with: sudo {' '.join(command)}")


# --- machine and run metadata ----------------------------------------------------------------------

def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory": memory, "platform": platform.platform(),
            "python": platform.python_version()}


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


# --- step 2: a live run of the real service --------------------------------------------------------

# The course's settings, then as fast as the clients can send: (name, stress_test.py arguments).
STRESS_RUNS = [("course settings", ["-n", "500", "--spacing", "0.05"]),
               ("saturating", ["-n", "400", "--spacing", "0", "--concurrency", "64"])]


def stress_run(name, extra, url, castle_found):
    slug = name.replace(" ", "_")
    report, plot = os.path.join(BUILD, f"stress_{slug}.json"), os.path.join(BUILD, f"stress_{slug}.png")
    args = [sys.executable, "stress_test.py", *extra, "--url", url + "/predict", "--json", report, "--plot", plot,
            "--no-progress"]
    if castle_found:
        args += ["--image", CASTLE]
    say(f"live run: stress test, {name}: {' '.join(extra)}")
    started = time.time()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    shown = " ".join(["python"] + args[1:]).replace(BUILD + "/", "").replace(REPO + "/", "")
    return {"name": name, "command": shown.replace(CASTLE, "castle_image.jpg"), "returncode": done.returncode,
            "stdout": done.stdout, "stderr": done.stderr[-1500:], "report": report, "plot": plot,
            "seconds": round(time.time() - started, 1)}


def live_run(stress=True):
    """Real processes: castle through simple_request.py for every model whose weights are here, one request
    traced through the logs, and the stress test. Returns what the write-up shows."""
    from bench.stack import Stack
    import models

    out = {"when": now_utc(), "machine": machine(), "castle_found": os.path.exists(CASTLE), "castle": [],
           "resnet50": None, "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    path, why = models.find_resnet50_weights()  # never downloads
    out["resnet50"] = {"available": path is not None, "why_not": why, "weights": path}
    runs = ["efficientnet_lite0"] + (["resnet50"] if path else [])
    for model in runs:
        with Stack(MODEL=model, LOG_LEVEL="INFO") as stack:
            say(f"live run: starting redis, gunicorn and a {model} worker")
            worker = stack.start_worker(timeout=300)
            url, web = stack.start_web()
            entry = {"model_requested": model}
            if out["castle_found"]:
                done = subprocess.run([sys.executable, "simple_request.py", CASTLE, "--url", url + "/predict"],
                                      cwd=REPO, capture_output=True, text=True, timeout=120)
                entry.update(command=f"python simple_request.py castle_image.jpg --url {url}/predict",
                             returncode=done.returncode, stdout=done.stdout, stderr=done.stderr[-2000:])
                web_log = web.log_text()
                m = re.findall(r"request\.done id=(\w+) model=(\S+)", web_log)
                if m:
                    job_id, served_by = m[-1]
                    entry.update(id=job_id, model=served_by)
                    if model == "efficientnet_lite0":  # one trace is enough
                        out["trace"] = {
                            "id": job_id,
                            "web": [line for line in web_log.splitlines() if f"id={job_id}" in line],
                            "worker": [line for line in worker.log_text().splitlines() if f"id={job_id}" in line],
                            "worker_ready": next((line for line in worker.log_text().splitlines()
                                                  if "worker.ready" in line), None)}
                out["castle"].append(entry)
            if model == "efficientnet_lite0" and stress:
                out["stress"] = [stress_run(name, extra, url, out["castle_found"]) for name, extra in STRESS_RUNS]
                out["stress_setup"] = {"model": model, "web_processes": 1, "workers": 1}
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


# --- step 4: the tests that show the fixes ---------------------------------------------------------

EVIDENCE_TESTS = [
    "tests/test_service.py::test_two_web_servers_two_workers_200_concurrent_requests",
    "tests/test_reliability.py::test_sigkill_mid_batch_loses_nothing_and_answers_nothing_twice",
    "tests/test_reliability.py::test_all_workers_dead_504_then_recovery_and_abandoned_jobs_dropped",
    "tests/test_service.py::test_no_worker_means_504_after_request_timeout_and_nothing_left",
    "tests/test_reliability.py::test_junk_on_the_queue_is_answered_or_dropped_and_the_worker_lives",
    "tests/test_service.py::test_requests_complete_by_polling_without_notifications",
    "tests/test_reliability.py::test_redis_down_for_10s_under_load",
]


def run_tests():
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *EVIDENCE_TESTS],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    outcomes = {}
    for line in done.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED)\s+(\S+)", line)
        if m:
            outcomes[m.group(2)] = m.group(1)
    summary = next((line.strip("= ") for line in reversed(done.stdout.splitlines()) if " in " in line), "")
    return {"when": now_utc(), "machine": machine(), "returncode": done.returncode, "outcomes": outcomes,
            "summary": summary, "seconds": round(time.time() - started, 1)}


# --- code extraction -------------------------------------------------------------------------------

def find_node(tree, dotted):
    body, node = tree.body, None
    for part in dotted.split("."):
        node = None
        for candidate in body:
            if isinstance(candidate, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and candidate.name == part:
                node = candidate
            elif isinstance(candidate, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part
                                                           for t in candidate.targets):
                node = candidate
            elif isinstance(candidate, ast.AnnAssign) and isinstance(candidate.target, ast.Name) \
                    and candidate.target.id == part:
                node = candidate
            if node is not None:
                break
        if node is None:
            raise SystemExit(f"docs: {dotted!r} not found (writeup.md names code that is no longer there)")
        body = getattr(node, "body", [])
    return node


def extract(relpath, dotted, start_text=None, end_text=None):
    """(first line number, lines) of NAME in FILE, with the comment lines right above it."""
    path = os.path.join(REPO, relpath)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    node = find_node(ast.parse(source), dotted)
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    # Comments right above belong to it; a "# --- section ---" ruler does not.
    while first > 1 and lines[first - 2].strip().startswith("#") and not lines[first - 2].strip().startswith("# ---"):
        first -= 1
    last = node.end_lineno
    if start_text:
        for i in range(first, last + 1):
            if start_text in lines[i - 1]:
                first = i
                break
        else:
            raise SystemExit(f"docs: {start_text!r} not found in {relpath}::{dotted}")
    if end_text:
        for i in range(first, last + 1):
            if end_text in lines[i - 1]:
                last = i
                break
        else:
            raise SystemExit(f"docs: {end_text!r} not found in {relpath}::{dotted} after {start_text!r}")
    return first, lines[first - 1:last]


def dedent(lines):
    widths = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(widths) if widths else 0
    return [line[cut:] for line in lines]


def highlight(code, first_line=None):
    from pygments import highlight as pyg
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    formatter = HtmlFormatter(nowrap=True)
    body = pyg(code, PythonLexer(), formatter).rstrip("\n").split("\n")
    if first_line is None:
        return "".join(f'<span class="line"><span class="ln"></span>{line}</span>' for line in body)
    width = len(str(first_line + len(body)))
    return "".join(f'<span class="line"><span class="ln">{first_line + i:>{width}}</span>{line}</span>'
                   for i, line in enumerate(body))


def highlight_lua_constant(lines, first):
    """A Python constant holding a Lua script: Python around it, Lua inside the triple quotes."""
    from pygments import highlight as pyg
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import LuaLexer, PythonLexer
    opening = next(i for i, line in enumerate(lines) if '"""' in line)
    closing = max(i for i, line in enumerate(lines) if '"""' in line)
    parts = [(PythonLexer(), lines[:opening + 1]), (LuaLexer(), lines[opening + 1:closing]),
             (PythonLexer(), lines[closing:])]
    out = []
    for lexer, chunk in parts:
        if chunk:
            out += pyg("\n".join(chunk), lexer, HtmlFormatter(nowrap=True)).rstrip("\n").split("\n")
    width = len(str(first + len(out)))
    return "".join(f'<span class="line"><span class="ln">{first + i:>{width}}</span>{line}</span>'
                   for i, line in enumerate(out))


def code_block(relpath, dotted, start_text=None, end_text=None):
    first, lines = extract(relpath, dotted, start_text, end_text)
    lines = dedent(lines)
    last = first + len(lines) - 1
    if sum('"""' in line for line in lines) >= 2 and any("redis.call" in line for line in lines) \
            and not any(line.lstrip().startswith("def ") for line in lines):
        body = highlight_lua_constant(lines, first)
        caption = (f'<span class="file">{html.escape(relpath)}</span>, lines {first}–{last}: '
                   f'<code>{html.escape(dotted)}</code> (a Lua script run by Redis)')
        return f'<figure class="code ours"><figcaption>{caption}</figcaption><pre class="highlight">{body}</pre></figure>'

    what = dotted + (" (excerpt)" if start_text or end_text else "")
    where = f"line {first}" if first == last else f"lines {first}–{last}"
    caption = f'<span class="file">{html.escape(relpath)}</span>, {where}: <code>{html.escape(what)}</code>'
    return (f'<figure class="code ours"><figcaption>{caption}</figcaption>'
            f'<pre class="highlight">{highlight(chr(10).join(lines), first)}</pre></figure>')


def doc_block(relpath):
    with open(os.path.join(REPO, relpath), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()), clean=True) or ""
    return (f'<figure class="code ours doc"><figcaption><span class="file">{html.escape(relpath)}</span>, '
            f'module docstring</figcaption><pre class="plain">{html.escape(doc)}</pre></figure>')


def course_block(caption, code):
    return (f'<figure class="code course"><figcaption><span class="tag">course code, quoted</span> '
            f'{html.escape(caption)}</figcaption><pre class="highlight">{highlight(code)}</pre></figure>')


def figure_block(name, caption, figures):
    return (f'<figure class="diagram"><img src="{figures[name]}" alt="{html.escape(name)}"/>'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


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


def table(header, rows, cls=""):
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Results:
    def __init__(self, live, race, tests, bench, bench_path, meta):
        self.errors = {name: value["error"] for name, value in (("live", live), ("race", race), ("tests", tests))
                       if isinstance(value, dict) and "error" in value}
        live, race, tests = [None if isinstance(v, dict) and "error" in v else v for v in (live, race, tests)]
        self.live, self.race, self.tests, self.bench, self.bench_path, self.meta = \
            live, race, tests, bench, bench_path, meta

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
        import job as jobs
        pixels = np.zeros((224, 224, 3), dtype=np.uint8)
        ours = jobs.make_job(jobs.new_id(), pixels, 30.0)
        course_image = base64.b64encode(np.zeros((1, 224, 224, 3), dtype=np.float32).tobytes()).decode()
        course = json.dumps({"id": "3f2c1d4e-0000-4000-8000-000000000000", "image": course_image})
        rows = [["course", "<code>image_queue</code>", "float32 (1, 224, 224, 3)", f"{224 * 224 * 3 * 4:,}",
                 f"{len(course):,}"],
                ["ours", "<code>imgq:queue</code>", "uint8 (224, 224, 3)", f"{224 * 224 * 3:,}", f"{len(ours):,}"]]
        return (table(["design", "key", "pixels", "raw bytes", "JSON element on the list, bytes"], rows) +
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

    # section 4
    def gen_race(self):
        if self.failed("race", "The race demonstration"):
            return self.failed("race", "The race demonstration")
        race = self.race
        if not race:
            return not_measured("The race demonstration did not run in this build.",
                                "<code>python docs/race_demo.py</code> or <code>make docs</code>.")
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
        hl = lambda text: text.replace(f"id={tr['id']}", f'<span class="hit">id={tr["id"]}</span>')  # noqa: E731
        return (f'<p class="tablecap">Web server log (gunicorn process), every line with <code>id={esc(tr["id"])}</code>:</p>'
                f'<pre class="log">{hl(web)}</pre>'
                f'<p class="tablecap">Worker log, every line with the same id:</p><pre class="log">{hl(worker)}</pre>' +
                provenance(self.live["when"], self.live["machine"], f"grep id={tr['id']} over the logs of the live run"))

    # section 7
    def gen_log_calls(self):
        """Every log() call in the service's own files, found with ast: action, level, fields, file:line."""
        rows = []
        for relpath in ("run_web_server.py", "run_model_server.py", "results.py", "models.py", "launcher.py"):
            path = os.path.join(REPO, relpath)
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8") as f:
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

    # how to run
    def gen_settings(self):
        """Name, default and comment of every setting, read from settings.py with ast (never retyped here)."""
        path = os.path.join(REPO, "settings.py")
        with open(path, encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()
        rows, group = [], None
        for node in ast.parse(source).body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name) and node.value.func.id in ("_str", "_int", "_float", "_bool")):
                continue
            comments, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                text = lines[i].strip().lstrip("#").strip()
                if text.startswith("---"):
                    group = text.strip("- ")
                else:
                    comments.insert(0, text)
                i -= 1
            tail = lines[node.lineno - 1].split("#", 1)
            if len(tail) > 1:
                comments.append(tail[1].strip())
            name = node.value.args[0].value
            default = ast.unparse(node.value.args[1])
            if node.value.func.id == "_bool":
                default = "1" if default == "True" else "0"
            default = default.strip("'\"") or "(empty)"
            rows.append((group, [f"<code>{esc(name)}</code>", f"<code>{esc(default)}</code>", esc(" ".join(comments))]))
        body, last = [], None
        for group, cells in rows:
            if group != last:
                body.append(f'<tr class="group"><td colspan="3">{esc(group or "")}</td></tr>')
                last = group
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return ('<table class="small settings"><thead><tr><th>variable</th><th>default</th>'
                '<th>meaning (the comment above it in settings.py)</th></tr></thead><tbody>' + "".join(body) +
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


# --- Markdown → HTML → PDF -------------------------------------------------------------------------

DIRECTIVE = re.compile(r"^\{\{\s*(\w+)\s*:\s*(.*?)\s*\}\}\s*$")


def resolve(text, results, figures):
    """Replace directives and course blocks with placeholders; return (markdown, {placeholder: html})."""
    blocks, out, lines, i = {}, [], text.splitlines(), 0

    def stash(fragment):
        key = f"DOCSBLOCK{len(blocks):04d}X"
        blocks[key] = fragment
        out.extend(["", key, ""])

    while i < len(lines):
        line = lines[i]
        if line.startswith("<<<course:"):
            caption = line[len("<<<course:"):].strip()
            j = i + 1
            while lines[j].strip() != ">>>":
                j += 1
            stash(course_block(caption, "\n".join(lines[i + 1:j])))
            i = j + 1
            continue
        m = DIRECTIVE.match(line)
        if m:
            kind, arg = m.groups()
            if kind == "code":
                target, _, opts = arg.partition("|")
                relpath, _, dotted = target.strip().partition("::")
                start = re.search(r'from\s+"([^"]+)"', opts)
                end = re.search(r'to\s+"([^"]+)"', opts)
                stash(code_block(relpath, dotted, start and start.group(1), end and end.group(1)))
            elif kind == "doc":
                stash(doc_block(arg))
            elif kind == "figure":
                name, _, caption = arg.partition("|")
                stash(figure_block(name.strip(), caption.strip(), figures))
            elif kind == "gen":
                stash(getattr(results, f"gen_{arg}")())
            else:
                raise SystemExit(f"docs: unknown directive {kind!r}")
        else:
            out.append(line)
        i += 1
    return "\n".join(out), blocks


def to_html(markdown_text, blocks, title):
    import markdown
    md = markdown.Markdown(extensions=["tables", "fenced_code", "codehilite", "toc", "attr_list", "sane_lists",
                                       "md_in_html"],
                           extension_configs={"codehilite": {"guess_lang": False, "css_class": "highlight"},
                                              "toc": {"toc_depth": "2-2", "title": ""}})
    body = md.convert(markdown_text)
    for key, fragment in blocks.items():
        body = body.replace(f"<p>{key}</p>", fragment).replace(key, fragment)
    from pygments.formatters import HtmlFormatter
    pygments_css = HtmlFormatter(style="friendly").get_style_defs(".highlight")
    with open(os.path.join(DOCS, "style.css"), encoding="utf-8") as f:
        css = f.read()
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{pygments_css}\n{css}</style></head><body>{body}</body></html>')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="reuse docs/build/{live,race,tests}.json; run nothing")
    p.add_argument("--no-tests", action="store_true", help="do not run the evidence tests")
    p.add_argument("--no-stress", action="store_true", help="skip the stress test runs in the live run")
    p.add_argument("--bench", default=BENCH, help="benchmark result file (default: bench/results/latest.json)")
    p.add_argument("--out", default=os.path.join(DOCS, "writeup.pdf"))
    args = p.parse_args(argv)
    started = time.time()
    weasyprint = weasyprint_module()
    os.makedirs(BUILD, exist_ok=True)

    import diagrams
    say("diagrams")
    figures = diagrams.build_all(os.path.join(BUILD, "figures"))

    def step(name, fn, skip):
        path = os.path.join(BUILD, f"{name}.json")
        if not skip:
            say(f"{name} ...")
            t = time.time()
            try:
                value = fn()
            except Exception as exc:  # the write-up says what failed instead of showing stale or no numbers
                say(f"{name} FAILED: {exc!r}")
                value = {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}", "when": now_utc(), "machine": machine()}
            with open(path, "w") as f:
                json.dump(value, f, indent=1)
            say(f"{name}: {time.time() - t:.0f} s")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return None

    live = step("live", lambda: live_run(not args.no_stress), args.fast)

    def race():
        done = subprocess.run([sys.executable, os.path.join(DOCS, "race_demo.py")], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"docs: race_demo.py failed:\n{done.stderr[-2000:]}")
        return dict(json.loads(done.stdout), when=now_utc(), machine=machine())
    race_result = step("race", race, args.fast)
    tests = step("tests", run_tests, args.fast or args.no_tests)

    bench = None
    if os.path.exists(args.bench):
        with open(args.bench) as f:
            bench = json.load(f)
    meta = {"when": now_utc(), "commit": git_commit(), "machine": machine()}
    results = Results(live, race_result, tests, bench, os.path.relpath(os.path.abspath(args.bench), REPO), meta)

    with open(os.path.join(DOCS, "writeup.md"), encoding="utf-8") as f:
        source = f.read()
    markdown_text, blocks = resolve(source, results, figures)
    page = to_html(markdown_text, blocks, "Keras + Redis + Flask image classification queue")
    html_path = os.path.join(BUILD, "writeup.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    say("PDF (WeasyPrint)")
    weasyprint.HTML(string=page, base_url=BUILD).write_pdf(args.out)
    say(f"{os.path.relpath(args.out, REPO)} written in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
