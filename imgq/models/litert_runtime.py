"""The LiteRT runtime: a Keras model converted once to .tflite, cached, and run by LiteRT's interpreter (XNNPACK).

Where it sits: upload → job → Redis → worker → models.load_model → *this file* (when MODEL_RUNTIME picks
litert) → result. Keras stays the definition of every model: on a cache miss the worker builds the Keras
model with TensorFlow, converts it here and writes the .tflite into MODEL_CACHE_DIR under a name made of
the model, the weights file's content hash, the converter's (TensorFlow's) version and this file's recipe
version. A cache hit reads that file and never imports TensorFlow (only ai_edge_litert, a 10 MB wheel), so a
second start of a worker is fast. A file that does not load (truncated, foreign) is converted again.

Why the conversion goes through a frozen graph (experimental_lower_to_saved_model = False): TensorFlow's
default path for concrete functions lowers them to a SavedModel first, and for Keras 3's ResNet50 that path
keeps every weight as a resource variable (VAR_HANDLE + READ_VARIABLE ops, 320 of each): batch norm is then
not folded into the convolutions (RSQRT/SUB/MUL/ADD per layer), every kernel is TRANSPOSEd at run time and
XNNPACK gets the graph in ~50 pieces: 1,302 ops and a 235 KB file holding no weights, ~1.2 s per image.
Freezing the variables to constants first (convert_variables_to_constants_v2) gives 77 ops, all in one
XNNPACK delegate node, and a 102 MB file. (from_keras_model freezes too, but would leave the preprocessing
out; EfficientNet-Lite0 happened to be frozen already.)

The .tflite has a free batch dimension. predict() runs a batch in invokes of `chunk` images (None: the whole
batch in one), resizing the interpreter's input when the size changes: ~0.1 ms (~20 ms the first time a
larger size allocates). models.LITERT_CHUNK picks per model: with XNNPACK, Lite0 is fastest per image at
batch 1 (2 threads: 4.0 ms/image at batch 1, 4.3-4.8 at 8 and 32; 1 thread 7.9 against 8.3-9.6), ResNet50
batched (2 threads: ~40 ms at batch 1, ~33 at batch 8 and 32): measured 2026-12-01 on the shared 2-core VM.
A one-image-per-invoke model with more than one thread also runs its images on one-thread "lanes"
(LiteRTModel, MODEL_LANES), which can start the next batch while the last one's final image still runs.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import threading
import time
from collections.abc import Callable
from collections import deque
from typing import Any, cast

import numpy as np

from imgq import settings
from imgq.observe.logutil import log
from imgq.observe.threads import name_thread

# Bump when the conversion below changes in a way that changes the file (names the cache files).
RECIPE = 3


def converter_version() -> str:
    """TensorFlow's version, read from its package metadata (importing it would defeat the cache)."""
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(cache_dir: str, model_name: str, weights_hash: str) -> str:
    return os.path.join(cache_dir, f"{model_name}-{weights_hash[:16]}-tf{converter_version()}-r{RECIPE}.tflite")


def cached_path(cache_dir: str, model_name: str, weights_hash: str) -> str:
    """The cache file to read: cache_path(); where TensorFlow is not installed (the container image, which
    converts at build time and leaves TensorFlow out), the newest conversion of these weights by this recipe,
    whichever TensorFlow made it, since none could be made here."""
    path = cache_path(cache_dir, model_name, weights_hash)
    if os.path.exists(path) or converter_version() != "unknown":
        return path
    head, tail = f"{model_name}-{weights_hash[:16]}-tf", f"-r{RECIPE}.tflite"
    try:
        found = [os.path.join(cache_dir, n) for n in os.listdir(cache_dir) if n.startswith(head) and n.endswith(tail)]
    except OSError:
        return path
    return max(found, key=os.path.getmtime, default=path)


def convert(keras_model: Any, input_size: tuple[int, int], preprocess: Callable[[Any], Any] | None = None) -> bytes:
    """The .tflite bytes of keras_model (float32 pixels 0..255 in, probabilities out), preprocessing inside."""
    from imgq.models.tensorflow_runtime import tensorflow
    tf = tensorflow()
    height, width = input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
    def forward(x: Any) -> Any:
        if preprocess is not None:
            x = preprocess(x)
        return tf.cast(keras_model(x, training=False), tf.float32)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], keras_model)
    converter.experimental_lower_to_saved_model = False  # freeze the weights: see the module docstring
    return converter.convert()


class _Runner:
    """One interpreter, sized for `batch` images per invoke, and the lock that gives it to one caller at a time."""

    def __init__(self, interpreter: Any, batch: int, input_index: int, output_index: int,
                 input_size: tuple[int, int]) -> None:
        self.interpreter, self.batch, self.input_size = interpreter, batch, input_size
        self._input, self._output = input_index, output_index
        # One interpreter holds one set of tensors: two threads invoking it at once corrupt each other's
        # input ("There is at least 1 reference to internal data"). The worker calls it from one thread;
        # a caller with several (the Flask peer in bench/peers/) waits its turn here.
        self._lock = threading.Lock()

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(pixels) != self.batch:
                self.interpreter.resize_tensor_input(self._input, [len(pixels), *self.input_size, 3])
                self.interpreter.allocate_tensors()
                self.batch = len(pixels)
            self.interpreter.set_tensor(self._input, pixels)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._output).copy()  # the interpreter reuses its buffer


class LiteRTModel:
    """A .tflite classifier behind the worker's interface: uint8 batch in, float32 probabilities out.

    A model run one image per invoke (chunk 1) with `threads` > 1 gets, beside its interpreter of `threads`
    threads, min(`threads`, BATCH_SIZE) one-thread interpreters ("lanes", not the queue's priority lanes; _Lanes):
    a lone image while the lanes are idle goes to the `threads`-thread interpreter (every core on one image: the
    lowest latency when the machine is idle), every other image to the next free lane; the lanes run at once
    (LiteRT's invoke releases the GIL) and go from one batch's images to the next without waiting for each other.
    Why: one interpreter's threads meet at a barrier after every operator, so while the web server decodes an
    upload on one core, the model's thread on the other waits for its partner at each of Lite0's ~60 operators;
    independent one-thread lanes never wait for each other. Alone, both ways cost the same CPU per image.
    `make bench-tax` (docs/benchmarks.md) measures them against MODEL_LANES=0 beside the web server.
    Memory: about 26 MB per lane for Lite0 (a worker on 2 threads: 92 MB without lanes, 144 MB with them).
    """

    runtime = "litert"

    def __init__(self, name: str, content: bytes, input_size: tuple[int, int], labels: list[str], threads: int,
                 chunk: int | None = None, prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """prepare: float32 pixels 0..255 → the model's input, for a .tflite whose own graph does not scale
        (a model folder's config.json, folder.py); None: the pixels as they are."""
        self.name = name
        self.input_size = cast("tuple[int, int]", tuple(input_size))
        self.labels = labels
        self.threads = threads  # models.model_threads(): MODEL_THREADS with 0 already made every core
        self.chunk = chunk
        self._prepare = prepare
        self._runner = self._open(content, threads)
        self._lanes: _Lanes | None = None
        lanes = min(threads, settings.BATCH_SIZE)  # a batch never fills more: each lane costs an interpreter
        if self.chunk == 1 and lanes > 1 and settings.MODEL_LANES:
            self._lanes = _Lanes([self._open(content, 1) for _ in range(lanes)], self._runner, len(labels))

    def _open(self, content: bytes, threads: int) -> _Runner:
        from ai_edge_litert.interpreter import Interpreter
        # model_content (not model_path): the bytes were already read and checked by the caller.
        interpreter = Interpreter(model_content=content, num_threads=threads)
        # A free batch (-1), or a model folder's .tflite made for one image at a time (1: one per invoke);
        # a free height and width are set to input_size before anything is allocated (a placeholder size of
        # 1x1 may not even fit the model's convolutions).
        inp = interpreter.get_input_details()[0]
        signature, wanted = tuple(int(d) for d in inp["shape_signature"]), (*self.input_size, 3)
        fits = len(signature) == 4 and signature[0] in (-1, 1) \
            and all(d in (-1, w) for d, w in zip(signature[1:], wanted))
        if fits and tuple(inp["shape"][1:]) != wanted:
            interpreter.resize_tensor_input(inp["index"], [1, *wanted])
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        if not fits or tuple(out["shape"])[1:] != (len(self.labels),):
            raise ValueError(f"the .tflite takes {tuple(inp['shape_signature'])} → {tuple(out['shape'])}, "
                             f"not (-1, {self.input_size[0]}, {self.input_size[1]}, 3) → (n, {len(self.labels)})")
        if signature[0] == 1:
            self.chunk = 1
        return _Runner(interpreter, int(inp["shape"][0]), inp["index"], out["index"], self.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"{self.name} takes uint8 batches (n, {self.input_size[0]}, {self.input_size[1]}, 3), "
                             f"not {batch.shape}")
        pixels = batch.astype(np.float32)
        if self._prepare is not None:
            pixels = self._prepare(pixels)
        if self._lanes is not None:
            return self._lanes.run(pixels)
        step = self.chunk or len(batch)
        if step >= len(batch):
            return self._runner.invoke(pixels)
        return np.concatenate([self._runner.invoke(pixels[i:i + step]) for i in range(0, len(batch), step)])

    def __del__(self) -> None:
        if getattr(self, "_lanes", None) is not None:
            self._lanes.close()  # type: ignore[union-attr]

    def free_in(self) -> float | None:
        """Seconds until the model can start more work (0: now), while it runs a batch on its lanes; None for
        a model without lanes, which takes one batch at a time."""
        return self._lanes.free_in() if self._lanes is not None else None

    def warm_up(self, batch_size: int) -> None:
        """Run at batch_size, 2 and 1, so every interpreter (lanes included) has allocated the invoke sizes of real
        batches before the first job."""
        for n in sorted({1, 2, max(1, batch_size)}, reverse=True):
            self.predict(np.zeros((n, *self.input_size, 3), dtype=np.uint8))


class _Batch:
    """One predict() call's images on the lanes: its answers, its first error, and when its last image is done."""

    def __init__(self, pixels: np.ndarray, classes: int) -> None:
        self.pixels = pixels
        self.out = np.empty((len(pixels), classes), dtype=np.float32)
        self.left = len(pixels)
        self.error: BaseException | None = None
        self.done = threading.Event()


class _Lanes:
    """One-thread interpreters ("lanes"), each on a thread of its own, taking the images of every batch handed
    in one at a time, first come first served. A lane that has finished its share of one batch starts on the
    next batch at once, rather than idling until another lane finishes the batch's last image (that tail cost
    about half an image of one core per batch: 0.13 of the 2 cores at 4 clients, 0.09 at 16). A lone image
    while every lane is idle runs on the `wide` interpreter (all threads on one image: the lowest latency on an
    idle machine), in the caller's thread; meanwhile the lanes start nothing, so the two never share the cores."""

    def __init__(self, runners: list[_Runner], wide: _Runner, classes: int) -> None:
        self.runners, self.wide, self._classes = runners, wide, classes
        self._work: deque[tuple[_Batch, int]] = deque()
        self._cond = threading.Condition()
        self._wide_until: float | None = None   # while the wide interpreter runs: when it should be done
        # Per lane: when its image should be done; None while the lane is idle.
        self._busy_until: list[float | None] = [None] * len(runners)
        self._image_s = 0.0   # smoothed: one image on one lane
        self._wide_s = 0.0    # smoothed: one image on the wide interpreter
        self._closed = False
        for k, runner in enumerate(runners):
            threading.Thread(target=self._lane, args=(k, runner), name="lane", daemon=True).start()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.empty((0, self._classes), dtype=np.float32)
        with self._cond:
            wide = len(pixels) == 1 and not self._work and self._wide_until is None and \
                all(t is None for t in self._busy_until)  # every lane idle
            if wide:
                self._wide_until = time.monotonic() + self._wide_s
            else:
                batch = _Batch(pixels, self._classes)
                self._work.extend((batch, i) for i in range(len(pixels)))
                self._cond.notify_all()
        if wide:
            began = time.monotonic()
            try:
                return self.wide.invoke(pixels)
            finally:
                with self._cond:
                    self._wide_s = _smooth(self._wide_s, time.monotonic() - began)
                    self._wide_until = None
                    self._cond.notify_all()
        batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.out

    def free_in(self) -> float:
        with self._cond:
            now = time.monotonic()
            if self._wide_until is not None:
                return max(self._wide_until - now, 0.0)
            # The queued images go to the lanes as they come free: the (queued % lanes)-th lane to be free
            # after its current image (an idle one: now) is the first with nothing left to take.
            ends = sorted(max((t or now) - now, 0.0) for t in self._busy_until)
            queued = len(self._work)
            lanes = len(self.runners)
            return ends[queued % lanes] + queued // lanes * self._image_s

    def close(self) -> None:
        """The lane threads end once they finish what they run (the model is being dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _lane(self, k: int, runner: _Runner) -> None:
        name_thread("lane")
        while True:
            with self._cond:
                while not self._closed and (not self._work or self._wide_until is not None):
                    self._cond.wait()
                if self._closed:
                    return
                batch, i = self._work.popleft()
                began = time.monotonic()
                self._busy_until[k] = began + self._image_s
            error = None
            try:  # each lane writes its own rows
                batch.out[i] = runner.invoke(batch.pixels[i:i + 1])[0]
            except BaseException as exc:  # the batch's failure, not the lane's: it goes on with the next image
                error = exc
            with self._cond:
                self._image_s = _smooth(self._image_s, time.monotonic() - began)
                self._busy_until[k] = None
                batch.error = batch.error or error
                batch.left -= 1
                if not batch.left:
                    batch.done.set()
                self._cond.notify_all()


def _smooth(old: float, new: float) -> float:
    return new if not old else 0.8 * old + 0.2 * new


def save_to_cache(path: str, content: bytes) -> None:
    """Write a conversion into the cache; a cache that cannot be written is logged, not fatal."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Write aside then rename: several workers may start at once, none may read a half-written file.
        partial = f"{path}.partial-{os.getpid()}"
        with open(partial, "wb") as f:
            f.write(content)
        os.replace(partial, path)
    except OSError as exc:  # a read-only cache costs the next start a conversion, nothing else
        log("model.cache_unwritable", level="WARNING", path=path, error=str(exc))


def load(name: str, weights_path: str, input_size: tuple[int, int], labels: list[str], threads: int, cache_dir: str,
         build_keras: Callable[[], tuple[Any, Any]], chunk: int | None = None) -> LiteRTModel:
    """A LiteRTModel for `name`, from the cache when it holds this weights file's conversion, else converted.

    build_keras() → (keras_model, preprocess) is called only on a miss (it imports TensorFlow).
    Logs model.tflite with cached=true/false and the file.
    """
    path = cached_path(cache_dir, name, file_sha256(weights_path))
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                model = LiteRTModel(name, f.read(), input_size, labels, threads, chunk)
            log("model.tflite", model=name, cached=True, path=path)
            return model
        except Exception as exc:  # truncated, foreign or unreadable: convert again and replace it
            log("model.cache_unreadable", level="WARNING", path=path, error=str(exc).splitlines()[0][:200])
    log("model.converting", model=name, to=path, note="to LiteRT: a few seconds, once; later starts read the cache")
    started = time.perf_counter()
    keras_model, preprocess = build_keras()
    content = convert(keras_model, input_size, preprocess)
    model = LiteRTModel(name, content, input_size, labels, threads, chunk)
    save_to_cache(path, content)
    log("model.tflite", model=name, cached=False, path=path, convert_s=round(time.perf_counter() - started, 1),
        weights=weights_path)
    return model
