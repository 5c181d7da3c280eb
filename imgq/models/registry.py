"""The models a worker can serve, behind one small interface.

    model = load_model("auto")           # in the worker, once
    probabilities = model.predict(batch) # batch: uint8 (n, h, w, 3) → float32 (n, 1000)
    model.labels[i]                      # Keras decode_predictions-style names: "castle", "military_uniform"

Each model declares its input size here (INPUT_SIZES) so the web server can prepare pixels without
importing TensorFlow; each applies its own normalisation inside predict(). The stand-in model is for fast
queue tests and benchmarks only: it is never the default and says "standin" in every result.

Where it sits: upload → job → Redis → worker → *model* → result. The real models are resnet50 (Keras
application; ImageNet weights from RESNET50_WEIGHTS or the Keras cache, downloaded only on request:
RESNET50_DOWNLOAD=1 or `python -m imgq.models --download-resnet50`, resnet50.py) and efficientnet_lite0
(efficientnet_lite0.py; weights ship with pip). MODEL=auto serves ResNet50 when a local weights file
exists, else Lite0, and never downloads.

Each real model runs on one of two runtimes (MODEL_RUNTIME): `tensorflow` (one tf.function call per batch,
the reference and the conversion source) or `litert` (the same Keras model converted to .tflite and run by
LiteRT's interpreter with XNNPACK, litert_runtime.py). `auto` picks AUTO_RUNTIME[model], the one measured
fastest. TensorFlow is imported only when a model runs on it or is being converted (a LiteRT cache hit
does not import it).

MODEL may also be a model folder's path: the user's own classifier and its labels (folder.py has the format and
the checks). Its name in results is the folder's base name; it runs on LiteRT unless MODEL_RUNTIME=tensorflow.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from imgq import settings
from imgq.errors import ModelUnavailable
from imgq.models import folder, resnet50, standin
from imgq.models.labels import imagenet_labels
from imgq.models.standin import StandinModel
from imgq.models.tensorflow_runtime import model_threads
from imgq.observe.logutil import log

# (height, width) of each model's input. The web server resizes uploads to this.
INPUT_SIZES = {
    "resnet50": resnet50.INPUT_SIZE,
    "efficientnet_lite0": (224, 224),
    "standin": standin.INPUT_SIZE,
}
REAL_MODELS = ("resnet50", "efficientnet_lite0")
RUNTIMES = ("litert", "tensorflow")
# MODEL_RUNTIME=auto: the runtime measured fastest for each model on the 2-core VM (docs/models.md). ResNet50:
# LiteRT is faster at batch 1, TensorFlow's oneDNN kernels about 2x faster at batch 32 (the service's limit).
AUTO_RUNTIME = {"efficientnet_lite0": "litert", "resnet50": "tensorflow"}
# MODEL_RUNTIME=auto for a model folder: its Keras or SavedModel model converted once, or its own .tflite.
FOLDER_RUNTIME = "litert"
# LiteRT: images per invoke (None = the whole batch in one): Lite0 is fastest per image one at a time, ResNet50
# batched (litert_runtime's docstring has the figures).
LITERT_CHUNK = {"efficientnet_lite0": 1, "resnet50": None}


class Model(Protocol):
    """What the worker needs of a model: uint8 batches (n, h, w, 3) in, float32 probabilities (n, classes) out."""

    name: str
    runtime: str
    threads: int
    input_size: tuple[int, int]
    labels: list[str]

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def free_in(self) -> float | None:
        """Seconds until the model can start another batch while it runs one (lanes: litert_runtime.py); None
        for a model that runs one batch at a time."""

    def warm_up(self, batch_size: int) -> None: ...


def is_folder(name: str) -> bool:
    """True when MODEL (or `name`) is a model folder's path, not a built-in model's name."""
    return name not in INPUT_SIZES and name != "auto" and folder.is_folder(name)


def served_name(name: str | None = None) -> str:
    """The name results carry for MODEL (or `name`): a built-in model's own name, a folder's base name. auto
    stays auto: which real model it picks is known to the workers only."""
    name = name or settings.MODEL
    return folder.name_of(name) if is_folder(name) else name


def labels_of(name: str | None = None) -> list[str]:
    """The class names of MODEL (or `name`), in class-index order, without loading the model: a folder's
    labels.txt, else the ImageNet labels every built-in model answers with."""
    name = name or settings.MODEL
    return folder.labels(name) if is_folder(name) else imagenet_labels()


def input_size(name: str | None = None) -> tuple[int, int]:
    """The (height, width) the web server resizes uploads to for model `name` (default MODEL): a built-in's
    from INPUT_SIZES, a folder's from its config.json or its model file (folder.input_size; no TensorFlow)."""
    name = name or settings.MODEL
    if is_folder(name):
        return folder.input_size(name)
    if name == "auto":
        # Every model auto may pick takes the same size, so the web server need not know which one serves.
        sizes = {INPUT_SIZES[m] for m in REAL_MODELS}
        assert len(sizes) == 1, "auto needs one input size for all real models"
        return sizes.pop()
    if name not in INPUT_SIZES:
        raise ModelUnavailable(f"unknown MODEL {name!r}: choose auto, {', '.join(INPUT_SIZES)}, or a model "
                               f"folder's path")
    return INPUT_SIZES[name]


def runtime_for(name: str, runtime: str | None = None) -> str:
    """The runtime `name` runs on: MODEL_RUNTIME (or `runtime`), with auto resolved per model."""
    runtime = runtime or settings.MODEL_RUNTIME
    if runtime not in ("auto", *RUNTIMES):
        raise ModelUnavailable(f"unknown MODEL_RUNTIME {runtime!r}: choose auto, {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    return FOLDER_RUNTIME if is_folder(name) else AUTO_RUNTIME[name]


def _lite0_keras() -> tuple[Any, None]:
    from imgq.models import efficientnet_lite0
    from imgq.models.tensorflow_runtime import tensorflow
    tensorflow()  # before keras runs anything, so the thread settings still apply
    return efficientnet_lite0.build(), None


def _load(name: str, runtime: str) -> Model:
    """The real model `name` on `runtime`, not yet warmed up."""
    if name == "resnet50":
        weights = resnet50.weights()
        build = lambda: resnet50.build(weights)  # noqa: E731
    else:
        from imgq.models import efficientnet_lite0  # no TensorFlow at import
        weights = efficientnet_lite0.source_weights_path()
        build = _lite0_keras
    if runtime == "tensorflow":
        from imgq.models.tensorflow_runtime import KerasModel
        keras_model, preprocess = build()
        return KerasModel(name, keras_model, preprocess, INPUT_SIZES[name], imagenet_labels())
    from imgq.models import litert_runtime
    return litert_runtime.load(name, weights, INPUT_SIZES[name], imagenet_labels(), model_threads(),
                               settings.MODEL_CACHE_DIR, build, LITERT_CHUNK[name])


def choose_auto() -> tuple[str, str]:
    """MODEL=auto's choice without loading anything or downloading: (model name, reason)."""
    path, why = resnet50.find_weights()
    if path:
        return "resnet50", f"MODEL=auto and ResNet50 weights are at {path}"
    if settings.RESNET50_WEIGHTS:  # a file named on purpose but missing is a mistake to report, not hide
        raise ModelUnavailable(f"ResNet50 ImageNet weights unavailable: {why}. Fix RESNET50_WEIGHTS or unset it")
    if settings.RESNET50_DOWNLOAD:
        return "resnet50", "MODEL=auto and RESNET50_DOWNLOAD=1: downloading ResNet50 weights"
    return "efficientnet_lite0", (f"MODEL=auto: no local ResNet50 weights ({why}; set RESNET50_WEIGHTS, or "
                                  f"RESNET50_DOWNLOAD=1 to download them); serving EfficientNet-Lite0")


def load_model(name: str | None = None, runtime: str | None = None) -> Model:
    """Build the model named by `name` (default settings.MODEL) on `runtime` (default MODEL_RUNTIME), warmed
    up and ready to predict.

    auto = ResNet50 when a local weights file exists, else EfficientNet-Lite0 (never a download unless
    RESNET50_DOWNLOAD=1); one log line says which and why. A model folder's path loads the user's own model
    (folder.load). May raise ModelUnavailable.
    """
    name = name or settings.MODEL
    model: Model
    if is_folder(name):
        model = folder.load(name, runtime_for(name, runtime), model_threads(), settings.MODEL_CACHE_DIR)
    elif name == "standin":
        return StandinModel(settings.STANDIN_LATENCY_MS)
    elif name == "auto":
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
        input_size(name)  # an unknown name fails here, with the list of known ones
        model = _load(name, runtime_for(name, runtime))
    started = time.perf_counter()
    model.warm_up(settings.BATCH_SIZE)
    log("model.ready", model=model.name, runtime=model.runtime, threads=model.threads,
        batch_size=settings.BATCH_SIZE, batch_wait_ms=settings.BATCH_WAIT_MS,
        warm_up_s=round(time.perf_counter() - started, 2))
    return model
