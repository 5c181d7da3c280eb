"""The job and result messages: a JSON header plus raw pixels that round-trips exactly, is read without a
copy, keeps the id where a Lua script can find it, and refuses what it cannot run."""
import base64
import json

import numpy as np
import pytest

from imgq.jobs import message


def test_job_is_a_json_header_and_raw_pixels_that_round_trip():
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    job_id = message.new_id()
    raw = message.make_job(job_id, pixels, timeout=30, now=1000.0)
    header, _, body = raw.partition(b"\n")
    fields = json.loads(header)
    assert fields == {"id": job_id, "shape": [224, 224, 3], "dtype": "uint8", "enqueued": 1000.0,
                      "deadline": 1030.0}
    assert body == pixels.tobytes() and len(raw) < 150_528 + 120  # the pixels and a small header, no base64
    job, decoded = message.parse_job(raw, (224, 224))
    assert job["id"] == job_id and np.array_equal(decoded, pixels)
    assert message.expired(job, now=1030.5) and not message.expired(job, now=1029.0)


def test_the_worker_reads_the_pixels_in_place():
    raw = message.make_job(message.new_id(), np.full((224, 224, 3), 7, dtype=np.uint8), timeout=30)
    _, pixels = message.parse_job(raw, (224, 224))
    assert np.shares_memory(pixels, np.frombuffer(raw, dtype=np.uint8)) and not pixels.flags.writeable


def test_the_id_sits_at_a_fixed_place_for_lua():
    job_id = message.new_id()
    raw = message.make_job(job_id, np.zeros((224, 224, 3), dtype=np.uint8), timeout=30)
    assert raw.startswith(b'{"id":"' + job_id.encode() + b'"')
    assert raw[message.ID_START:message.ID_END].decode() == job_id == message.job_id_of(raw)
    assert message.job_id_of(b"not a job") is None


def test_pixels_that_contain_newlines_and_odd_layouts_survive():
    pixels = np.full((224, 224, 3), 10, dtype=np.uint8)  # 10 is b"\n": only the first newline counts
    raw = message.make_job("a" * 32, pixels[:, :, ::-1], timeout=30)  # a non-contiguous view
    assert np.array_equal(message.parse_job(raw, (224, 224))[1], pixels)


def test_a_job_in_the_previous_base64_format_is_still_read():
    pixels = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    old = json.dumps({"id": "old", "shape": [224, 224, 3], "dtype": "uint8",
                      "image": base64.b64encode(pixels.tobytes()).decode()})
    job, decoded = message.parse_job(old.encode(), (224, 224))
    assert job["id"] == "old" and np.array_equal(decoded, pixels)


HEADER = b'{"id": "a", "dtype": "uint8", "shape": [224, 224, 3]}\n'


@pytest.mark.parametrize("raw, reason, job_id", [
    (b"\x00\x01", "not a JSON header", None),
    (b"\xff\xfe\x00binary\n" + bytes(150_528), "not a JSON header", None),
    (b"[1, 2]", "no string 'id'", None),
    (b'{"id": "a", "dtype": "float32", "shape": [224, 224, 3]}\n' + bytes(150_528), "dtype", "a"),
    (b'{"id": "a", "dtype": "uint8", "shape": [224, 224]}\n', "shape", "a"),
    (b'{"id": "a", "dtype": "uint8", "shape": [224.0, 224, 3]}\n', "shape", "a"),
    (b'{"id": "a", "dtype": "uint8", "shape": [2, 2, 3]}\n' + bytes(12), "does not match", "a"),
    (HEADER + bytes(150_527), "does not decode", "a"),
    (HEADER + bytes(150_529), "does not decode", "a"),
    (HEADER, "does not decode", "a"),
    (b'{"id": "a", "dtype": "uint8", "shape": [224, 224, 3], "image": "AAAA"}', "does not decode", "a"),
    (b'{"id": "a", "dtype": "uint8", "shape": [224, 224, 3], "image": "%%%"}', "does not decode", "a"),
])
def test_bad_entries_are_refused_with_a_reason(raw, reason, job_id):
    with pytest.raises(message.BadJob, match=reason) as caught:
        message.parse_job(raw, (224, 224))
    assert caught.value.job_id == job_id


def test_results_are_compact_json_with_the_top_5_best_first():
    probabilities = np.linspace(0, 1, 1000, dtype=np.float32)
    labels = [f"c{i}" for i in range(1000)]
    top = message.top_predictions(probabilities, labels)
    assert [p["label"] for p in top] == ["c999", "c998", "c997", "c996", "c995"]
    assert json.loads(message.make_result("x", model="m", predictions=top))["predictions"] == top
