"""The write-up's diagrams, drawn with matplotlib from the small descriptions in this file.

Each diagram is data (boxes, lanes, messages) plus a few drawing helpers, rendered to SVG (text as paths,
so the PDF looks the same everywhere). Figures are drawn at their printed size (inches, 1 unit = 1 inch),
so 8-9 pt here is 8-9 pt on the page.

    python -m docs.diagrams OUTDIR      # writes every diagram as OUTDIR/NAME.svg
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 8, "svg.fonttype": "path",
                     "svg.hashsalt": "writeup"})  # stable ids: the same input gives the same SVG

# One palette for every diagram: what each colour means is the same everywhere.
C = {
    "client": ("#eef2f7", "#5b6b7f"),
    "web": ("#e3eefc", "#2f6db5"),
    "redis": ("#fdecea", "#c0392b"),
    "worker": ("#e6f4ea", "#2e7d32"),
    "note": ("#fff8e1", "#b58900"),
    "bad": ("#fde2e1", "#c0392b"),
    "good": ("#e6f4ea", "#2e7d32"),
    "plain": ("#ffffff", "#555555"),
}
TEXT = "#1d2430"
WIDTH = 6.7  # printed text width in inches (A4 minus margins)
WHITE = dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none")  # text laid over a line


def canvas(width, height):
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def box(ax, x, y, w, h, text, kind="plain", size=8, weight="normal", align="center", radius=0.06, lw=1.0):
    face, edge = C[kind]
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={radius}",
                                facecolor=face, edgecolor=edge, linewidth=lw))
    if text:
        tx = x + w / 2 if align == "center" else x + 0.08
        ax.text(tx, y + h / 2, text, ha=align, va="center", fontsize=size, color=TEXT, weight=weight,
                linespacing=1.25)


def arrow(ax, start, end, text="", kind="plain", style="-|>", dashed=False, rad=0.0, offset=(0, 0.07),
          size=7, ha="center", lw=1.1):
    edge = C[kind][1]
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9, color=edge, linewidth=lw,
                                 linestyle=(0, (4, 3)) if dashed else "solid",
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha=ha, va="bottom", fontsize=size, color=edge, linespacing=1.2,
                bbox=dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none", alpha=0.9))


def save(fig, path):
    if path.endswith(".svg"):
        fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})
    else:  # a PNG preview
        fig.savefig(path, dpi=150)
    plt.close(fig)


# --- 1. architecture ------------------------------------------------------------------------------

def architecture(path):
    fig, ax = canvas(WIDTH, 3.45)
    # clients
    box(ax, 0.02, 1.3, 0.9, 0.95, "Clients\n\nsimple_request\nstress_test\ncurl", "client", size=6.8)
    # web servers
    web_x, web_w = 1.5, 1.2
    box(ax, web_x, 0.45, web_w, 2.75, "", "web")
    ax.text(web_x + web_w / 2, 3.0, "Web servers", ha="center", fontsize=8.5, weight="bold", color=TEXT)
    ax.text(web_x + web_w / 2, 2.83, "run_web_server.py", ha="center", fontsize=6, color=TEXT)
    for i, y in enumerate((1.7, 0.55)):
        box(ax, web_x + 0.08, y, web_w - 0.16, 1.0,
            f"process {i + 1}\n\none greenlet\nper request\n+ result listener", "plain", size=6.3)
    # redis
    rx, rw = 3.35, 1.6
    box(ax, rx, 0.1, rw, 3.25, "", "redis")
    ax.text(rx + rw / 2, 3.15, "Redis", ha="center", fontsize=8.5, weight="bold", color=TEXT)
    ax.text(rx + rw / 2, 2.98, "keys under KEY_PREFIX (imgq:)", ha="center", fontsize=6, color=TEXT)
    rows = {"queue": ("queue\nlist: JSON header + pixels", 2.4),
            "inflight": ("inflight:{worker}\nlist, one per worker", 1.8),
            "result": ("result:{id}\nstring, SET EX 60", 1.2), "heartbeat": ("heartbeat:{worker}\nstring, EX 15", 0.66),
            "workers": ("workers\nset of worker ids", 0.18)}
    for text, y in rows.values():
        box(ax, rx + 0.08, y, rw - 0.16, 0.42, text, "plain", size=6.3)
    # workers
    wx, ww = 5.6, 1.08
    box(ax, wx, 0.45, ww, 2.75, "", "worker")
    ax.text(wx + ww / 2, 3.0, "Model workers", ha="center", fontsize=8.5, weight="bold", color=TEXT)
    ax.text(wx + ww / 2, 2.83, "run_model_server.py", ha="center", fontsize=6, color=TEXT)
    for i, y in enumerate((1.7, 0.55)):
        box(ax, wx + 0.07, y, ww - 0.14, 1.0, f"worker {i + 1}\n\nbatch loop\n+ heartbeat\nthread", "plain",
            size=6.3)
    wl, wr = web_x + web_w - 0.08, rx + 0.08          # right edge of web boxes, left edge of key boxes
    kr, kl = rx + rw - 0.08, wx + 0.07                # right edge of key boxes, left edge of worker boxes
    # One request enters and leaves through the same web process (process 1); the keyspace event reaches
    # every web process (the fan-out), and only the one waiting for that id acts on it.
    arrow(ax, (0.92, 2.25), (web_x + 0.08, 2.45), "POST /predict", "client", size=6, offset=(0, 0.08))
    arrow(ax, (web_x + 0.08, 1.85), (0.92, 1.65), "JSON top-5", "client", size=6, offset=(0, -0.26))
    arrow(ax, (wl, 2.55), (wr, 2.6), "1 push (Lua)", "web", size=6, offset=(0, 0.04))
    arrow(ax, (kr, 2.6), (kl, 2.45), "2 take batch", "worker", size=6, offset=(0, 0.05))
    arrow(ax, (kl, 2.0), (kr, 2.0), "kept in flight", "worker", size=5.5, dashed=True, offset=(0, 0.03))
    arrow(ax, (kl, 1.85), (kr, 1.42), "3 results", "worker", size=6, offset=(0.02, -0.24))
    arrow(ax, (wr, 1.5), (wl, 2.1), "4 keyspace event", "redis", size=6, offset=(0.12, 0.1))
    arrow(ax, (wr, 1.3), (wl, 1.1), "4 (every process)", "redis", size=5.5, dashed=True, offset=(0, -0.28))
    arrow(ax, (wl, 1.85), (wr, 1.62), "5 GETEX", "web", size=6, offset=(0, -0.26))
    arrow(ax, (kl, 0.8), (kr, 0.87), "beat()", "worker", size=6, offset=(0, 0.03))
    save(fig, path)


# --- sequence diagrams (lanes and messages) -------------------------------------------------------

def sequence(path, lanes, messages, height=None, row=0.27, top_pad=0.55, width=WIDTH, note_width=1.55):
    """lanes: [(name, kind, x)]; messages: (from, to, text, kind[, dashed]) with from == to for a note on a lane,
    or ("--", text) for a section label across all lanes."""
    height = height or top_pad + row * len(messages) + 0.05
    fig, ax = canvas(width, height)
    xs = {name: x for name, _, x in lanes}
    for name, kind, x in lanes:
        box(ax, x - 0.5, height - 0.42, 1.0, 0.34, name, kind, size=7.5, weight="bold")
        ax.plot([x, x], [0.05, height - 0.42], color=C[kind][1], lw=0.8, ls=(0, (2, 2)))
    y = height - top_pad - row * 0.35
    for m in messages:
        if m[0] == "--":
            ax.text(0.05, y - 0.05, m[1], fontsize=6.5, style="italic", color="#555555", va="center",
                    bbox=dict(boxstyle="round,pad=0.25", facecolor="#f4f4f4", edgecolor="#cccccc", lw=0.6))
            y -= row
            continue
        src, dst, text, kind = m[:4]
        dashed = len(m) > 4 and m[4]
        if src == dst:
            w = note_width
            cx = min(max(xs[src], w / 2 + 0.05), width - w / 2 - 0.05)
            box(ax, cx - w / 2, y - row * 0.45, w, row * 0.9, text, "note", size=6.3, radius=0.03, lw=0.7)
        else:
            arrow(ax, (xs[src], y - 0.1), (xs[dst], y - 0.1), text, kind, dashed=dashed, offset=(0, 0.015),
                  size=6.3)
        y -= row
    save(fig, path)


def handoff(path):
    lanes = [("client", "client", 0.55), ("web request", "web", 1.75), ("listener", "web", 2.95),
             ("Redis", "redis", 4.15), ("worker", "worker", 6.15)]
    msgs = [
        ("client", "web request", "POST /predict", "client"),
        ("web request", "web request", "prepare_image: uint8 224×224×3\nmake_job: JSON header + raw pixels", "note"),
        ("web request", "listener", "register(id): an Event", "web"),
        ("web request", "Redis", "EVALSHA _PUSH (LLEN check, RPUSH queue)", "web"),
        ("worker", "Redis", "BLMOVE queue → inflight:{w}", "worker"),
        ("worker", "Redis", "MULTI: LMOVE × (≤ BATCH_SIZE−1 more), LLEN", "worker"),
        ("worker", "worker", "model.predict(batch)\ntop-5 for each job", "note"),
        ("worker", "Redis", "EVALSHA _COMPLETE: SET result:{id} EX 60,\nLTRIM the batch off inflight", "worker"),
        ("Redis", "listener", "keyspace event: result:{id} 'set'", "redis"),
        ("listener", "web request", "event.set()", "web"),
        ("web request", "Redis", "GETEX result:{id}", "web"),
        ("web request", "client", "200 JSON: predictions", "client"),
        ("--", "Backup: the request also reads on its own, every BACKUP_POLL_S (5 s) while the listener hears,"),
        ("--", "every POLL_INTERVAL (1 s) while it does not. At REQUEST_TIMEOUT: LREM the job, answer 504."),
    ]
    sequence(path, lanes, msgs, row=0.27)


def race(path):
    """The course's LRANGE + LTRIM with two workers, next to our atomic take into in-flight lists."""
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.15))
    fig.subplots_adjust(left=0.005, right=0.995, top=0.995, bottom=0.005, wspace=0.04)
    panels = [
        ("Course: LRANGE, work, SET, LTRIM", "bad", [
            ("A", "LRANGE queue 0 31 → j1…j32", "plain"),
            ("B", "LRANGE queue 0 31 → j1…j32  (the same jobs)", "bad"),
            ("A", "predict, SET j1…j32", "plain"),
            ("A", "LTRIM queue 32 −1 → [j33…j40]", "plain"),
            ("B", "predict, SET j1…j32 again: ran twice", "bad"),
            ("B", "LTRIM queue 32 −1 → [ ]", "bad"),
            ("!", "j33…j40 removed unrun: their requests\npoll GET forever (no timeout)", "bad"),
            ("!", "worker dies after SET, before LTRIM:\nthe batch runs again; results never expire", "bad"),
        ]),
        ("Ours: atomic take into an in-flight list", "good", [
            ("A", "BLMOVE + LMOVEs: j1…j32 → inflight:A", "good"),
            ("B", "BLMOVE + LMOVEs: j33…j40 → inflight:B", "good"),
            ("A", "predict; _COMPLETE: SET j1…j32 EX 60,\nLTRIM inflight:A", "plain"),
            ("B", "SIGKILL mid-batch: j33…j40 stay\nin inflight:B", "bad"),
            ("A", "beat(): heartbeat:B expired → RPOP inflight:B,\nLPUSH each job back at the queue head", "good"),
            ("A", "runs j33…j40 once; every request\nanswered exactly once", "good"),
            ("!", "a request with no answer by REQUEST_TIMEOUT\ngets 504; its job is withdrawn (LREM)", "good"),
        ]),
    ]
    for ax, (title, kind, rows) in zip(axes, panels):
        w, h = WIDTH / 2 - 0.05, 3.15
        ax.set_xlim(0, w)
        ax.set_ylim(0, h)
        ax.axis("off")
        box(ax, 0.02, h - 0.36, w - 0.04, 0.32, title, kind, size=8, weight="bold")
        y = h - 0.5
        for who, text, k in rows:
            lines = text.count("\n") + 1
            bh = 0.2 + 0.13 * (lines - 1)
            if who == "!":
                box(ax, 0.05, y - bh, w - 0.1, bh, text, k, size=6.6, align="left", radius=0.03, lw=0.7)
            else:
                ax.text(0.12, y - bh / 2, f"worker {who}", fontsize=6.6, weight="bold", va="center",
                        color=C["worker"][1])
                x0 = 0.72 + (0.08 if who == "B" else 0)
                box(ax, x0, y - bh, w - x0 - 0.05, bh, text, k, size=6.6, align="left", radius=0.03, lw=0.7)
            y -= bh + 0.07
    save(fig, path)


def lifecycle(path):
    fig, ax = canvas(WIDTH, 2.6)
    y0 = 1.25
    states = {
        "upload": (0.05, y0, 0.95, 0.55, "upload\nPOST /predict", "client"),
        "queue": (1.45, y0, 1.05, 0.55, "queue\n(list)", "redis"),
        "inflight": (3.0, y0, 1.2, 0.55, "inflight:{worker}\n(list)", "redis"),
        "result": (4.7, y0, 1.0, 0.55, "result:{id}\n(EX 60)", "redis"),
        "answer": (5.95, y0, 0.7, 0.55, "200\nanswer", "client"),
        "full": (0.05, 0.15, 1.0, 0.5, "503: queue full,\nnot pushed", "bad"),
        "withdrawn": (1.35, 0.15, 1.3, 0.5, "504 at timeout:\nLREM withdraws it", "bad"),
        "expired": (3.0, 0.15, 1.2, 0.5, "deadline passed:\ndropped (job.expired)", "note"),
        "stale": (4.6, 0.15, 1.2, 0.5, "nobody read it:\ngone after RESULT_TTL", "note"),
    }
    for x, y, w, h, text, kind in states.values():
        box(ax, x, y, w, h, text, kind, size=6.8)

    def mid(name, side, dx=0.0):
        x, y, w, h = states[name][:4]
        return {"l": (x, y + h / 2), "r": (x + w, y + h / 2), "t": (x + w / 2 + dx, y + h),
                "b": (x + w / 2 + dx, y)}[side]

    arrow(ax, mid("upload", "r"), mid("queue", "l"), "_PUSH", "web", size=6.3, offset=(0, 0.04))
    arrow(ax, mid("queue", "r"), mid("inflight", "l"), "take_batch", "worker", size=6.3, offset=(0, 0.04))
    arrow(ax, mid("inflight", "r"), mid("result", "l"), "complete", "worker", size=6.3, offset=(0, 0.04))
    arrow(ax, mid("result", "r"), mid("answer", "l"), "GETEX", "web", size=6.3, offset=(0, 0.04))
    arrow(ax, mid("upload", "b"), mid("full", "t"), "", "bad")
    arrow(ax, mid("queue", "b"), mid("withdrawn", "t"), "", "bad")
    arrow(ax, mid("inflight", "b"), mid("expired", "t"), "", "note")
    arrow(ax, mid("result", "b", -0.1), mid("stale", "t", 0.0), "", "note")
    # a dead worker's jobs go back to the head of the queue (curved back over the top)
    ax.add_patch(FancyArrowPatch((3.6, y0 + 0.55), (1.98, y0 + 0.55), arrowstyle="-|>", mutation_scale=9,
                                 color=C["worker"][1], lw=1.1, connectionstyle="arc3,rad=0.45"))
    ax.text(2.79, y0 + 0.97, "beat() of a live worker: heartbeat of {worker} expired → back to the queue head",
            ha="center", fontsize=6.3, color=C["worker"][1], va="bottom")
    save(fig, path)


def notify_vs_poll(path):
    """Timeline of one waiting request: the course's 0.25 s polls vs one keyspace event (the backup read comes only
    every 5 s while the listener hears)."""
    fig, ax = canvas(WIDTH, 1.75)
    t0, scale = 1.05, 2.5  # inches per second
    done = 1.13  # an example: the result is written 1.13 s after the request started
    for y, label in ((1.2, "course:\nGET every 0.25 s"), (0.5, "ours: the event;\nbackup GETEX every 5 s")):
        ax.text(0.05, y, label, fontsize=6.8, va="center", color=TEXT)
        ax.plot([t0, t0 + scale * 2.2], [y, y], color="#999999", lw=0.8)
    for s in (0, 0.5, 1, 1.5, 2):
        ax.text(t0 + scale * s, 0.1, f"{s:g} s", fontsize=6.5, ha="center", color="#666666")
    xr = t0 + scale * done
    for y in (1.2, 0.5):
        ax.plot([xr, xr], [y - 0.18, y + 0.18], color=C["worker"][1], lw=1.6)
    ax.text(xr, 1.48, "worker SETs the result (t = 1.13 s)", fontsize=6.5, ha="center", color=C["worker"][1])
    for k in range(1, 6):
        p = 0.25 * k
        hit = p >= done
        ax.plot(t0 + scale * p, 1.2, marker="o", ms=4.5, color=C["web"][1] if not hit else C["good"][1],
                mfc="white" if not hit else C["good"][1])
    ax.text(t0 + scale * 1.32, 1.2, "answered at the next poll, up to 0.25 s late;\n4 GETs a second while waiting",
            fontsize=6.5, va="center", color=TEXT, bbox=WHITE)
    ax.plot(xr + 0.02, 0.5, marker="o", ms=4.5, color=C["good"][1])
    ax.text(t0 + scale * 1.22, 0.5, "event: one GETEX at once, none before;\nbackup reads every 5 s "
            "(1 s while the listener is down)", fontsize=6.5, va="center", color=TEXT, bbox=WHITE)
    ax.text(t0 - 0.02, 0.78, "open circle: a read that found nothing", fontsize=6, color="#666666")
    save(fig, path)


ALL = {"architecture": architecture, "handoff": handoff, "race": race, "lifecycle": lifecycle,
       "notify_vs_poll": notify_vs_poll}


def build_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    for name, draw in ALL.items():
        paths[name] = os.path.join(outdir, f"{name}.svg")
        draw(paths[name])
    return paths


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", default="docs/build/figures",
                        help="folder for the SVG files (default: %(default)s)")
    for name, p in build_all(parser.parse_args().outdir).items():
        print(p)
