"""The course's helpers.py: preparing an upload for the model.

The code lives in imgq/web/images.py (decoding bounded in pixels, memory and concurrency) and
imgq/jobs/message.py (the job's wire format); this file keeps the course's names.
"""
from imgq.errors import BadImage, DecodeBusy  # noqa: F401
from imgq.jobs.message import base64_decode_image  # noqa: F401
from imgq.web.images import FORMATS, prepare_image  # noqa: F401
