"""The job and result messages: JSON that round-trips exactly, and refuses what it cannot run."""
import json

import numpy as np
import pytest

import job as jobs


def test_job_is_json_and_round_trips_the_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    text = jobs.make_job("abc", pixels, timeout=30, now=1000.0)
    fields = json.loads(text)
    assert fields["id"] == "abc" and fields["shape"] == [224, 224, 3] and fields["dtype"] == "uint8"
    assert fields["deadline"] == 1030.0 and len(text) <= 210_000  # uint8 base64: 200,704 bytes of image
    job, decoded = jobs.parse_job(text, (224, 224))
    assert job["id"] == "abc" and np.array_equal(decoded, pixels)
    assert jobs.expired(job, now=1030.5) and not jobs.expired(job, now=1029.0)


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x01", "not JSON"),
    ("[1, 2]", "no string 'id'"),
    ('{"id": "a", "dtype": "float32", "shape": [224, 224, 3], "image": ""}', "dtype"),
    ('{"id": "a", "dtype": "uint8", "shape": [224, 224], "image": ""}', "shape"),
    ('{"id": "a", "dtype": "uint8", "shape": [2, 2, 3], "image": "AAAA"}', "does not match"),
    ('{"id": "a", "dtype": "uint8", "shape": [224, 224, 3], "image": "AAAA"}', "does not decode"),
])
def test_bad_entries_are_refused_with_a_reason(raw, message):
    with pytest.raises(jobs.BadJob, match=message):
        jobs.parse_job(raw, (224, 224))
