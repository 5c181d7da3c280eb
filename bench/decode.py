"""What decoding one upload costs (the web server's images.prepare_image, before anything touches Redis).

    python -m bench.decode             # per-method CPU for castle_image.jpg and a baseline JPEG, a few seconds
    python -m bench.decode --memory    # peak memory per decoder (bytes per pixel), in fresh subprocesses
    python -m bench.decode --concurrent  # one gunicorn process's peak RSS, 16 worst-case uploads at once

Methods (each returns the uint8 224x224x3 array a job carries; "diff" is the mean absolute difference in
grey levels from images.prepare_image, the service's path):
  prepare_image      the service: Pillow, JPEG draft (DCT scaling to >= 224), BILINEAR resize
  pillow, no draft   full-size decode, then resize (the course's way)
  simplejpeg         libjpeg-turbo via simplejpeg, scaled decode to >= 224, then the same resize
  simplejpeg fast    the same with fastdct + fastupsample (less exact IDCT and chroma upsampling)
  draft to 1/4       decoding below the model's size and scaling up: cheaper, but loses detail
  header only        Image.open + size check: the validation the web tier keeps if decoding moved to workers
"""
import argparse
import io
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from imgq.web import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASTLE = os.path.join(REPO, "..", "shared", "castle_image.jpg")
SIZE = (224, 224)


def resized(image):
    return np.asarray(image.convert("RGB").resize(SIZE[::-1], Image.Resampling.BILINEAR))


def pillow_no_draft(data):
    return resized(Image.open(io.BytesIO(data)))


def draft_quarter(data):
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (SIZE[1] // 2, SIZE[0] // 2))
    return resized(image)


def header_only(data):
    image = Image.open(io.BytesIO(data), formats=images.FORMATS)
    return image.width * image.height <= images.settings.MAX_IMAGE_PIXELS and images.decode_bytes(image)


METHODS = {
    "prepare_image": lambda data: images.prepare_image(data, SIZE),
    "pillow, no draft": pillow_no_draft,
    "draft to 1/4": draft_quarter,
    "header only": header_only,
}
try:
    import simplejpeg

    def _simplejpeg(data, fast=False):
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=SIZE[0], min_width=SIZE[1],
                                        fastdct=fast, fastupsample=fast)
        return resized(Image.fromarray(pixels))

    METHODS["simplejpeg"] = _simplejpeg
    METHODS["simplejpeg fast"] = lambda data: _simplejpeg(data, fast=True)
except ImportError:  # optional: .venv/bin/pip install -r bench/requirements-decode.txt
    pass


def measure(fn, data, seconds):
    fn(data)
    cpu, wall = [], []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(cpu) < 20:
        c, w = time.process_time(), time.perf_counter()
        fn(data)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000, len(cpu)


def speed(seconds):
    with open(CASTLE, "rb") as f:
        castle = f.read()
    out = io.BytesIO()
    Image.open(io.BytesIO(castle)).save(out, "JPEG", quality=90)  # the same picture, baseline
    files = {"castle_image.jpg (800x480, progressive)": castle, "castle re-encoded (800x480, baseline)": out.getvalue()}
    for name, data in files.items():
        reference = images.prepare_image(data, SIZE).astype(int)
        print(f"\n{name}, {len(data)} bytes; median per call, {seconds:g} s per method")
        print(f"  {'method':18s} {'CPU ms':>7s} {'wall ms':>8s} {'calls':>6s}  diff")
        for method, fn in METHODS.items():
            cpu, wall, calls = measure(fn, data, seconds)
            result = fn(data)
            diff = f"{np.abs(result.astype(int) - reference).mean():.2f}" if isinstance(result, np.ndarray) else "-"
            print(f"  {method:18s} {cpu:7.3f} {wall:8.3f} {calls:6d}  {diff}")


# --- Memory per decoder: each case in a fresh process, so its peak RSS is the decode's own ---------------

MEMORY_CASES = ["jpeg-progressive", "jpeg-baseline", "png-rgba", "png-16bit", "png-palette-transparent",
                "gif", "bmp", "tiff-rgba", "tiff-float", "webp-lossless-rgba", "webp-lossy"]


def make_case(kind, width=4000, height=2500):
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // width), (y * 255 // height), ((x // 16) % 2) * 255], -1).astype(np.uint8)
    image = Image.fromarray(rgb)
    fmt, options = kind.split("-")[0].upper(), {}
    if kind == "jpeg-progressive":
        options["progressive"] = True
    elif kind in ("png-rgba", "tiff-rgba", "webp-lossless-rgba"):
        image.putalpha(128)
    elif kind == "png-16bit":
        image = Image.fromarray((x * 65535 // width).astype(np.uint16))
    elif kind in ("png-palette-transparent", "gif"):
        image, options["transparency"] = image.convert("P"), 0
    elif kind == "tiff-float":
        image = Image.fromarray((y / height).astype(np.float32))
    if fmt == "WEBP":
        options.update(method=0, lossless=kind.startswith("webp-lossless"))
    if fmt == "TIFF":
        options["compression"] = "tiff_lzw"
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def memory():
    print("\npeak RSS of one prepare_image, 4000x2500 (10 Mpx) files, each in a fresh process")
    print(f"  {'file':26s} {'bytes':>10s} {'MB':>6s} {'B/px':>5s} {'estimate':>8s}")
    for kind in MEMORY_CASES:
        grew, estimate, size = measure_memory(kind)
        print(f"  {kind:26s} {size:10d} {grew / 2**20:6.0f} {grew / 1e7:5.1f} {estimate / 1e7:8.1f}")


def measure_memory(kind, width=4000, height=2500):
    """(peak bytes one prepare_image of a `kind` file took, decode_bytes' estimate, file size), measured in
    a fresh process so that nothing else's memory is counted."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, kind + ".bin")
        with open(path, "wb") as f:
            f.write(make_case(kind, width, height))
        out = subprocess.run([sys.executable, "-m", "bench.decode", "--memory-one", path], capture_output=True,
                             text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             timeout=120, env=dict(os.environ, LOG_LEVEL="ERROR"))
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return tuple(int(v) for v in out.stdout.split())


def _high_water_mark():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (much larger) parent.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def memory_one(path):
    import psutil
    with open(path, "rb") as f:
        data = f.read()
    # A small file of the same format first, through the decode pool: the decoder's libraries are loaded and
    # the pool's thread (with its own malloc arena, ~2.5 MB once per thread) is started, neither counted below.
    inline, images.settings.DECODE_INLINE_PIXELS = images.settings.DECODE_INLINE_PIXELS, 0
    images.prepare_image(make_case(os.path.basename(path).split(".")[0], 64, 40), SIZE)
    images.settings.DECODE_INLINE_PIXELS = inline
    before = psutil.Process().memory_info().rss
    image = Image.open(io.BytesIO(data))
    estimate = images.decode_bytes(image)
    images.prepare_image(data, SIZE)
    print(max(_high_water_mark() - before, 0), estimate, len(data))


def concurrent(n=16, **env):
    """Peak RSS of one gunicorn web process while n worst-case uploads arrive at once (stand-in model)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import psutil
    import requests

    from imgq.testing import Stack
    budget = int(env.get("MAX_DECODE_MB", images.settings.MAX_DECODE_MB))
    side = int((budget * 2**20 / 17) ** 0.5) - 8  # WebP, the most bytes per pixel: just inside the budget
    out = io.BytesIO()
    Image.new("RGBA", (side, side), (9, 9, 9, 255)).save(out, "WEBP", lossless=True, method=0)
    upload = out.getvalue()
    with Stack(MODEL="standin", LOG_LEVEL="WARNING") as stack:
        stack.start_worker()
        url, proc = stack.start_web(processes=1, DECODE_WAIT=120, **env)

        def rss():
            return sum(p.memory_info().rss for p in psutil.Process(proc.popen.pid).children())
        baseline, peak, done = rss(), rss(), threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss())
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        began = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(lambda _: requests.post(url + "/predict", files={"image": ("x", upload)},
                                                             timeout=300).status_code, range(n)))
        took = time.perf_counter() - began
        done.set()
        sampler.join()
        time.sleep(1)
        after = rss()
    settings = ", ".join(f"{k}={v}" for k, v in env.items()) or "defaults"
    print(f"\n{n} concurrent {side}x{side} lossless WebP uploads ({len(upload)} bytes each; {settings}): "
          f"statuses {sorted(set(statuses))}, {took:.1f} s; web process RSS {baseline / 2**20:.0f} MB → peak "
          f"{peak / 2**20:.0f} MB (+{(peak - baseline) / 2**20:.0f}), {after / 2**20:.0f} MB 1 s later")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per method and file")
    parser.add_argument("--memory", action="store_true", help="peak memory per decoder instead of speed")
    parser.add_argument("--concurrent", action="store_true",
                        help="peak RSS of one gunicorn process under 16 concurrent worst-case uploads")
    parser.add_argument("--slots", type=int, help="with --concurrent: DECODE_CONCURRENCY for the web process")
    parser.add_argument("--memory-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    if args.memory_one:
        memory_one(args.memory_one)
    elif args.memory:
        memory()
    elif args.concurrent:
        # --slots 16 shows what the slots prevent (it took 3.7 GB here: mind a shared machine)
        concurrent(**({"DECODE_CONCURRENCY": args.slots} if args.slots else {}))
    else:
        speed(args.seconds)
