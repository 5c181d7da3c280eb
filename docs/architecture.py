"""docs/architecture.png: the picture of one request's path that README.md and docs/architecture.md show.

The figure is data (boxes, their lines, numbered arrows) drawn with matplotlib, so a change to the flow is an
edit here and a rerun, not a redrawn image:

    python -m docs.architecture            # writes docs/architecture.png
    python -m docs.architecture --out x.png
"""
import argparse
import os

DOCS = os.path.dirname(os.path.abspath(__file__))

# One colour per tier, the same as the write-up's diagrams: (fill, edge).
COLOURS = {"client": ("#eef2f7", "#5b6b7f"), "web": ("#e3eefc", "#2f6db5"),
           "redis": ("#fdecea", "#c0392b"), "worker": ("#e6f4ea", "#2e7d32")}
TEXT = "#1d2430"

# Tiers: (x, width, title, subtitle, colour). Units are inches of the printed figure.
TIERS = [
    (0.10, 1.30, "Client", "curl, simple_request.py,\nthe page", "client"),
    (2.40, 2.45, "Web server", "gunicorn: run_web_server.py, imgq/web/", "web"),
    (5.60, 2.00, "Redis", "keys built in imgq/jobs/keys.py", "redis"),
    (8.35, 2.40, "Model worker", "run_model_server.py, imgq/worker/", "worker"),
]
HEIGHT = 4.6
TOP = 4.05  # top edge of the tier boxes
PAD = 0.15  # inner boxes sit this far inside their tier

# Boxes inside each tier, top to bottom: name -> (tier, text, centre y). Arrows join them by name.
BOXES = {
    "upload": ("web", "imgq/web/upload.py: the upload's bytes", 3.3),
    "images": ("web", "imgq/web/images.py: decode, resize\nto 224x224x3 uint8 pixels", 2.88),
    "message": ("web", "imgq/jobs/message.py:\nJSON header + the pixels", 2.4),
    "submit": ("web", "imgq/jobs/submit.py: push, then wait", 2.0),
    "results": ("web", "imgq/jobs/results.py: one listener\nper process; GETEX on the event,\n"
                       "or every POLL_INTERVAL", 1.15),
    "queue": ("redis", "imgq:queue\nlist of jobs", 2.75),
    "inflight": ("redis", "imgq:inflight:<worker>\njobs a worker holds", 1.95),
    "result": ("redis", "imgq:result:<id>\nEX RESULT_TTL", 1.15),
    "heartbeat": ("redis", "imgq:heartbeat:<worker>\nEX HEARTBEAT_TTL", 0.5),
    "loop": ("worker", "imgq/worker/loop.py: take a batch\n(BLMOVE + MULTI of LMOVEs)", 2.75),
    "model": ("worker", "imgq/models/: one model call\nper batch (LiteRT or TensorFlow)", 1.95),
    "write": ("worker", "one script: write every result,\ndrop the batch from in flight", 1.15),
    "beat": ("worker", "heartbeat; puts a dead worker's\njobs back on the queue", 0.5),
}
CLIENT_EDGE = TIERS[0][0] + TIERS[0][1]

# Numbered arrows: (from, to, label, colour, label offset (dx, dy), dashed). A name is a box; a number is the
# client's edge at that height.
ARROWS = [
    (3.3, "upload", "1 POST /predict", "client", (0.0, 0.05), False),
    ("submit", "queue", "2 push", "web", (-0.05, 0.04), False),
    ("queue", "loop", "3 take", "worker", (0.0, 0.05), False),
    ("queue", "inflight", "moved, not\ncopied", "worker", (0.45, -0.18), True),
    ("write", "result", "4 results", "worker", (0.0, 0.05), False),
    ("result", "results", "5 keyspace event", "redis", (0.0, 0.1), False),
    ("results", "result", "6 GETEX", "web", (0.0, -0.3), False),
    ("results", 1.0, "7 JSON, top 5", "client", (0.0, 0.05), False),
    ("beat", "heartbeat", "beat", "worker", (0.0, 0.05), False),
]


def _box_size(text):
    lines = text.count("\n") + 1
    return 0.16 + 0.13 * lines


def draw(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 7.5})
    width = TIERS[-1][0] + TIERS[-1][1] + 0.1
    fig = plt.figure(figsize=(width, HEIGHT))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, HEIGHT)
    ax.axis("off")
    tiers = {}
    for x, w, title, subtitle, colour in TIERS:
        face, edge = COLOURS[colour]
        ax.add_patch(FancyBboxPatch((x, 0.15), w, TOP - 0.15, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=face, edgecolor=edge, linewidth=1.2))
        ax.text(x + w / 2, TOP + 0.28, title, ha="center", fontsize=10, weight="bold", color=TEXT)
        ax.text(x + w / 2, TOP - 0.15, subtitle, ha="center", va="top", fontsize=6.8, color=edge, linespacing=1.2)
        tiers[colour] = (x + PAD, w - 2 * PAD)
    edges = {}  # name -> (left, right, bottom, top)
    for name, (tier, text, y) in BOXES.items():
        x, w = tiers[tier]
        h = _box_size(text)
        ax.add_patch(FancyBboxPatch((x, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.04",
                                    facecolor="white", edgecolor=COLOURS[tier][1], linewidth=0.7))
        ax.text(x + w / 2, y, text, ha="center", va="center", fontsize=6.8, color=TEXT, linespacing=1.2)
        edges[name] = (x, x + w, y - h / 2, y + h / 2)

    def ends(a, b):
        if isinstance(a, float):  # from the client's edge to a box
            return (CLIENT_EDGE, a), (edges[b][0], a)
        if isinstance(b, float):  # from a box to the client's edge
            return (edges[a][0], b), (CLIENT_EDGE, b)
        la, ra, ba, ta = edges[a]
        lb, rb, bb, tb = edges[b]
        if abs((la + ra) - (lb + rb)) < 1e-6:  # same tier: top to bottom
            x = (la + ra) / 2
            return (x, ba), (x, tb)
        ya, yb = (ba + ta) / 2, (bb + tb) / 2
        if a == "results" and b == "result":  # the read leaves below the event it answers
            ya, yb = ba + 0.12, bb + 0.1
        if a == "result" and b == "results":
            ya, yb = tb - 0.1, ta - 0.12
        return ((ra, ya), (lb, yb)) if ra < lb else ((la, ya), (rb, yb))

    for a, b, label, colour, (dx, dy), dashed in ARROWS:
        edge = COLOURS[colour][1]
        start, end = ends(a, b)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=edge, linewidth=1.3,
                                     linestyle=(0, (4, 3)) if dashed else "solid", shrinkA=0, shrinkB=0))
        mx, my = (start[0] + end[0]) / 2 + dx, (start[1] + end[1]) / 2 + dy
        ax.text(mx, my, label, ha="center", va="bottom", fontsize=6.6, color=edge, weight="bold", linespacing=1.15)
    fig.savefig(path, dpi=150, metadata={"Software": None})
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(DOCS, "architecture.png"),
                        help="where to write the PNG (default: %(default)s)")
    args = parser.parse_args(argv)
    draw(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
