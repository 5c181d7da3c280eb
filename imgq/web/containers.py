"""A look at an upload's container before Pillow parses it: how many segments, chunks or blocks precede the pixels.

Pillow parses a file's header in Python, one segment at a time, and some of that work grows faster than the
file: a 3.7 MB JPEG of 200,000 tiny EXIF segments took 1.6 s of CPU in prepare_image, 100,000 took 0.5 s
(measured here), so a 10 MB upload of such segments holds a web process for tens of seconds. Real images have
a few dozen at most. This walk reads only the segment headers, stops at the first that passes the limit, and
costs microseconds on a real photo:

    JPEG  markers before the first scan (SOS): APPn (EXIF, XMP, ICC), COM, DQT, DHT, SOFn, DRI ...
    PNG   chunks before the first IDAT (tEXt, zTXt, iTXt, eXIf, unknown ones ...)
    GIF   extension blocks before the first image, and their sub-blocks (comments, application data)

Bytes outside any segment (JPEG fill bytes and junk between markers, GIF bytes between blocks) cost Pillow a
Python step each: they are counted, at C speed, against MAX_IMAGE_PADDING_KB. Other formats (BMP, TIFF, WebP)
keep their headers to a fixed or small number of entries Pillow bounds itself.
"""
from __future__ import annotations

import re
import struct

from imgq import settings
from imgq.errors import BadImage

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers that stand alone, without a length: TEM, RSTn, SOI.
_STANDALONE = {0x01, *range(0xD0, 0xD9)}
_FILL = re.compile(rb"\xff+")
_GIF_JUNK = re.compile(rb"[^\x21\x2c\x3b]+")  # anything but an extension, an image or the trailer


def check(data: bytes) -> None:
    """Raise BadImage (413) when the header holds more than MAX_IMAGE_SEGMENTS segments, or more than
    MAX_IMAGE_METADATA_KB of them, before the pixels. Anything malformed is left to Pillow to refuse."""
    if data[:2] == b"\xff\xd8":
        _jpeg(data)
    elif data[:8] == _PNG_SIGNATURE:
        _png(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _gif(data)


def _refuse(kind: str, count: int, size: int) -> None:
    if count > settings.MAX_IMAGE_SEGMENTS:
        raise BadImage(f"the image's header holds more than {settings.MAX_IMAGE_SEGMENTS} {kind} before its "
                       f"pixels (MAX_IMAGE_SEGMENTS)", 413)
    if size > settings.MAX_IMAGE_METADATA_KB * 1024:
        raise BadImage(f"the image's header holds more than {settings.MAX_IMAGE_METADATA_KB} KB of {kind} before "
                       f"its pixels (MAX_IMAGE_METADATA_KB)", 413)


def _padding(skipped: int) -> None:
    if skipped > settings.MAX_IMAGE_PADDING_KB * 1024:
        raise BadImage(f"the image holds more than {settings.MAX_IMAGE_PADDING_KB} KB of padding before its pixels "
                       f"(MAX_IMAGE_PADDING_KB)", 413)


def _jpeg(data: bytes) -> None:
    pos, count, size, skipped, end = 2, 0, 0, 0, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:  # bytes between segments: skipped to the next marker, as Pillow and libjpeg do
            found = data.find(b"\xff", pos)
            skipped += (found if found >= 0 else end) - pos
            _padding(skipped)
            if found < 0:
                return
            pos = found
            continue
        fill = _FILL.match(data, pos).end() - pos - 1  # type: ignore[union-attr]  # data[pos] is 0xFF
        if fill:  # fill bytes before a marker
            skipped += fill
            _padding(skipped)
            pos += fill
            continue
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: the pixels follow
            return
        length = struct.unpack_from(">H", data, pos + 2)[0]
        count += 1
        size += length
        _refuse("segments", count, size)
        pos += 2 + length


def _png(data: bytes) -> None:
    pos, count, size, end = 8, 0, 0, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            return
        count += 1
        size += length
        _refuse("chunks", count, size)
        pos += 12 + length


def _gif(data: bytes) -> None:
    end = len(data)
    if end < 13:
        return
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # header + global colour table
    count = size = skipped = 0
    while pos < end:
        introducer = data[pos]
        if introducer not in (0x21, 0x2C, 0x3B):  # bytes Pillow skips one at a time, looking for a block
            junk = _GIF_JUNK.match(data, pos).end() - pos  # type: ignore[union-attr]  # data[pos] matches
            skipped += junk
            _padding(skipped)
            pos += junk
            continue
        if introducer != 0x21:  # 0x2C: the first image; 0x3B: the end
            return
        pos += 2  # introducer, label
        while pos < end:  # the extension's sub-blocks, each a length byte and that many bytes
            length = data[pos]
            pos += 1 + length
            count += 1
            size += length
            _refuse("extension blocks", count, size)
            if length == 0:
                break
