"""Your own model, end to end: train a tiny Keras colour classifier on images this script makes itself, and save it
as a model folder the service serves with `MODEL=/path/to/folder` (docs/models.md#your-own-model).

    .venv/bin/python -m docs.own_model_example my_colours      # ~10 s: my_colours/model.keras + labels.txt
    MODEL=$PWD/my_colours make run
    curl --fail-with-body -F image=@my_colours_samples/red.png http://127.0.0.1:5000/predict

Nothing is downloaded: the training images are solid colours with noise, made here. `--format` saves the same
model as model.h5, saved_model/ (with the config.json a SavedModel folder needs) or model.tflite instead; the
tests (tests/test_model_folder.py) serve all four.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any

import numpy as np

# The classes, in class-index order (labels.txt's order), and the colour each one is drawn around.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
    "cyan": (30, 210, 220),
    "magenta": (210, 30, 210),
}
SIZE = (32, 32)
FORMATS = ("keras", "h5", "saved_model", "tflite")


def make_images(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Solid colours, each class's colour moved by up to ±40 per channel and sprinkled with pixel noise:
    uint8 images (n, 32, 32, 3) and their class indices."""
    rng = np.random.default_rng(seed)
    images, classes = [], []
    for index, colour in enumerate(COLOURS.values()):
        centre = np.array(colour, dtype=np.float32) + rng.uniform(-40, 40, size=(per_class, 1, 1, 3))
        noise = rng.normal(0, 12, size=(per_class, *SIZE, 3))
        images.append(np.clip(centre + noise, 0, 255).astype(np.uint8))
        classes.append(np.full(per_class, index))
    return np.concatenate(images), np.concatenate(classes)


def train(epochs: int = 25, seed: int = 0) -> Any:
    """A tiny CNN that takes float32 RGB pixels 0..255 (its Rescaling layer scales them), trained in seconds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((*SIZE, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(COLOURS), activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    images, classes = make_images(64, seed)
    model.fit(images.astype(np.float32), classes, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    return model


def save(model: Any, folder: str, fmt: str = "keras") -> str:
    """Write the model folder: labels.txt and the model in format `fmt`; returns the model's path."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("\n".join(COLOURS) + "\n")
    if fmt == "keras" or fmt == "h5":
        path = os.path.join(folder, f"model.{fmt}")
        model.save(path)
    elif fmt == "saved_model":
        path = os.path.join(folder, "saved_model")
        model.export(path, verbose=False)
        with open(os.path.join(folder, "config.json"), "w") as f:  # a SavedModel's size is not read by the web tier
            json.dump({"input_size": list(SIZE)}, f)
    elif fmt == "tflite":
        import tensorflow as tf
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    else:
        raise ValueError(f"format {fmt!r}: choose {', '.join(FORMATS)}")
    return path


def solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a tiny colour classifier on synthetic images and save it as "
                                                 "a model folder (MODEL=/path/to/folder serves it).")
    parser.add_argument("folder", help="the model folder to write (created)")
    parser.add_argument("--format", choices=FORMATS, default="keras", help="the model's file format (default keras)")
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)
    model = train(args.epochs)
    images, classes = make_images(16, seed=1)  # other images than the training ones
    accuracy = float(np.mean(model.predict(images.astype(np.float32), verbose=0).argmax(axis=1) == classes))
    path = save(model, args.folder, args.format)
    samples = os.path.normpath(args.folder) + "_samples"
    os.makedirs(samples, exist_ok=True)
    for name in ("red", "green", "blue"):
        with open(os.path.join(samples, f"{name}.png"), "wb") as f:
            f.write(solid_png({"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}[name]))
    folder = os.path.abspath(args.folder)
    print(f"saved {path} and {os.path.join(args.folder, 'labels.txt')} ({len(COLOURS)} classes; accuracy on new "
          f"images {accuracy:.0%})\nsample images in {samples}/\nserve it:  MODEL={folder} make run\nthen:      "
          f"curl --fail-with-body -F image=@{os.path.join(samples, 'red.png')} http://127.0.0.1:5000/predict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
