"""The write-up's measured figures: plots drawn from result files (docs/diagrams.py draws the schematic ones).

Each function takes the parsed result (a dict) and an output path, draws one figure at its printed size and
returns the path, or None when the result it needs is missing (the write-up then says "not measured yet").

  notify_cdf       latency CDFs: notifications vs polling 0.25 s and 1 s (bench/results/notifications.json)
  notify_sweep     Redis commands per request and per second against the time a request waits
  lost_timeline    a lost notification: kill window, when each result was SET, when each request was answered
  race_bars        the course's LRANGE/LTRIM loop against ours: jobs run twice and never run (docs/race_demo.py)
  kill_timeline    the kill-a-worker test, drawn from its own logs (tests/test_reliability.py)
"""
import datetime
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from docs.diagrams import C, TEXT, WIDTH, save  # (one palette and size for every figure)

MODE_COLOURS = {"notifications": C["web"][1], "notifications, 1 s backup": C["worker"][1],
                "polling 0.25 s": C["redis"][1], "polling 1 s": C["note"][1]}


def _axes(height, cols=1):
    fig, axes = plt.subplots(1, cols, figsize=(WIDTH, height))
    for ax in (axes if cols > 1 else [axes]):
        ax.tick_params(labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def notify_cdf(notify, path):
    modes = ((notify or {}).get("cdf") or {}).get("modes")
    if not modes:
        return None
    fig, ax = _axes(2.5)
    for mode, m in modes.items():
        colour = MODE_COLOURS.get(mode, TEXT)
        for i, rep in enumerate(m["repeats"]):
            values = rep["sorted_ms"]
            if not values:
                continue
            ys = [(k + 1) / len(values) for k in range(len(values))]
            n = sum(len(r["sorted_ms"]) for r in m["repeats"])
            ax.plot(values, ys, color=colour, lw=1.1, alpha=0.85,
                    label=f"{mode} (n = {n}, {len(m['repeats'])} repeats)" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, ms (log scale)", fontsize=7.5)
    ax.set_ylabel("fraction of requests", fontsize=7.5)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    save(fig, path)
    return path


def notify_sweep(notify, path):
    rows = ((notify or {}).get("sweep") or {}).get("rows")
    if not rows:
        return None
    fig, (left, right) = _axes(2.5, cols=2)
    for mode in MODE_COLOURS:
        mine = sorted((r for r in rows if r["mode"] == mode and r["wait_ms_p50"]), key=lambda r: r["wait_ms_p50"])
        if not mine:
            continue
        waits = [r["wait_ms_p50"] / 1000 for r in mine]
        left.plot(waits, [r["commands_per_request"] for r in mine], "o-", ms=3, lw=1.1,
                  color=MODE_COLOURS[mode], label=mode)
        right.plot(waits, [r["commands_per_s"] for r in mine], "o-", ms=3, lw=1.1, color=MODE_COLOURS[mode],
                   label=mode)
    left.set_xlabel("time a request waits (p50), s", fontsize=7.5)
    left.set_ylabel("Redis commands per request", fontsize=7.5)
    right.set_xlabel("time a request waits (p50), s", fontsize=7.5)
    right.set_ylabel("Redis commands per second", fontsize=7.5)
    for ax in (left, right):
        ax.grid(alpha=0.3, lw=0.5)
    left.legend(fontsize=6.8, frameon=False)
    fig.tight_layout()
    save(fig, path)
    return path


def lost_timeline(notify, path):
    lost = (notify or {}).get("lost")
    if not lost or not lost.get("requests"):
        return None
    rows = sorted(lost["requests"], key=lambda r: r["level"])
    fig, ax = _axes(0.45 + 0.22 * len(rows))
    a, b = lost.get("unsubscribed_s") or lost.get("kill_window_s") or (None, None)
    if a is not None and b is not None:
        ax.axvspan(a, b, color=C["bad"][0], zorder=0)
        ax.text((a + b) / 2, len(rows) - 0.35, f"no listener subscribed (its connection killed {lost['kills']} times)",
                ha="center", fontsize=6.5, color=C["bad"][1])
    for i, r in enumerate(rows):
        ax.plot([r["sent_s"], r["answered_s"]], [i, i], color=C["web"][1], lw=1.4)
        if r.get("result_set_s") is not None:
            ax.plot(r["result_set_s"], i, "o", ms=4, color=C["worker"][1])
        ax.plot(r["answered_s"], i, "|", ms=8, mew=1.6, color=TEXT)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"request {i + 1}" for i in range(len(rows))], fontsize=6.5)
    ax.set_xlabel("seconds from the first request  (line: waiting;  ●: worker SET its result;  |: answered)",
                  fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    fig.tight_layout()
    save(fig, path)
    return path


def race_bars(race, path):
    total = (race or {}).get("total")
    if not total:
        return None
    fig, ax = _axes(1.7)
    labels = ["run more than once", "never run (request waits forever)"]
    keys = ["run_more_than_once", "never_run"]
    y = range(len(keys))
    course = [total["course"][k] for k in keys]
    ours = [total["ours"][k] for k in keys]
    ax.barh([v + 0.18 for v in y], course, height=0.34, color=C["bad"][1], label="course's LRANGE + LTRIM loop")
    ax.barh([v - 0.18 for v in y], ours, height=0.34, color=C["good"][1], label="ours (BLMOVE + Lua take)")
    for v, (c, o) in enumerate(zip(course, ours)):
        ax.text(c, v + 0.18, f" {c}", va="center", fontsize=7)
        ax.text(o, v - 0.18, f" {o}", va="center", fontsize=7)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(f"jobs, out of {total['course']['pushed']} pushed to each design", fontsize=7.5)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    save(fig, path)
    return path


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")


def _when(line):
    m = _STAMP.match(line)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def kill_timeline(evidence, path):
    """evidence: {"victim": log text, "survivor": log text, "web": log text, "killed_at": unix time}."""
    if not evidence or not evidence.get("killed_at"):
        return None
    t0 = evidence["started_at"]
    fig, ax = _axes(2.2)
    lanes = [("victim", "worker A (killed)", C["bad"][1]), ("survivor", "worker B", C["worker"][1])]
    for row, (name, label, colour) in enumerate(lanes):
        times = [_when(line) - t0 for line in evidence[name].splitlines() if "job.done" in line and _when(line)]
        ax.plot(times, [row + 1] * len(times), "|", ms=7, color=colour)
        ax.text(-0.05, row + 1, label, ha="right", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        for line in evidence[name].splitlines():
            if "worker.recovered" in line and _when(line):
                t = _when(line) - t0
                n = re.search(r"requeued=(\d+)", line)
                ax.annotate(f"recovers A's {n.group(1) if n else '?'} in-flight jobs", (t, row + 1),
                            (t, row + 1.38), fontsize=6.5, ha="center", color=colour,
                            arrowprops=dict(arrowstyle="-|>", color=colour, lw=0.8))
    # The test's own requests: /predict answered 200 after it started (not a readiness probe or a warm-up).
    answered = sorted(t for t in (_when(line) - t0 for line in evidence["web"].splitlines()
                                  if "request.done" in line and "path=/predict" in line and "status=200" in line
                                  and _when(line)) if t >= 0)
    ax.plot(answered, [2.9 * (i + 1) / max(len(answered), 1) for i in range(len(answered))], color=C["web"][1],
            lw=1.2)
    ax.text(answered[-1] if answered else 0, 2.95, f"  /predict answered 200 ({len(answered)})", fontsize=6.5,
            color=C["web"][1], va="bottom", ha="right")
    k = evidence["killed_at"] - t0
    ax.axvline(k, color=C["bad"][1], lw=1, ls="--")
    ax.text(k, 3.1, " kill -9 of worker A", color=C["bad"][1], fontsize=6.5)
    ax.set_yticks([])
    ax.set_ylim(0.2, 3.3)
    ax.set_xlabel("seconds from the first request  (| one job answered by that worker)", fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return path
