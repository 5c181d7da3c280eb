"""ResNet50 (the course's model): Keras' application with ImageNet weights from a local file.

The weights cannot ship with pip (98 MB) and are never downloaded unless asked: RESNET50_WEIGHTS names a
local file, else Keras' cache (~/.keras/models) is looked in; RESNET50_DOWNLOAD=1 or
`python -m imgq.models --download-resnet50` fetches them on purpose.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from imgq import settings
from imgq.errors import ModelUnavailable
from imgq.models.tensorflow_runtime import tensorflow
from imgq.observe.logutil import log

INPUT_SIZE = (224, 224)
RESNET50_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


def _keras_cache_file() -> str:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", RESNET50_FILE)


def find_weights() -> tuple[str | None, str | None]:
    """(path, None) for a local ResNet50 weights file, or (None, why not). Does not download."""
    if settings.RESNET50_WEIGHTS:
        if os.path.isfile(settings.RESNET50_WEIGHTS):
            return settings.RESNET50_WEIGHTS, None
        return None, f"RESNET50_WEIGHTS={settings.RESNET50_WEIGHTS} is not a file"
    if os.path.isfile(_keras_cache_file()):
        return _keras_cache_file(), None
    return None, f"no RESNET50_WEIGHTS and no {_keras_cache_file()}"


def download_weights() -> tuple[str | None, str | None]:
    """(path, None) from Keras' own download (cached for next time, with a progress bar), or (None, why not).
    Only called when the user asked for it (RESNET50_DOWNLOAD=1, `python -m imgq.models --download-resnet50`)."""
    import keras
    url = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_FILE
    try:
        return keras.utils.get_file(RESNET50_FILE, url, cache_subdir="models",
                                    file_hash="2cb95161c43110f7111970584f804107"), None
    except Exception as exc:  # keras raises a bare Exception for network errors
        return None, f"download from storage.googleapis.com failed ({str(exc).splitlines()[0].split(' -- ')[-1]})"


def weights() -> str:
    """Path of ResNet50 ImageNet weights: RESNET50_WEIGHTS, else the Keras cache, else (only with
    RESNET50_DOWNLOAD=1) Keras' download.

    Raises ModelUnavailable (one line: what is missing, how to provide it) when none works.
    """
    path, why = find_weights()
    if path is None and not settings.RESNET50_WEIGHTS:  # an explicit file that is missing is an error, not a hint
        if settings.RESNET50_DOWNLOAD:
            path, download_why = download_weights()
            why = f"{why}; {download_why}"
        else:
            why = f"{why} (downloads only with RESNET50_DOWNLOAD=1 or `python -m imgq.models --download-resnet50`)"
    if path is None:
        raise ModelUnavailable(f"ResNet50 ImageNet weights unavailable: {why}. Set RESNET50_WEIGHTS to a local "
                               f"{RESNET50_FILE}, or use MODEL=efficientnet_lite0 (weights ship with pip)")
    return path


def build(path: str) -> tuple[Any, Any]:
    """(Keras ResNet50 with the weights at path, its preprocessing)."""
    tensorflow()  # before keras runs anything, so the thread settings still apply
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



def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Model files: fetch ResNet50's ImageNet weights on purpose.")
    parser.add_argument("--download-resnet50", action="store_true",
                        help=f"download Keras' {RESNET50_FILE} (98 MB, with progress) into the Keras cache")
    args = parser.parse_args(argv)
    if not args.download_resnet50:
        parser.print_help()
        return 2
    path, why = find_weights()
    if path is None:
        path, why = download_weights()
    if path is None:
        print(f"imgq.models: {why}", file=sys.stderr)
        return 1
    print(path)
    return 0


