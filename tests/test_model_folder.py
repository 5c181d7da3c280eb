"""Your own model (MODEL=/path/to/folder): each format served alone through a real worker and web server, the
pixels a config.json asks for, and every bad folder refused at start in one line that names the problem and the file.

The model is trained here, once for the module, by docs/own_model_example.py: a tiny Keras CNN on solid colours
with noise (red, green, blue, yellow, cyan, magenta), so a solid red PNG must come back "red". It is saved as
model.keras, model.h5, saved_model/ and model.tflite; every format must give the Keras model's own top-1.
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from docs import own_model_example as example
from imgq import settings
from imgq.errors import ModelUnavailable
from imgq.models import folder as model_folder
from imgq.web import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = list(example.COLOURS)
SOLIDS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
          "cyan": (0, 255, 255), "magenta": (255, 0, 255)}

# Keras' h5 saving trips numpy 2's __array__(copy=) deprecation once per variable: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore:You are saving your model as an HDF5 file")


@pytest.fixture(scope="module")
def colour_model():
    return example.train()


@pytest.fixture(scope="module")
def folders(colour_model, tmp_path_factory):
    """One model folder per format, each named after it (colours_keras ...)."""
    root = tmp_path_factory.mktemp("model_folders")
    out = {}
    for fmt in example.FORMATS:
        path = str(root / f"colours_{fmt}")
        example.save(colour_model, path, fmt)
        out[fmt] = path
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh MODEL_CACHE_DIR: the first worker of each Keras / SavedModel folder converts and checks."""
    return str(tmp_path_factory.mktemp("model_cache"))


def png(colours, size=(64, 64)):
    """A PNG of vertical stripes, one per colour (one colour: a solid image)."""
    image = Image.new("RGB", size)
    step = size[0] // len(colours)
    for i, colour in enumerate(colours):
        image.paste(colour, (i * step, 0, size[0] if i == len(colours) - 1 else (i + 1) * step, size[1]))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def probe_images():
    """Each solid colour, then a few two-colour images whose answers are less obvious."""
    solid = [(name, png([colour])) for name, colour in SOLIDS.items()]
    mixed = [(f"{a}+{b}", png([SOLIDS[a], SOLIDS[b]])) for a, b in (("red", "blue"), ("green", "yellow"),
                                                                   ("cyan", "magenta"), ("blue", "yellow"))]
    return solid + mixed


def reference_top1(model, data):
    """The trained Keras model's own answer on an upload, prepared as the web server prepares it; None when its
    best two classes are within 0.05 (any runtime may differ there)."""
    pixels = images.prepare_image(data, example.SIZE)[None].astype(np.float32)
    row = model.predict(pixels, verbose=0)[0]
    first, second = np.sort(row)[::-1][:2]
    return LABELS[int(row.argmax())] if first - second > 0.05 else None


# --- each format, served alone ------------------------------------------------------------------------------
SERVED = [("keras", "auto"), ("h5", "auto"), ("saved_model", "auto"), ("tflite", "auto"), ("keras", "tensorflow"),
          ("saved_model", "tensorflow")]


@pytest.mark.parametrize("fmt,runtime", SERVED, ids=[f"{f}-{r}" for f, r in SERVED])
def test_each_format_served_alone_answers_with_its_own_labels(service, folders, cache, colour_model, fmt, runtime):
    path = folders[fmt]
    worker = service.start_worker(MODEL=path, MODEL_CACHE_DIR=cache, MODEL_RUNTIME=runtime)
    url, _ = service.start_web(MODEL=path)

    answer = requests.post(url + "/predict", files={"image": ("red.png", png([SOLIDS["red"]]))}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["model"] == f"colours_{fmt}"
    predictions = body["predictions"]
    assert len(predictions) == 5 and predictions[0]["label"] == "red" and predictions[0]["probability"] > 0.9
    assert {p["label"] for p in predictions} <= set(LABELS)
    assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)

    for name, data in probe_images():  # the same top-1 as the Keras model itself, so the same across formats
        want = reference_top1(colour_model, data)
        got = requests.post(url + "/predict", files={"image": ("i.png", data)}, timeout=60).json()
        if want is not None:
            assert got["predictions"][0]["label"] == want, (name, got)
        if name in SOLIDS:
            assert got["predictions"][0]["label"] == name, (name, got)

    log = worker.log_text()
    expected_runtime = "tensorflow" if runtime == "tensorflow" else "litert"
    assert re.search(rf"model\.ready model=colours_{fmt} runtime={expected_runtime}\b", log), log[-3000:]
    if fmt in ("keras", "h5", "saved_model") and runtime == "auto":  # converted once, checked before use
        assert "model.conversion_checked" in log and "top1_equal=9" in log, log[-3000:]


def test_a_second_start_reads_the_conversion_from_the_cache(folders, tmp_path, monkeypatch):
    def no_source(*_):
        raise AssertionError("the source model was loaded although its conversion is cached")

    first = model_folder.load(folders["keras"], "litert", 1, str(tmp_path))
    monkeypatch.setattr(model_folder, "_load_source", no_source)
    second = model_folder.load(folders["keras"], "litert", 1, str(tmp_path))
    batch = np.stack([np.full((*example.SIZE, 3), c, np.uint8) for c in SOLIDS.values()])
    assert np.array_equal(first.predict(batch), second.predict(batch))
    assert [LABELS[i] for i in second.predict(batch).argmax(axis=1)] == list(SOLIDS)


def test_the_web_servers_input_size_reads_every_format_without_tensorflow(folders):
    code = ("import json, sys; from imgq import models; "
            f"sizes = [models.input_size(p) for p in {list(folders.values())!r}]; "
            "print(json.dumps([sizes, 'tensorflow' in sys.modules, 'keras' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[list(example.SIZE)] * len(folders), False, False]


@pytest.mark.parametrize("shape", [[1, 32, 32, 3], [None, None, None, 3]], ids=["batch-of-one", "free-size"])
def test_a_tflite_made_for_one_image_or_any_size(colour_model, tmp_path, shape):
    import tensorflow as tf
    forward = tf.function(lambda x: colour_model(x), input_signature=[tf.TensorSpec(shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], colour_model)
    converter.experimental_lower_to_saved_model = False  # weights frozen in (litert_runtime.py says why)
    path = tmp_path / "colours"
    path.mkdir()
    (path / "model.tflite").write_bytes(converter.convert())
    (path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    if shape[1] is None:
        (path / "config.json").write_text('{"input_size": [32, 32]}')
    model = model_folder.load(str(path), "litert", 1, str(tmp_path / "cache"))
    model.warm_up(8)
    batch = np.stack([np.full((*example.SIZE, 3), c, np.uint8) for c in SOLIDS.values()])
    assert [LABELS[i] for i in model.predict(batch).argmax(axis=1)] == list(SOLIDS)


# --- what config.json asks for -------------------------------------------------------------------------------
def with_config(src, dst, config):
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return str(dst)


CONFIGS = [
    ({"channel_order": "BGR"}, lambda x: x[..., ::-1]),
    ({"scale": 0.5, "offset": 100}, lambda x: x * 0.5 + 100),
    ({"scale": "-1..1"}, lambda x: x / 127.5 - 1),
]
PIXEL_CASES = [(fmt, runtime, i) for fmt, runtime in (("keras", "litert"), ("keras", "tensorflow"),
                                                      ("tflite", "litert")) for i in range(len(CONFIGS))]


@pytest.mark.parametrize("fmt,runtime,case", PIXEL_CASES, ids=[f"{f}-{r}-{c}" for f, r, c in PIXEL_CASES])
def test_config_pixels_reach_the_model_as_configured(folders, colour_model, tmp_path, fmt, runtime, case):
    config, transform = CONFIGS[case]
    path = with_config(folders[fmt], tmp_path / "colours", config)
    model = model_folder.load(path, runtime, 1, str(tmp_path / "cache"))
    batch = np.concatenate([np.stack([np.full((*example.SIZE, 3), c, np.uint8) for c in SOLIDS.values()]),
                            np.random.default_rng(5).integers(0, 256, (3, *example.SIZE, 3), dtype=np.uint8)])
    want = colour_model.predict(transform(batch.astype(np.float32)), verbose=0)
    assert np.allclose(model.predict(batch), want, atol=1e-4)


def test_logits_get_a_softmax(folders, tmp_path):
    path = with_config(folders["tflite"], tmp_path / "colours", {"output": "logits"})
    model = model_folder.load(path, "litert", 1, str(tmp_path / "cache"))
    batch = np.stack([np.full((*example.SIZE, 3), c, np.uint8) for c in SOLIDS.values()])
    probabilities = model.runner.predict(batch)  # the model already ends in softmax: this applies a second one
    want = np.exp(probabilities) / np.exp(probabilities).sum(axis=1, keepdims=True)
    assert np.allclose(model.predict(batch), want, atol=1e-6)


# --- a folder that cannot be served: one line naming the problem and the file, exit 2 -------------------------
def run_worker(path, **env):
    clean = {k: v for k, v in os.environ.items() if k not in settings.__dict__}
    return subprocess.run([sys.executable, "run_model_server.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL,
                          env=dict(clean, MODEL=str(path), REDIS_URL="redis://127.0.0.1:1/0", **env))


def assert_refused(done, file, *words):
    """Exit 2, no traceback, one ERROR line: worker.cannot_start naming `file` and saying `words`."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, (done.returncode, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "worker.cannot_start" in errors[0], output[-3000:]
    assert str(file) in errors[0] and all(w in errors[0] for w in words), errors[0]


def keras_folder(tmp_path, model, labels=LABELS, name="model.keras"):
    tmp_path.mkdir(exist_ok=True)
    model.save(str(tmp_path / name))
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    return tmp_path


def test_labels_count_differs_from_the_models_classes(folders, tmp_path, cache):
    path = shutil.copytree(folders["keras"], tmp_path / "five_labels")
    (path / "labels.txt").write_text("\n".join(LABELS[:5]) + "\n")
    assert_refused(run_worker(path, MODEL_CACHE_DIR=cache), path / "labels.txt", "5 labels", "gives 6 classes")


def test_labels_count_differs_from_a_tflites_classes(folders, tmp_path):
    path = shutil.copytree(folders["tflite"], tmp_path / "seven_labels")
    (path / "labels.txt").write_text("\n".join(LABELS + ["black"]) + "\n")
    assert_refused(run_worker(path), path / "labels.txt", "7 labels", "gives 6 classes")


def test_a_cached_conversion_is_checked_against_changed_labels(folders, tmp_path):
    cache_dir = str(tmp_path / "cache")
    path = shutil.copytree(folders["keras"], tmp_path / "relabelled")
    model_folder.load(str(path), "litert", 1, cache_dir)
    (path / "labels.txt").write_text("\n".join(LABELS[:5]) + "\n")
    with pytest.raises(ModelUnavailable, match="5 labels, but .* gives 6 classes"):
        model_folder.load(str(path), "litert", 1, cache_dir)


@pytest.mark.parametrize("shape,words", [((32, 32), ("rank 3", "[batch, height, width, 3]")),
                                         ((32, 32, 1), ("1 channel(s)", "RGB"))], ids=["rank3", "grey"])
def test_an_input_that_is_not_a_batch_of_rgb_images(tmp_path, shape, words):
    import keras
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(keras.layers.Flatten()(inputs)))
    path = keras_folder(tmp_path / "bad_input", model)
    assert_refused(run_worker(path), path / "model.keras", *words)


def test_a_dynamic_input_size_needs_config_json(tmp_path):
    import keras
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    path = keras_folder(tmp_path / "dynamic", model)
    assert_refused(run_worker(path), path / "model.keras", "no fixed size", "input_size")
    (path / "config.json").write_text('{"input_size": [20, 24]}')
    assert model_folder.input_size(str(path)) == (20, 24)


@pytest.mark.parametrize("name,words", [("model.keras", ("not a Keras file",)),
                                        ("model.h5", ("not an HDF5 file",)),
                                        ("model.tflite", ("not a LiteRT",))])
def test_a_corrupt_model_file(tmp_path, name, words):
    path = tmp_path / "corrupt"
    path.mkdir()
    (path / name).write_bytes(b"\x00garbage, not a model" * 50)
    (path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    assert_refused(run_worker(path), path / name, *words)


def test_a_folder_without_labels(folders, tmp_path):
    path = shutil.copytree(folders["tflite"], tmp_path / "no_labels")
    os.remove(path / "labels.txt")
    assert_refused(run_worker(path), path / "labels.txt", "missing")


def test_an_empty_labels_file(folders, tmp_path):
    path = shutil.copytree(folders["tflite"], tmp_path / "empty_labels")
    (path / "labels.txt").write_text("\n\n")
    assert_refused(run_worker(path), path / "labels.txt", "holds no labels")


def test_two_models_in_one_folder(folders, tmp_path):
    path = shutil.copytree(folders["tflite"], tmp_path / "two_models")
    shutil.copy(os.path.join(folders["keras"], "model.keras"), path)
    assert_refused(run_worker(path), path, "model.keras and model.tflite", "exactly one model")


def test_a_tflite_on_the_tensorflow_runtime(folders):
    path = folders["tflite"]
    assert_refused(run_worker(path, MODEL_RUNTIME="tensorflow"), os.path.join(path, "model.tflite"),
                   "LiteRT only")


def test_a_saved_model_without_its_input_size(folders, tmp_path):
    path = shutil.copytree(folders["saved_model"], tmp_path / "no_size")
    os.remove(path / "config.json")
    assert_refused(run_worker(path), path / "saved_model", "input_size")


def test_a_missing_folder_is_refused_by_the_settings_check(tmp_path):
    done = run_worker(tmp_path / "nowhere")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid setting MODEL=" in lines[0] and "existing folder" in lines[0], done.stderr


BAD_CONFIGS = [
    ({"input_sise": [32, 32]}, "unknown key 'input_sise'"),
    ({"input_size": [32]}, "input_size=[32] is not accepted"),
    ({"scale": "0..2"}, 'scale="0..2" is not accepted'),
    ({"scale": "0..1", "offset": 1}, "offset goes with a numeric scale"),
    ({"channel_order": "RBG"}, 'channel_order="RBG" is not accepted'),
    ({"top_k": 7}, "top_k=7 but labels.txt names 6 classes"),
    ({"output": "scores"}, 'output="scores" is not accepted'),
    ({"input_size": [40, 40]}, "input_size [40, 40] but"),
    ([1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize("config,words", BAD_CONFIGS, ids=[w.split()[0] for _, w in BAD_CONFIGS])
def test_a_bad_config_json_is_one_line_naming_the_key(folders, tmp_path, config, words):
    path = with_config(folders["tflite"], tmp_path / "bad_config", config)
    with pytest.raises(ModelUnavailable) as caught:
        model_folder.input_size(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(os.path.join(path, "config.json")) and words in message, message


def test_labels_may_not_have_a_gap(tmp_path):
    (tmp_path / "labels.txt").write_text("red\n\ngreen\n")
    with pytest.raises(ModelUnavailable, match=r"labels.txt: line 2 is empty"):
        model_folder.read_labels(str(tmp_path / "labels.txt"))


def test_names_and_the_model_setting(tmp_path, monkeypatch):
    assert model_folder.name_of("/models/My Colours.v2/") == "my_colours_v2"
    (tmp_path / "Colours").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL", "Colours")
    errors = []
    monkeypatch.setattr(settings, "errors", errors)
    assert settings._str("MODEL", "auto", choices=("auto", "standin"), or_folder=True) == str(tmp_path / "Colours")
    monkeypatch.setenv("MODEL", "StandIn")  # a built-in name wins, in any spelling
    assert settings._str("MODEL", "auto", choices=("auto", "standin"), or_folder=True) == "standin"
    assert errors == []


def test_top_k_sets_how_many_labels_an_answer_lists(service, folders, tmp_path, cache):
    path = with_config(folders["tflite"], tmp_path / "colours_top2", {"top_k": 2})
    service.start_worker(MODEL=path, MODEL_CACHE_DIR=cache)
    url, _ = service.start_web(MODEL=path)
    answer = requests.post(url + "/predict", files={"image": ("red.png", png([SOLIDS["red"]]))}, timeout=60)
    assert [p["label"] for p in answer.json()["predictions"]][:1] == ["red"]
    assert len(answer.json()["predictions"]) == 2
