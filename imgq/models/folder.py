"""A model folder: the user's own image classifier, served by `MODEL=/path/to/folder` (docs/models.md#your-own-model).

    my_model/
        labels.txt      one label per line, in class-index order (required)
        model.keras     exactly one model: model.keras or model.h5 (Keras), saved_model/ (a TensorFlow
                        SavedModel) or model.tflite (LiteRT)
        config.json     optional: what the model itself cannot say (CONFIG_KEYS)

Where it sits: upload → job → Redis → worker → registry.load_model → *this file* → result. Two sides use it:

- the web server calls input_size(folder) to resize uploads, without TensorFlow: config.json's input_size, else the
  .tflite's input tensor (ai_edge_litert, light), else the Keras file's own model config (the .keras zip's
  config.json, the .h5's model_config attribute) parsed for the input layer's batch shape. A SavedModel's
  signature cannot be read without TensorFlow, so a SavedModel folder must give input_size in config.json.
- the worker calls load(folder, runtime, ...): the light checks again, then the model itself; Keras and SavedModel
  models are converted once to LiteRT, checked against the source model on CHECK_IMAGES images (the same top-1;
  the largest probability difference is logged), and cached in MODEL_CACHE_DIR like Lite0's conversion.

Every problem is a ModelUnavailable of one line that starts with the file it is about; run_model_server.py logs it
as worker.cannot_start and exits 2. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from imgq.errors import ModelUnavailable
from imgq.observe.logutil import log

LABELS = "labels.txt"
CONFIG = "config.json"
# The file (or folder) names a model may have, and the format each one is.
MODEL_FILES = {"model.keras": "keras", "model.h5": "keras", "saved_model": "saved_model", "model.tflite": "tflite"}
# config.json's keys and what each accepts (docs/models.md has the same table).
CONFIG_KEYS = {
    "input_size": "[height, width]: the size uploads are resized to (needed when the model's is not fixed, and "
                  "always for a saved_model/)",
    "scale": 'a number the 0..255 pixels are multiplied by, or "0..255" (default), "0..1", "-1..1"',
    "offset": "a number added after scale (default 0; only with a numeric scale)",
    "channel_order": '"RGB" (default) or "BGR"',
    "top_k": "how many labels an answer lists (default 5)",
    "output": '"probabilities" (default) or "logits" (the worker applies softmax)',
}
# The pixel ranges `scale` may name: (scale, offset) applied to float32 pixels 0..255.
SCALES = {"0..255": (1.0, 0.0), "0..1": (1 / 255, 0.0), "-1..1": (1 / 127.5, -1.0)}
TOP_K = 5
# The conversion check: a few seeded random images and a few solid colours, at the model's input size.
CHECK_SEED = 23
CHECK_RANDOM = 4
CHECK_SOLIDS = ((0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255))
# Two top classes of the source model closer than this are a tie: either answer agrees with it.
CHECK_TIE = 1e-4
# Bump when the conversion below changes the file it writes (part of the cache file's name).
FOLDER_RECIPE = 1


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """config.json's settings, defaults filled in. (scale, offset) map float32 pixels 0..255 to the model's range."""

    input_size: tuple[int, int] | None = None
    scale: float = 1.0
    offset: float = 0.0
    channel_order: str = "RGB"
    top_k: int | None = None  # None: TOP_K, or every class of a model with fewer
    output: str = "probabilities"

    @property
    def default_pixels(self) -> bool:
        return (self.scale, self.offset, self.channel_order) == (1.0, 0.0, "RGB")


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A model folder that passed the checks that need no model runtime."""

    path: str  # absolute
    name: str  # what results say: the folder's base name, lower case, [a-z0-9_-]
    kind: str  # keras, saved_model or tflite (MODEL_FILES)
    model_path: str
    labels: list[str]
    config: FolderConfig

    @property
    def labels_path(self) -> str:
        return os.path.join(self.path, LABELS)

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, CONFIG)


def _first_line(exc: BaseException) -> str:
    """An exception as one short line: the first non-empty line of its text, else its type."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def name_of(path: str) -> str:
    """The name results carry for the folder at `path`: its base name in lower case, other characters than
    a-z 0-9 _ - made _ ("My Model.v2" → my_model_v2)."""
    base = os.path.basename(os.path.normpath(os.path.abspath(path)))
    return re.sub(r"[^a-z0-9_-]+", "_", base.lower()).strip("_-") or "model"


def is_folder(source: str) -> bool:
    return os.path.isdir(os.path.expanduser(source))


# --- the checks that need no model runtime (the web server's and the worker's) ---------------------------------
def read_labels(path: str) -> list[str]:
    """labels.txt: one label per line (surrounding spaces dropped), blank lines only at the end."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelUnavailable(f"{path}: missing; a model folder needs labels.txt, one label per line in "
                               f"class-index order") from None
    except OSError as exc:
        raise ModelUnavailable(f"{path}: cannot be read ({exc.strerror or _first_line(exc)})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelUnavailable(f"{path}: not UTF-8 text (byte {exc.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ModelUnavailable(f"{path}: holds no labels; write one label per line, in class-index order")
    for number, line in enumerate(lines, 1):
        if not line:
            raise ModelUnavailable(f"{path}: line {number} is empty; every class needs a label, in class-index order")
    return lines


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_config(path: str) -> FolderConfig:
    """config.json (optional): a JSON object of CONFIG_KEYS. Unknown keys are refused: a misspelt key would
    otherwise be silently ignored."""
    if not os.path.exists(path):
        return FolderConfig()
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelUnavailable(f"{path}: not a JSON file ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{path}: must be a JSON object such as {{\"input_size\": [224, 224]}}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ModelUnavailable(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(CONFIG_KEYS)}")

    def bad(key: str) -> ModelUnavailable:
        return ModelUnavailable(f"{path}: {key}={json.dumps(data[key])} is not accepted; {key} is {CONFIG_KEYS[key]}")

    fields: dict[str, Any] = {}
    if "input_size" in data:
        size = data["input_size"]
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise bad("input_size")
        fields["input_size"] = (size[0], size[1])
    if "scale" in data:
        scale = data["scale"]
        if isinstance(scale, str) and scale.strip() in SCALES:
            if "offset" in data:
                raise ModelUnavailable(f"{path}: offset goes with a numeric scale, not with scale={json.dumps(scale)}")
            fields["scale"], fields["offset"] = SCALES[scale.strip()]
        elif _number(scale) and scale != 0:
            fields["scale"] = float(scale)
        else:
            raise bad("scale")
    if "offset" in data:
        if not _number(data["offset"]):
            raise bad("offset")
        fields["offset"] = float(data["offset"])
    if "channel_order" in data:
        order = data["channel_order"]
        if not (isinstance(order, str) and order.strip().upper() in ("RGB", "BGR")):
            raise bad("channel_order")
        fields["channel_order"] = order.strip().upper()
    if "top_k" in data:
        top_k = data["top_k"]
        if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0):
            raise bad("top_k")
        fields["top_k"] = top_k
    if "output" in data:
        output = data["output"]
        if not (isinstance(output, str) and output.strip().lower() in ("probabilities", "logits")):
            raise bad("output")
        fields["output"] = output.strip().lower()
    return FolderConfig(**fields)


def read(path: str) -> ModelFolder:
    """The folder at `path`, checked as far as can be without a model runtime: one model file, labels.txt,
    config.json. Raises ModelUnavailable (one line naming the file)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ModelUnavailable(f"{path}: not a folder; MODEL is a built-in model's name or a model folder's path")
    found = [n for n in MODEL_FILES if os.path.exists(os.path.join(path, n))]
    if not found:
        raise ModelUnavailable(f"{path}: no model in the folder; put exactly one of {', '.join(MODEL_FILES)} there")
    if len(found) > 1:
        raise ModelUnavailable(f"{path}: {' and '.join(found)} are both there; a model folder holds exactly one model")
    model_path = os.path.join(path, found[0])
    kind = MODEL_FILES[found[0]]
    if (kind == "saved_model") != os.path.isdir(model_path):
        shape = "a folder" if kind == "saved_model" else "a file"
        raise ModelUnavailable(f"{model_path}: must be {shape}")
    labels = read_labels(os.path.join(path, LABELS))
    config = read_config(os.path.join(path, CONFIG))
    if config.top_k is not None and config.top_k > len(labels):
        raise ModelUnavailable(f"{os.path.join(path, CONFIG)}: top_k={config.top_k} but {LABELS} names "
                               f"{len(labels)} classes")
    return ModelFolder(path, name_of(path), kind, model_path, labels, config)


def _keras_batch_shape(config: Any) -> list[Any] | None:
    """The input layer's batch shape in a Keras model config ({"class_name": ..., "config": {...}}): Keras 3's
    InputLayer batch_shape, Keras 2's batch_input_shape, else a subclassed model's build_config."""
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    layers = [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []
    inputs = [layer for layer in layers if layer.get("class_name") == "InputLayer"]
    if len(inputs) > 1:
        raise ValueError(f"{len(inputs)} input layers")
    # No InputLayer: a Keras 2 Sequential model whose first layer carries the shape.
    for layer in inputs or layers[:1]:
        layer_config = layer.get("config")
        if isinstance(layer_config, dict):
            shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
            if isinstance(shape, list):
                return shape
    build = config.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    return list(shape) if isinstance(shape, list) else None


def _keras_input_shape(model_path: str) -> list[Any] | None:
    """The Keras file's input batch shape from its saved model config (no TensorFlow, no weights read)."""
    if model_path.endswith(".keras"):
        try:
            with zipfile.ZipFile(model_path) as archive:
                text = archive.read("config.json")
        except zipfile.BadZipFile:
            raise ModelUnavailable(f"{model_path}: not a Keras file (a .keras file is a zip archive; this one "
                                   f"is corrupt or something else)") from None
        except KeyError:
            raise ModelUnavailable(f"{model_path}: a zip archive without config.json, not a Keras model") from None
        except OSError as exc:
            raise ModelUnavailable(f"{model_path}: cannot be read ({exc.strerror or _first_line(exc)})") from None
    else:
        try:
            import h5py  # type: ignore[import-untyped]
        except ImportError:
            raise ModelUnavailable(f"{model_path}: reading a .h5 model needs h5py (pip install h5py), or give "
                                   f"input_size in {CONFIG}") from None
        try:
            with h5py.File(model_path, "r") as f:
                text = f.attrs.get("model_config")
        except OSError as exc:
            raise ModelUnavailable(f"{model_path}: not an HDF5 file, or a corrupt one ({_first_line(exc)})") from None
        if text is None:
            raise ModelUnavailable(f"{model_path}: holds weights only (no model_config); save the whole model "
                                   f"with model.save()")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ModelUnavailable(f"{model_path}: its model config is not JSON ({_first_line(exc)})") from None
    try:
        return _keras_batch_shape(config)
    except ValueError as exc:
        raise ModelUnavailable(f"{model_path}: has {exc}; a classifier takes one image batch") from None


def _tflite_details(model_path: str, content: bytes | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The .tflite's one input and one output tensor (ai_edge_litert's details; no TensorFlow). content: the
    file's bytes, when already read."""
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=model_path) if content is None else Interpreter(model_content=content)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelUnavailable(f"{model_path}: not a LiteRT (.tflite) model, or a corrupt one "
                               f"({_first_line(exc)})") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelUnavailable(f"{model_path}: has {len(inputs)} inputs and {len(outputs)} outputs; a classifier "
                               f"takes one image batch and gives one row of class scores per image")
    return inputs[0], outputs[0]


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("None" if d is None or d == -1 else str(d) for d in shape) + "]"


def check_input_shape(folder: ModelFolder, shape: Sequence[Any] | None) -> tuple[int, int]:
    """The (height, width) uploads are resized to, from the model's input batch shape (None or -1 = free) and
    config.json's input_size. Raises ModelUnavailable on a shape that is not a batch of RGB images."""
    file, configured = folder.model_path, folder.config.input_size
    if shape is None:
        if configured is None:
            why = ("a SavedModel's input size cannot be read without TensorFlow" if folder.kind == "saved_model"
                   else "its input size cannot be read from the file")
            raise ModelUnavailable(f"{file}: {why}; give \"input_size\": [height, width] in {folder.config_path}")
        return configured
    dims = [None if d is None or d == -1 else int(d) for d in shape]
    if len(dims) != 4:
        raise ModelUnavailable(f"{file}: input shape {_shape_text(shape)} has rank {len(dims)}; a model folder's "
                               f"model takes a batch of images, [batch, height, width, 3]")
    if dims[3] != 3:
        raise ModelUnavailable(f"{file}: input shape {_shape_text(shape)} takes {dims[3]} channel(s) per pixel; "
                               f"the service sends RGB images, [batch, height, width, 3] (channels last)")
    height, width = dims[1], dims[2]
    if configured is None:
        if height is None or width is None:
            raise ModelUnavailable(f"{file}: input shape {_shape_text(shape)} has no fixed size; give "
                                   f"\"input_size\": [height, width] in {folder.config_path}")
        return height, width
    if (height is not None and height != configured[0]) or (width is not None and width != configured[1]):
        raise ModelUnavailable(f"{folder.config_path}: input_size {list(configured)} but {file} takes "
                               f"{_shape_text(shape)}")
    return configured


def light_input_shape(folder: ModelFolder) -> list[Any] | None:
    """The model's input batch shape as its file says without TensorFlow (None: cannot be read so)."""
    if folder.kind == "tflite":
        return [int(d) for d in _tflite_details(folder.model_path)[0]["shape_signature"]]
    if folder.kind == "keras":
        try:
            return _keras_input_shape(folder.model_path)
        except ModelUnavailable:
            if folder.config.input_size is None:
                raise
            return None  # the worker's Keras load says what is wrong; input_size is known anyway
    if not any(os.path.exists(os.path.join(folder.model_path, n)) for n in ("saved_model.pb", "saved_model.pbtxt")):
        raise ModelUnavailable(f"{folder.model_path}: holds no saved_model.pb; export the model there with "
                               f"model.export() or tf.saved_model.save()")
    return None


def input_size(path: str) -> tuple[int, int]:
    """The (height, width) the web server resizes uploads to for the model folder at `path`. Imports no
    TensorFlow. Raises ModelUnavailable."""
    folder = read(path)
    return check_input_shape(folder, light_input_shape(folder))


def labels(path: str) -> list[str]:
    """The folder's labels, in class-index order (labels.txt; checked, no model runtime)."""
    return read(path).labels


# --- the worker's side ------------------------------------------------------------------------------------------
class FolderModel:
    """A model folder's classifier behind the worker's interface (registry.Model). The runner (LiteRT or
    TensorFlow) already applies the config's pixel scaling and channel order; this adds softmax for a model
    whose output is logits, and carries the folder's name, labels and top_k."""

    def __init__(self, folder: ModelFolder, runner: Any) -> None:
        self.folder = folder
        self.name = folder.name
        self.runner = runner
        self.runtime: str = runner.runtime
        self.threads: int = runner.threads
        self.input_size: tuple[int, int] = runner.input_size
        self.labels = folder.labels
        self.top_k = folder.config.top_k or min(TOP_K, len(folder.labels))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return finish(self.folder.config, self.runner.predict(batch))

    def free_in(self) -> float | None:
        return self.runner.free_in()

    def warm_up(self, batch_size: int) -> None:
        self.runner.warm_up(batch_size)


def finish(config: FolderConfig, scores: np.ndarray) -> np.ndarray:
    """The model's output as probabilities (softmax of logits when config.json says output: logits)."""
    scores = np.asarray(scores, dtype=np.float32)
    if config.output != "logits":
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def numpy_prepare(config: FolderConfig) -> Callable[[np.ndarray], np.ndarray] | None:
    """float32 pixels 0..255 (RGB) → the model's input, for a .tflite run as it is (None: as they are)."""
    if config.default_pixels:
        return None
    scale, offset, bgr = np.float32(config.scale), np.float32(config.offset), config.channel_order == "BGR"

    def prepare(pixels: np.ndarray) -> np.ndarray:
        if bgr:
            pixels = pixels[..., ::-1]
        return np.ascontiguousarray(pixels * scale + offset, dtype=np.float32)

    return prepare


def tensorflow_prepare(config: FolderConfig) -> Callable[[Any], Any] | None:
    """The same as numpy_prepare, as TensorFlow ops: part of the tf.function and of the converted .tflite."""
    if config.default_pixels:
        return None
    scale, offset, bgr = config.scale, config.offset, config.channel_order == "BGR"

    def prepare(x: Any) -> Any:
        if bgr:
            x = x[..., ::-1]
        return x * scale + offset

    return prepare


def _check_classes(folder: ModelFolder, output_shape: Sequence[Any]) -> None:
    dims = [None if d is None or d == -1 else int(d) for d in output_shape]
    if len(dims) != 2 or dims[1] is None:
        raise ModelUnavailable(f"{folder.model_path}: output shape {_shape_text(output_shape)}; a classifier gives "
                               f"[batch, classes], one score per class")
    if dims[1] != len(folder.labels):
        raise ModelUnavailable(f"{folder.labels_path}: {len(folder.labels)} labels, but {folder.model_path} gives "
                               f"{dims[1]} classes; write one label per class, in class-index order")


def _load_tflite(folder: ModelFolder, size: tuple[int, int], threads: int) -> Any:
    from imgq.models import litert_runtime
    inp, out = _tflite_details(folder.model_path)
    if np.dtype(inp["dtype"]) != np.float32 or np.dtype(out["dtype"]) != np.float32:
        raise ModelUnavailable(f"{folder.model_path}: takes {np.dtype(inp['dtype']).name} and gives "
                               f"{np.dtype(out['dtype']).name}; a model folder's .tflite takes and gives float32 "
                               f"(quantized inputs and outputs are not supported)")
    _check_classes(folder, [int(d) for d in out["shape_signature"]])
    with open(folder.model_path, "rb") as f:
        content = f.read()
    try:
        return litert_runtime.LiteRTModel(folder.name, content, size, folder.labels, threads,
                                          prepare=numpy_prepare(folder.config))
    except (ValueError, RuntimeError) as exc:
        raise ModelUnavailable(f"{folder.model_path}: LiteRT cannot run it ({_first_line(exc)})") from None


def _tensorflow() -> Any:
    try:
        from imgq.models.tensorflow_runtime import tensorflow
        return tensorflow()
    except ImportError:
        raise ModelUnavailable("TensorFlow is not installed: a Keras or SavedModel folder needs it to load and "
                               "convert the model (pip install 'imgq[tensorflow]'), or put a model.tflite in the "
                               "folder instead") from None


def _load_source(folder: ModelFolder, size: tuple[int, int]) -> Any:
    """The model as TensorFlow runs it: a callable f(x, training=False) on float32 batches, checked against the
    labels and the input size. Imports TensorFlow."""
    tf = _tensorflow()
    if folder.kind == "keras":
        import keras
        try:
            model = keras.saving.load_model(folder.model_path, compile=False)
        except Exception as exc:  # Keras raises anything from ValueError to OSError for a bad file
            raise ModelUnavailable(f"{folder.model_path}: Keras cannot load it ({_first_line(exc)})") from None
        inputs, outputs = list(getattr(model, "inputs", None) or []), list(getattr(model, "outputs", None) or [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelUnavailable(f"{folder.model_path}: has {len(inputs)} inputs and {len(outputs)} outputs; a "
                                   f"classifier takes one image batch and gives one row of class scores per image")
        check_input_shape(folder, list(inputs[0].shape))
        _check_classes(folder, list(outputs[0].shape))
        return model
    try:
        loaded = tf.saved_model.load(folder.model_path)
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise ModelUnavailable(f"{folder.model_path}: has no serving_default signature; export it with "
                               f"model.export() or tf.saved_model.save(model, path)") from None
    except Exception as exc:
        raise ModelUnavailable(f"{folder.model_path}: TensorFlow cannot load it ({_first_line(exc)})") from None
    args, kwargs = signature.structured_input_signature
    specs, outputs = list(args) + list(kwargs.values()), signature.structured_outputs
    if len(specs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
        raise ModelUnavailable(f"{folder.model_path}: its serving_default signature has {len(specs)} inputs and "
                               f"{len(outputs) if isinstance(outputs, dict) else '?'} outputs; a classifier takes "
                               f"one image batch and gives one row of class scores per image")
    check_input_shape(folder, specs[0].shape.as_list())
    (output_name, output_spec), = outputs.items()
    _check_classes(folder, output_spec.shape.as_list())
    input_name = next(iter(kwargs)) if kwargs else None

    module: Any = tf.Module

    class Signature(module):  # a tf.Module: trackable, so the converter can freeze its variables
        def __init__(self) -> None:
            super().__init__()
            self.loaded = loaded

        def __call__(self, x: Any, training: bool = False) -> Any:
            result = signature(**{input_name: x}) if input_name else signature(x)
            return result[output_name]

    return Signature()


def content_hash(folder: ModelFolder, size: tuple[int, int]) -> str:
    """What the converted .tflite depends on: the model's bytes (every file of a saved_model/), the input size and
    the pixel preparation built into it."""
    from imgq.models.litert_runtime import file_sha256
    digest = hashlib.sha256()
    if os.path.isdir(folder.model_path):
        for root, dirs, files in os.walk(folder.model_path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(f"{os.path.relpath(full, folder.model_path)}\0{file_sha256(full)}\0".encode())
    else:
        digest.update(file_sha256(folder.model_path).encode())
    c = folder.config
    digest.update(f"{size}|{c.scale!r}|{c.offset!r}|{c.channel_order}|r{FOLDER_RECIPE}".encode())
    return digest.hexdigest()


def check_images(size: tuple[int, int]) -> np.ndarray:
    """The conversion check's images: CHECK_RANDOM seeded random ones, then the CHECK_SOLIDS colours."""
    rng = np.random.default_rng(CHECK_SEED)
    noise = rng.integers(0, 256, size=(CHECK_RANDOM, *size, 3), dtype=np.uint8)
    solids = np.array([np.full((*size, 3), colour, dtype=np.uint8) for colour in CHECK_SOLIDS])
    return np.concatenate([noise, solids])


def check_conversion(folder: ModelFolder, reference: Any, converted: Any) -> float:
    """The converted model against its source on check_images(): the same top-1 on each (a tie in the source
    allows either), else ModelUnavailable. Returns and logs the largest probability difference."""
    batch = check_images(reference.input_size)
    want, got = finish(folder.config, reference.predict(batch)), finish(folder.config, converted.predict(batch))
    difference = float(np.max(np.abs(want - got)))
    for i, (row, top) in enumerate(zip(want, got.argmax(axis=1))):
        if row[top] < row.max() - CHECK_TIE:
            raise ModelUnavailable(
                f"{folder.model_path}: its LiteRT conversion disagrees with it on check image {i} (top-1 class "
                f"{int(top)} instead of {int(row.argmax())}; largest probability difference {difference:.3g}); "
                f"serve it with MODEL_RUNTIME=tensorflow")
    log("model.conversion_checked", model=folder.name, images=len(batch), top1_equal=len(batch),
        max_difference=float(f"{difference:.3g}"), level="WARNING" if difference > 1e-3 else "INFO")
    return difference


def load(path: str, runtime: str, threads: int, cache_dir: str) -> FolderModel:
    """The worker's model for the folder at `path` on `runtime` (litert or tensorflow), not yet warmed up.

    litert: a .tflite runs as it is; a Keras or SavedModel model is read from MODEL_CACHE_DIR when this model's
    conversion is there (no TensorFlow imported), else converted, checked against its source and cached.
    tensorflow: the Keras or SavedModel model itself, one tf.function per batch (a .tflite is refused).
    """
    from imgq.models import litert_runtime
    folder = read(path)
    size = check_input_shape(folder, light_input_shape(folder))
    log("model.folder", model=folder.name, path=folder.path, format=os.path.basename(folder.model_path),
        classes=len(folder.labels), input_size=f"{size[0]}x{size[1]}", runtime=runtime)
    if folder.kind == "tflite":
        if runtime == "tensorflow":
            raise ModelUnavailable(f"{folder.model_path}: a .tflite runs on LiteRT only; unset MODEL_RUNTIME or "
                                   f"set it to litert (or auto)")
        return FolderModel(folder, _load_tflite(folder, size, threads))
    prepare = tensorflow_prepare(folder.config)
    if runtime == "tensorflow":
        from imgq.models.tensorflow_runtime import KerasModel
        return FolderModel(folder, KerasModel(folder.name, _load_source(folder, size), prepare, size, folder.labels))
    cache_file = litert_runtime.cache_path(cache_dir, folder.name, content_hash(folder, size))
    if os.path.exists(cache_file):
        try:
            with open(cache_file, "rb") as f:
                content = f.read()
            output = _tflite_details(cache_file, content)[1]
        except Exception as exc:  # truncated, foreign or unreadable: convert again and replace it
            log("model.cache_unreadable", level="WARNING", path=cache_file, error=_first_line(exc)[:200])
        else:
            # The conversion is keyed by the model, not the labels: labels.txt is checked against it here.
            _check_classes(folder, [int(d) for d in output["shape_signature"]])
            runner = litert_runtime.LiteRTModel(folder.name, content, size, folder.labels, threads)
            log("model.tflite", model=folder.name, cached=True, path=cache_file)
            return FolderModel(folder, runner)
    log("model.converting", model=folder.name, to=cache_file, note="to LiteRT: once; later starts read the cache")
    started = time.perf_counter()
    source = _load_source(folder, size)
    from imgq.models.tensorflow_runtime import KerasModel
    reference = KerasModel(folder.name, source, prepare, size, folder.labels)
    try:
        content = litert_runtime.convert(source, size, prepare)
        runner = litert_runtime.LiteRTModel(folder.name, content, size, folder.labels, threads)
    except Exception as exc:  # the converter's errors are long; its first line says which op or shape
        raise ModelUnavailable(f"{folder.model_path}: the conversion to LiteRT failed ({_first_line(exc)}); "
                               f"serve it with MODEL_RUNTIME=tensorflow") from None
    check_conversion(folder, reference, runner)
    litert_runtime.save_to_cache(cache_file, content)
    log("model.tflite", model=folder.name, cached=False, path=cache_file,
        convert_s=round(time.perf_counter() - started, 1), source=folder.model_path)
    return FolderModel(folder, runner)
