"""Request body → the uploaded file's bytes: the first step of POST /predict, before images.prepare_image.

read_form keeps every `image` file (an asynchronous request may send several, one job each) and the short
text fields the endpoint knows (`lane`, `callback_url`); everything else is skipped as it streams by.

Werkzeug's form parser (request.files) compiles two regular expressions for every new multipart boundary,
and every client sends a new one per request (curl, requests, browsers): measured 1.8 ms of CPU per castle
upload on a busy 2-core machine, against 0.2 ms for the `multipart` package's PushMultipartParser (the
parser behind Bottle), which finds boundaries with bytes.find. So /predict reads its one file with that,
straight from the request stream, keeping nothing but the `image` file's bytes.

The size cap stays Werkzeug's: request.stream refuses a body over MAX_CONTENT_LENGTH (413) before anything
is read, and stops one that grows past it without a Content-Length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import multipart

from imgq.errors import BadUpload

if TYPE_CHECKING:
    from flask import Request

FIELD = "image"
MAX_PARTS = 64  # an upload form has a handful; more is a malformed or hostile body


FIELDS = ("lane", "callback_url")  # the form's text fields; any other is ignored
FIELD_MAX = 4096  # bytes of one text field: a lane name or a URL


@dataclass
class Form:
    """What POST /predict reads of a multipart body: the files of field `image`, in order, and the text fields
    it knows."""

    images: list[bytes] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def read_form(request: Request, max_images: int = 1) -> Form:
    """The `image` files (at most `max_images`, else 413) and the known text fields of a multipart body; an
    empty Form for another content type. Raises BadUpload for a broken body."""
    form = Form()
    if request.mimetype != "multipart/form-data":
        return form
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        raise BadUpload("multipart/form-data without a boundary")
    chunks: list[bytes] = []
    kind = None  # what the current part is: "image", a text field's name, or None (ignored)
    try:
        parser = multipart.PushMultipartParser(boundary, request.content_length or -1,
                                               max_segment_count=MAX_PARTS)
        for event in parser.parse_blocking(request.stream.read, 1 << 16):
            if isinstance(event, multipart.MultipartSegment):
                chunks = []
                if event.name == FIELD and event.filename is not None:
                    if len(form.images) >= max_images:
                        raise BadUpload(f"more than {max_images} images in one request (MAX_REQUEST_IMAGES)", 413)
                    kind = FIELD
                elif event.name in FIELDS and event.filename is None and event.name not in form.fields:
                    kind = event.name
                else:
                    kind = None
            elif event is None:
                if kind == FIELD:
                    form.images.append(b"".join(chunks))
                elif kind is not None:
                    form.fields[kind] = b"".join(chunks).decode("utf-8", "replace")
                kind = None
            elif kind is not None:
                chunks.append(event)
                if kind != FIELD and sum(map(len, chunks)) > FIELD_MAX:
                    raise BadUpload(f"the form field {kind!r} is longer than {FIELD_MAX} bytes")
    except multipart.MultipartError as exc:
        raise BadUpload(f"the body is not valid multipart/form-data: {exc}")
    return form
