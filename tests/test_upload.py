"""POST /predict reads its upload with imgq/web/upload.py (not Werkzeug's request.files): the same answers for every
shape of body a client sends, through a real gunicorn and a real stand-in worker."""
import http.client
import urllib.parse

import pytest
import requests

from conftest import grey_png, standin_label

CAP = 100_000


@pytest.fixture(scope="module")
def web(redis_server, tmp_path_factory):
    from imgq.testing import Stack
    from conftest import TEST_ENV
    with Stack(tmp_path_factory.mktemp("upload"), redis_server, **TEST_ENV) as stack:
        stack.start_worker()
        url, _ = stack.start_web(MAX_UPLOAD_BYTES=CAP)
        yield url


def raw_post(url, body, content_type, chunked=False):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        if chunked:
            conn.putrequest("POST", "/predict")
            conn.putheader("Content-Type", content_type)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body), 16_384):
                piece = body[i:i + 16_384]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request("POST", "/predict", body, {"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def form(*parts, boundary="XyZ--boundary"):
    body = b""
    for disposition, data in parts:
        body += b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (boundary.encode(), disposition, data)
    return body + b"--%s--\r\n" % boundary.encode(), f"multipart/form-data; boundary={boundary}"


def test_the_image_among_other_fields_is_found(web):
    response = requests.post(web + "/predict", data={"note": "--XyZ not a boundary", "image": "a value, not a file"},
                             files={"image": ("g.png", grey_png(33))}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == standin_label(33)


def test_a_chunked_upload_is_read(web):
    status, body = raw_post(web, *form((b'name="image"; filename="g.png"', grey_png(44))), chunked=True)
    assert status == 200 and standin_label(44).encode() in body


def test_a_chunked_upload_over_the_cap_is_refused_with_413(web):
    big = form((b'name="image"; filename="big.jpg"', b"\xff" * (CAP + 1)))
    status, body = raw_post(web, *big, chunked=True)
    assert status == 413 and b"MAX_UPLOAD_BYTES" in body


def test_a_malformed_chunk_is_a_400_at_once_not_a_408(web):
    parts = urllib.parse.urlsplit(web)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Type", "multipart/form-data; boundary=XyZ")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"zz\r\nnot a chunk size\r\n0\r\n\r\n")
        response = conn.getresponse()
        status, body = response.status, response.read()
    finally:
        conn.close()
    assert status == 400 and b"chunked body is malformed" in body, body


@pytest.mark.parametrize("body, content_type, words", [
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nPNG...",
     "multipart/form-data; boundary=XyZ", b"multipart"),                      # never closed
    (b"no multipart here", "multipart/form-data; boundary=XyZ", b"multipart"),
    (b"whatever", "multipart/form-data", b"boundary"),
])
def test_a_broken_multipart_body_is_a_400_saying_so(web, body, content_type, words):
    status, answer = raw_post(web, body, content_type)
    assert status == 400 and words in answer and b'"success":false' in answer.replace(b" ", b"")
