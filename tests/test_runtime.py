"""The two runtimes (MODEL_RUNTIME): LiteRT gives TensorFlow's answers, its .tflite cache, the worker's log.

The worker's side of the flow (upload → job → Redis → worker → *model* → result): models.load_model on
each runtime, the conversion cache of litert.py, and one real worker + web server on LiteRT. The
conversions are made once into a session-wide MODEL_CACHE_DIR (Lite0 takes seconds, ResNet50 ~10 s).
"""
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from conftest import CASTLE, Stack, TEST_ENV, wait_until

from imgq.web.images import prepare_image
from imgq.models import litert_runtime
from imgq import models
from imgq.models import resnet50
from imgq import settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runtime_cache"))


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory):
    """Random-weights ResNet50 in the layout of Keras' published .h5 (no download possible here)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("resnet50") / resnet50.RESNET50_FILE
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras.applications.ResNet50(weights=None))
    return str(path)


def load(name, runtime, cache_dir, resnet50_file=None, threads=1):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "MODEL_CACHE_DIR", cache_dir)
        mp.setattr(settings, "BATCH_SIZE", 2)
        mp.setattr(settings, "MODEL_THREADS", threads)
        if resnet50_file:
            mp.setattr(settings, "RESNET50_WEIGHTS", resnet50_file)
        return models.load_model(name, runtime=runtime)


def castle_pixels():
    if not os.path.exists(CASTLE):
        pytest.skip(f"castle image not found at {CASTLE}")
    with open(CASTLE, "rb") as f:
        return prepare_image(f.read(), (224, 224))


def images():
    """castle_image.jpg and 20 seeded random images, prepared as the web server does."""
    rng = np.random.default_rng(20261201)
    return np.stack([castle_pixels()] + [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(20)])


def assert_same_answers(reference, other, batch):
    ours, theirs = reference.predict(batch), other.predict(batch)
    assert theirs.shape == ours.shape == (len(batch), 1000) and theirs.dtype == np.float32
    for i in range(len(batch)):
        top_ref, top_other = list(np.argsort(-ours[i])[:5]), list(np.argsort(-theirs[i])[:5])
        assert top_ref == top_other, (i, [reference.labels[k] for k in top_ref], [other.labels[k] for k in top_other])
    np.testing.assert_allclose(theirs, ours, atol=1e-3)


def test_lite0_litert_matches_tensorflow(cache_dir):
    tf_model = load("efficientnet_lite0", "tensorflow", cache_dir)
    lite = load("efficientnet_lite0", "litert", cache_dir)
    assert (tf_model.runtime, lite.runtime, lite.threads) == ("tensorflow", "litert", 1)
    batch = images()
    assert_same_answers(tf_model, lite, batch)
    top = lite.predict(batch[:1])[0]
    assert lite.labels[int(np.argmax(top))] == "castle" and top.max() > 0.9


def test_lite0_on_two_threads_shares_a_batch_among_lanes_and_keeps_each_image_its_answer(cache_dir):
    """MODEL_THREADS=2: one image runs on the two-thread interpreter, a batch image by image on two one-thread
    lanes at once (litert_runtime.LiteRTModel); every image keeps its own row, as one interpreter gives it."""
    one = load("efficientnet_lite0", "litert", cache_dir)
    two = load("efficientnet_lite0", "litert", cache_dir, threads=2)
    assert (one.threads, one._lanes, two.threads, len(two._lanes.runners)) == (1, None, 2, 2)
    ran = {}  # lane → the threads it ran its images on
    second = threading.Event()  # lane 1 has taken an image: lane 0 waits for it, so both lanes always run

    def counted(lane, invoke):
        def run(pixels):
            ran.setdefault(lane, []).append(threading.get_ident())
            if lane == 1:
                second.set()
            else:
                assert second.wait(60)
            return invoke(pixels)
        return run

    for i, lane in enumerate(two._lanes.runners):
        lane.invoke = counted(i, lane.invoke)
    batch = images()
    reference = one.predict(batch)
    for size in (1, 2, 3, len(batch)):
        ran.clear()
        second.clear()
        np.testing.assert_allclose(two.predict(batch[:size]), reference[:size], atol=1e-4)
        assert sum(len(v) for v in ran.values()) == (0 if size == 1 else size)
        assert size == 1 or (sorted(ran) == [0, 1] and set(ran[0]).isdisjoint(ran[1]))  # each lane its own thread

    def broken(pixels):
        second.set()
        raise RuntimeError("lane failed")
    second.clear()
    two._lanes.runners[1].invoke = broken
    with pytest.raises(RuntimeError, match="lane failed"):
        two.predict(batch)


def gated(runner, gate, calls):
    """runner.invoke, recorded in `calls` and held until `gate` is set."""
    invoke = runner.invoke

    def run(pixels):
        calls.append(runner)
        assert gate.wait(60)
        return invoke(pixels)
    runner.invoke = run


def test_a_free_lane_starts_the_next_batch_while_the_last_one_still_runs(cache_dir):
    """Two callers, as the worker's two model threads: batch B goes to the lane that finished its share of A
    and is answered while A's other image still runs; the lone image of B does not take the two-thread
    interpreter while a lane is busy. Every image keeps its own answer."""
    one = load("efficientnet_lite0", "litert", cache_dir)
    two = load("efficientnet_lite0", "litert", cache_dir, threads=2)
    batch = images()
    reference = one.predict(batch[:3])
    lanes = two._lanes
    held, calls, took = threading.Event(), [], threading.Event()
    gated(lanes.runners[0], held, calls)  # lane 0 holds the image it takes
    gated(lanes.runners[1], took, [])  # lane 1 runs its image once lane 0 has taken the other one
    first = lanes.runners[0].invoke
    lanes.runners[0].invoke = lambda pixels: (took.set(), first(pixels))[1]
    wide_calls = []
    gated(lanes.wide, threading.Event(), wide_calls)  # never set: B must not go there
    answers = {}
    a = threading.Thread(target=lambda: answers.update(a=two.predict(batch[:2])))
    a.start()
    wait_until(lambda: calls and lanes.free_in() == 0)  # lane 0 holds A's image, lane 1 is done with the other
    answers["b"] = two.predict(batch[2:3])
    assert "a" not in answers and not wide_calls
    held.set()
    a.join(60)
    np.testing.assert_allclose(answers["a"], reference[:2], atol=1e-4)
    np.testing.assert_allclose(answers["b"], reference[2:3], atol=1e-4)


def test_the_lanes_start_nothing_while_the_two_thread_interpreter_runs_a_lone_image(cache_dir):
    one = load("efficientnet_lite0", "litert", cache_dir)
    two = load("efficientnet_lite0", "litert", cache_dir, threads=2)
    batch = images()
    reference = one.predict(batch[:3])
    lanes = two._lanes
    wide_held, wide_calls, lane_calls = threading.Event(), [], []
    gated(lanes.wide, wide_held, wide_calls)
    lanes_free = threading.Event()
    lanes_free.set()
    for runner in lanes.runners:
        gated(runner, lanes_free, lane_calls)
    answers = {}
    lone = threading.Thread(target=lambda: answers.update(lone=two.predict(batch[:1])))
    lone.start()
    wait_until(lambda: wide_calls)  # every lane idle: the lone image took the two-thread interpreter
    pair = threading.Thread(target=lambda: answers.update(pair=two.predict(batch[1:3])))
    pair.start()
    wait_until(lambda: len(lanes._work) == 2)  # handed in, and queued
    time.sleep(0.2)  # a lane that took an image meanwhile would be in lane_calls by now
    assert not lane_calls
    wide_held.set()
    lone.join(60)
    pair.join(60)
    assert len(lane_calls) == 2
    np.testing.assert_allclose(answers["lone"], reference[:1], atol=1e-4)
    np.testing.assert_allclose(answers["pair"], reference[1:3], atol=1e-4)


def test_resnet50_litert_matches_tensorflow_and_is_one_xnnpack_graph(cache_dir, resnet50_file):
    tf_model = load("resnet50", "tensorflow", cache_dir, resnet50_file)
    lite = load("resnet50", "litert", cache_dir, resnet50_file)
    assert_same_answers(tf_model, lite, images())
    # The frozen conversion: weights inside the file, the whole graph in XNNPACK's hands (see litert_runtime).
    ops = [op["op_name"] for op in lite._runner.interpreter._get_ops_details()]
    assert "VAR_HANDLE" not in ops and "READ_VARIABLE" not in ops and "TRANSPOSE" not in ops
    assert ops.count("DELEGATE") == 1 and len(ops) < 100, len(ops)


def run_worker_load(env, code="from imgq import models; models.load_model()"):
    """models.load_model() in a fresh process (as the worker does); returns (log, modules imported)."""
    script = code + "; import sys; print('MODULES', ' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, **env))
    assert out.returncode == 0, out.stderr[-3000:]
    modules = out.stdout.split("MODULES", 1)[1].split()
    return out.stderr, modules


def test_cache_hit_does_not_import_tensorflow(cache_dir):
    load("efficientnet_lite0", "litert", cache_dir)  # makes sure the conversion is cached
    log, modules = run_worker_load(dict(MODEL="efficientnet_lite0", MODEL_RUNTIME="litert", MODEL_THREADS="1",
                                        MODEL_CACHE_DIR=cache_dir))
    assert "model.tflite model=efficientnet_lite0 cached=true" in log, log
    assert "tensorflow" not in modules and "keras" not in modules


def test_cache_miss_writes_and_corrupt_file_is_rebuilt(cache_dir, tmp_path, capsys):
    fresh = str(tmp_path / "cache")
    model = load("efficientnet_lite0", "litert", fresh)
    err = capsys.readouterr().err
    assert "model.tflite model=efficientnet_lite0 cached=false" in err
    [tflite] = [f for f in os.listdir(fresh) if f.endswith(".tflite")]
    # Named by the weights' content hash, the converter's version and the recipe.
    from imgq.models import efficientnet_lite0
    digest = litert_runtime.file_sha256(efficientnet_lite0.source_weights_path())[:16]
    version = litert_runtime.converter_version()
    assert tflite == f"efficientnet_lite0-{digest}-tf{version}-r{litert_runtime.RECIPE}.tflite"
    good = open(os.path.join(fresh, tflite), "rb").read()
    assert len(good) > 10_000_000  # the weights are inside (18 MB of float32)
    expected = model.predict(castle_pixels()[None])
    for damage in (good[: len(good) // 3], b"", b"not a flatbuffer" * 100):
        with open(os.path.join(fresh, tflite), "wb") as f:
            f.write(damage)
        again = load("efficientnet_lite0", "litert", fresh)
        err = capsys.readouterr().err
        assert "model.cache_unreadable" in err and "cached=false" in err, err
        np.testing.assert_array_equal(again.predict(castle_pixels()[None]), expected)
        # The rebuilt file replaced the damaged one: the next start is a hit again.
        load("efficientnet_lite0", "litert", fresh)
        assert "cached=true" in capsys.readouterr().err
    assert sorted(os.listdir(fresh)) == sorted([tflite, f"efficientnet_lite0-{digest}.weights.h5"])  # no leftovers


def test_other_weights_or_converter_get_another_cache_file(tmp_path):
    a = litert_runtime.cache_path(str(tmp_path), "resnet50", "a" * 64)
    b = litert_runtime.cache_path(str(tmp_path), "resnet50", "b" * 64)
    assert a != b and litert_runtime.converter_version() in a and litert_runtime.converter_version() != "unknown"


def test_auto_never_downloads_and_says_which(cache_dir, resnet50_file, tmp_path):
    load("efficientnet_lite0", "litert", cache_dir)
    env = dict(MODEL="auto", MODEL_RUNTIME="auto", MODEL_THREADS="1", MODEL_CACHE_DIR=cache_dir, RESNET50_WEIGHTS="",
               KERAS_HOME=str(tmp_path / "empty_keras_home"), BATCH_SIZE="2")
    log, modules = run_worker_load(env)
    assert "Downloading" not in log and "keras" not in modules  # no download attempt, not even keras imported
    [chosen] = [line for line in log.splitlines() if " model.chosen " in line]
    assert "model=efficientnet_lite0 runtime=litert" in chosen and "RESNET50_DOWNLOAD=1" in chosen, chosen
    # A ResNet50 file in the Keras cache: auto serves ResNet50.
    os.makedirs(tmp_path / "keras_home" / "models")
    shutil.copy(resnet50_file, tmp_path / "keras_home" / "models" / resnet50.RESNET50_FILE)
    load("resnet50", "litert", cache_dir, resnet50_file)  # cached conversion (same weights content)
    # MODEL_RUNTIME=litert: a cache hit, no TensorFlow start (auto would run ResNet50 on TensorFlow).
    log, _ = run_worker_load(dict(env, KERAS_HOME=str(tmp_path / "keras_home"), MODEL_RUNTIME="litert"))
    [chosen] = [line for line in log.splitlines() if " model.chosen " in line]
    assert "model=resnet50 runtime=litert" in chosen and "keras_home" in chosen, chosen
    assert "model.tflite model=resnet50 cached=true" in log


def test_unknown_runtime_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(settings, "MODEL_RUNTIME", "onnx")
    with pytest.raises(models.ModelUnavailable, match="unknown MODEL_RUNTIME 'onnx': choose auto, litert, tensorflow"):
        models.load_model("efficientnet_lite0")


def test_worker_on_litert_logs_its_policy_and_classifies(redis_server, cache_dir, tmp_path):
    load("efficientnet_lite0", "litert", cache_dir)
    env = dict(TEST_ENV, MODEL="efficientnet_lite0", MODEL_RUNTIME="litert", MODEL_THREADS="1", BATCH_SIZE="4",
               BATCH_WAIT_MS="2", MODEL_CACHE_DIR=cache_dir)
    with Stack(tmp_path, redis_server, **env) as stack:
        worker = stack.start_worker()
        url, _ = stack.start_web()
        with open(CASTLE, "rb") as f:
            answer = requests.post(url + "/predict", files={"image": f}, timeout=30).json()
        log = worker.log_text()
    assert answer["success"] and answer["model"] == "efficientnet_lite0", answer
    assert answer["predictions"][0]["label"] == "castle" and answer["predictions"][0]["probability"] > 0.9
    ready = [line for line in log.splitlines() if " model.ready " in line or " worker.ready " in line]
    assert len(ready) == 2, log[-2000:]
    for line in ready:
        assert "model=efficientnet_lite0" in line and "runtime=litert" in line and "threads=1" in line
        assert "batch_size=4" in line and "batch_wait_ms=2.0" in line


def test_auto_runtime_is_litert_for_lite0_and_tensorflow_for_resnet50():
    assert models.runtime_for("efficientnet_lite0", "auto") == "litert"
    assert models.runtime_for("resnet50", "auto") == "tensorflow"
    assert models.runtime_for("resnet50", "litert") == "litert"


def test_sweep_quick_runs_and_reports_a_best_configuration(tmp_path):
    out = tmp_path / "sweep.json"
    done = subprocess.run([sys.executable, "-m", "bench.sweep", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    result = json.loads(out.read_text())["sweep"]
    assert len(result["points"]) == 8 and set(result["best"]) == {"tensorflow", "litert"}
    for point in result["points"]:
        assert point["saturated"]["failed"] == 0 and point["one_at_a_time"]["failed"] == 0
        assert point["saturated"]["requests_per_s"] > 0 and point["one_at_a_time"]["latency_ms"]["p50"] > 0
