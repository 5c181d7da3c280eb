"""Upload → pixels: turn the bytes a client uploaded into the uint8 array a job carries.

The web server calls prepare_image() before anything touches Redis, so a bad upload is refused with a
clear 4xx and a good one travels as exactly height x width x 3 bytes (150,528 for 224x224), not as the
course's float32 (four times larger). The worker applies the model's own normalisation later.

Decoding is bounded whatever the upload:
- only the formats in FORMATS are opened (Pillow itself would try ~40, each a decoder to trust);
- the header alone is checked against MAX_IMAGE_PIXELS, and the memory its decoder will take
  (decode_bytes, measured per format) against MAX_DECODE_MB, before any pixel is decoded;
- the image is resized to the model's size in its own mode (JPEG even decodes at 1/2, 1/4 or 1/8 scale)
  and converted to 8-bit RGB only then, so no full-size copy in another mode is ever made;
- at most DECODE_CONCURRENCY uploads per process are decoded at once; one that cannot get a slot within
  DECODE_WAIT seconds is answered 503 + Retry-After (DecodeBusy) instead of adding to the memory.
Any exception a decoder raises becomes BadImage (400), whatever its type.
"""
from __future__ import annotations

import io
import warnings
from typing import Any, cast

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from imgq import settings
from imgq.errors import BadImage, DecodeBusy
from imgq.observe.logutil import log
from imgq.observe.threads import name_thread
from imgq.web import containers
from imgq.web.slots import FairSlots

# Pillow's format names, in docs/api.md's order ("Accepted formats"). JPEG includes MPO, the multi-picture
# JPEG many cameras and phones write (Pillow's JPEG opener hands those out as format "MPO").
# Left out on purpose, though Pillow opens them: AVIF, JPEG 2000, PSD, ICO, DDS, BLP, EPS and ~30 more
# rarely uploaded formats, each a decoder with its own exceptions and memory behaviour to trust.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, TIFF, WebP"

# Pillow warns between MAX_IMAGE_PIXELS and twice that and raises above; our own check below refuses
# anything over the setting with a clear 413, so its warning would only be noise in the log. (Set once
# here: warnings.catch_warnings per request is not thread-safe.)
Image.MAX_IMAGE_PIXELS = settings.MAX_IMAGE_PIXELS
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# PNG text chunks are decompressed at open; Pillow allows 64 MB of them. We never read them.
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024

_slots = FairSlots(max(1, settings.DECODE_CONCURRENCY))


_malloc_tuned = False


def _return_big_blocks_to_the_system() -> None:
    """Pillow allocates images in 16 MB blocks. glibc's malloc raises its mmap threshold after the first such
    block is freed, so later ones come from per-thread heaps that keep them: with 64 request threads, RSS
    grew to ~9x the memory the decode slots allow (measured). A fixed threshold makes every block over 1 MB
    an mmap that free() gives back.

    Fixing it also fixes the trim threshold, at glibc's 128 KB: each request would give its smaller buffers
    (about 1.5 MB for castle) back to the system and fault them in again on the next, about 300 page faults
    and 1 ms of CPU per upload (measured in the web process). So each malloc arena keeps up to 8 MB free
    instead: a few arenas under gevent (the event loop, the decode threads), up to 8 per core under gthread.

    Done on the first decode, so only processes that decode uploads get it (the model worker imports this
    module for base64 and keeps malloc's defaults). No-op off glibc."""
    global _malloc_tuned
    _malloc_tuned = True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 8 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass

# EXIF orientation → the transpose that shows the image upright (as ImageOps.exif_transpose does).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _busy() -> DecodeBusy:
    return DecodeBusy(f"the server is busy decoding other uploads ({settings.DECODE_CONCURRENCY} at once per "
                      f"process); try again shortly")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a corrupt EXIF block: show the image as stored rather than refuse it
        return 1


# Bytes per pixel Pillow holds for each mode (RGB, LA and the 32-bit modes take 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decode_bytes(image: Image.Image) -> int:
    """Peak memory the decode of this opened (not yet loaded) image will take, from its header alone.

    Measured per decoder on 10-megapixel files (bench/decode.py --memory): baseline JPEG decodes at the
    reduced scale (~0.2 B/px); progressive JPEG keeps all DCT coefficients, 2 bytes per sample (3.2 B/px
    at 4:2:0); PNG, GIF, TIFF, BMP hold the full image in its mode, plus a full RGBA copy for palette and
    alpha images (expanded and premultiplied before the resize); WebP's decoder keeps its own canvas besides
    Pillow's (16.8 B/px). Each estimate is at or above what was measured.
    """
    pixels = image.width * image.height
    if image.format in ("JPEG", "MPO"):
        per_pixel = 0.5
        if image.info.get("progressive") or image.info.get("progression"):
            # 2 bytes per DCT coefficient, one per sample of each component (chroma is often subsampled).
            layers = getattr(image, "layer", None) or [(None, 1, 1, None)] * len(image.getbands())
            top = max(1, max(h for _, h, _, _ in layers) * max(v for _, _, v, _ in layers))  # 0: corrupt,
            per_pixel += 2.0 * sum(h * v for _, h, v, _ in layers) / top  # libjpeg will say so
    elif image.format == "WEBP":
        per_pixel = 17.0
    else:
        per_pixel = _MODE_BYTES.get(image.mode, 4) + 0.8  # + the decoder's own buffers, measured
        if image.mode in ("P", "PA", "RGBA", "LA", "La", "RGBa") or "transparency" in image.info:
            per_pixel += 4 + (4 if image.mode in ("P", "PA") else 0)
        elif image.mode == "1":
            per_pixel += 1
    return int(pixels * per_pixel)


def _small_to_rgb(image: Image.Image) -> Image.Image:
    """The already resized image, any Pillow mode → 8-bit RGB. Transparent pixels are laid on white."""
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        # 16-bit and 32-bit greyscale: scale to 0..255 instead of clipping everything to white.
        values = np.asarray(image).astype(np.float64)  # 224x224: 400 KB, not the full image
        top = 65535.0 if image.mode in _SIXTEEN_BIT else max(float(values.max()), 1.0)
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _decode(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Header checked, slot held: decode and resize in the image's own mode, then make it 8-bit RGB."""
    # A JPEG's EXIF is in its header; other formats may keep it after the pixels (PNG's eXIf), and
    # Pillow would decode the whole image to find it: read it there only after the decode.
    jpeg = image.format in ("JPEG", "MPO")
    orientation = _orientation(image) if jpeg else 1
    if orientation in (5, 6, 7, 8):  # stored sideways: resize to the transposed size, then turn it
        width, height = height, width
    # JPEG decodes at 1/2, 1/4 or 1/8 scale for free (libjpeg's DCT scaling); ask for no less than we need.
    image.draft("RGB", (width, height))
    image.load()
    if not jpeg:
        orientation = _orientation(image)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
    # Palette and 1-bit images cannot be filtered as they are (Pillow would fall back to nearest
    # neighbour): expand them first, transparency included. Every other mode is resized as it is.
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    # BILINEAR in Pillow is a real (antialiased) filter over the whole source, not 4-pixel sampling.
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    image = _small_to_rgb(image)
    if orientation in _ORIENTATION:
        image = image.transpose(_ORIENTATION[orientation])
    return np.asarray(image, dtype=np.uint8)


def _open(data: bytes) -> Image.Image:
    """The image's header, checked against the pixel and memory limits; nothing decoded yet. Cheap and bounded
    (containers.check has refused headers of many segments), so it runs where the request runs."""
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    if image.width * image.height > settings.MAX_IMAGE_PIXELS:
        raise BadImage(f"image is {image.width}x{image.height} pixels, more than MAX_IMAGE_PIXELS "
                       f"({settings.MAX_IMAGE_PIXELS})", status=413)
    if image.width < 1 or image.height < 1:
        raise BadImage(f"image declares {image.width}x{image.height} pixels")
    needs = decode_bytes(image)
    if needs > settings.MAX_DECODE_MB * 2**20:
        raise BadImage(f"a {image.width}x{image.height} {image.format} image needs about {needs / 2**20:.0f} MB to "
                       f"decode, more than MAX_DECODE_MB ({settings.MAX_DECODE_MB})", status=413)
    return image


_pool: Any = None
_pool_pid: int | None = None


def under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


def _off_loop(image: Image.Image, height: int, width: int) -> np.ndarray:
    """_decode in a thread of a pool of DECODE_CONCURRENCY, its slot (held by the caller) given back when the
    thread is done. Under gevent that is a real OS thread (Pillow releases the GIL while it decodes),
    so the process' event loop keeps serving /livez and every other request meanwhile. The caller waits at
    most DECODE_TIMEOUT s: then it answers 413 while the thread finishes, still in its slot, so the number of
    decodes at once stays bounded."""
    global _pool, _pool_pid
    import os
    if _pool is None or _pool_pid != os.getpid():  # one pool per process, made after gunicorn forks
        if under_gevent():
            from gevent.threadpool import ThreadPool
            _pool = ThreadPool(max(1, settings.DECODE_CONCURRENCY))
        else:
            from concurrent.futures import ThreadPoolExecutor
            _pool = ThreadPoolExecutor(max(1, settings.DECODE_CONCURRENCY), thread_name_prefix="decode")
        _pool_pid = os.getpid()
    if hasattr(_pool, "spawn"):  # gevent
        import gevent
        result = _pool.spawn(_caught, image, height, width)
        try:
            outcome = result.get(timeout=settings.DECODE_TIMEOUT)
        except gevent.Timeout:
            # The thread goes on: a greenlet gives its slot back when it is done (not a callback in the hub,
            # where an exception would leave the slot taken for good).
            gevent.spawn(_release_when_done, result)
            raise _too_slow() from None
        _slots.release()
    else:
        from concurrent.futures import TimeoutError as FutureTimeout
        future = _pool.submit(_caught, image, height, width)
        future.add_done_callback(lambda _: _slots.release())
        try:
            outcome = future.result(timeout=settings.DECODE_TIMEOUT)
        except FutureTimeout:
            raise _too_slow() from None
    if isinstance(outcome, BaseException):
        raise outcome
    return cast(np.ndarray, outcome)


def _release_when_done(result: Any) -> None:
    try:
        result.wait()
    finally:
        _slots.release()


def _caught(image: Image.Image, height: int, width: int) -> np.ndarray | Exception:
    """_decode's array, or the exception it raised as a value: gevent's pool would print the traceback of an
    exception that leaves the thread, and a client's bad file is no crash. (It logs nothing: a log line takes a
    lock of the serving greenlets'.)"""
    name_thread("decode")  # gevent's pool has no initializer; a name costs one system call
    try:
        return _decode(image, width, height)
    except Exception as exc:
        return exc


def _too_slow() -> BadImage:
    return BadImage(f"the image took longer than DECODE_TIMEOUT ({settings.DECODE_TIMEOUT:g} s) to decode", 413)


def prepare_image(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Decode an upload and resize it to `size` = (height, width). Returns a uint8 array (h, w, 3).

    Raises BadImage (4xx) for anything wrong with the upload, DecodeBusy (503) when this process is
    already decoding DECODE_CONCURRENCY uploads; never lets a decoder's own exception escape.
    """
    if not data:
        raise BadImage("the 'image' file is empty")
    if not _malloc_tuned:
        _return_big_blocks_to_the_system()
    height, width = size
    containers.check(data)  # a header of a million tiny segments is refused before Pillow parses it
    fmt: str | None = "?"
    try:
        image = _open(data)
        fmt = image.format
        if not _slots.acquire(timeout=settings.DECODE_WAIT):
            log("decode.busy", level="WARNING", format=fmt, pixels=image.width * image.height)
            raise _busy()
        pixels = image.width * image.height
        if pixels <= settings.DECODE_INLINE_PIXELS and len(data) <= 8 * pixels + 65536:
            # A small image decodes in a few ms, less than handing it to a thread and back costs in a busy
            # process (measured: castle's 0.4 Mpx): it is decoded where the request runs. Not a file far
            # bigger than its pixels need (8 bytes each: 16-bit RGBA), such as a 1-pixel PNG padded with
            # a million empty chunks, which Pillow reads one at a time.
            try:
                array = _decode(image, width, height)
            finally:
                _slots.release()
        else:
            array = _off_loop(image, height, width)  # gives the slot back when its thread is done
    except (BadImage, DecodeBusy):
        raise
    except UnidentifiedImageError:
        raise BadImage(f"the 'image' file is not an image format we can read ({FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise BadImage(f"image declares more pixels than MAX_IMAGE_PIXELS ({settings.MAX_IMAGE_PIXELS})", 413) \
            from None
    except Exception as exc:
        # Truncated files, corrupt chunks, unsupported sub-formats, and whatever else a decoder raises
        # (RuntimeError, NotImplementedError, MemoryError ...): the client's file, so a 400, never a 500.
        # The usual kinds are logged by the caller's request.rejected; others are worth a look.
        message = str(exc)[:200] or type(exc).__name__
        usual = isinstance(exc, (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError))
        log("decode.failed", level="DEBUG" if usual else "WARNING", format=fmt, type=type(exc).__name__,
            error=message)
        raise BadImage(f"the 'image' file could not be decoded ({fmt}): {message}") from None
    if array.shape != (height, width, 3):
        raise BadImage(f"the image decoded to an unexpected shape {array.shape}")
    return array
