"""Upload → pixels: turn the bytes a client uploaded into the uint8 array a job carries.

The web server calls prepare_image() before anything touches Redis, so a bad upload is refused with a
clear 4xx and a good one travels as exactly height x width x 3 bytes (150,528 for 224x224), not as the
course's float32 (four times larger). The worker applies the model's own normalisation later.
"""
import base64
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import settings


class BadImage(ValueError):
    """The upload is not an image we can classify. `status` is the HTTP status to answer with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _to_rgb(image):
    """Any Pillow mode → 8-bit RGB. Transparent pixels are laid on white, as a viewer shows them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit greyscale: scale to 0..255 instead of clipping everything to white.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def prepare_image(data, size):
    """Decode an upload and resize it to `size` = (height, width). Returns a uint8 array (h, w, 3).

    Raises BadImage with a message a client can act on; never lets Pillow's own exception escape.
    """
    if not data:
        raise BadImage("the 'image' file is empty")
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            pixels = image.width * image.height
            if pixels > settings.MAX_IMAGE_PIXELS:
                raise BadImage(f"image is {image.width}x{image.height} pixels, more than MAX_IMAGE_PIXELS "
                               f"({settings.MAX_IMAGE_PIXELS})", status=413)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; ask for no less than we need.
            image.draft("RGB", (width, height))
            image.seek(0)  # animated images: classify the first frame
            image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF
            image = _to_rgb(image)
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("the 'image' file is not an image format we can read (JPEG, PNG, GIF, BMP, TIFF, WebP ...)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"image declares more pixels than MAX_IMAGE_PIXELS ({settings.MAX_IMAGE_PIXELS})", 413)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        # Truncated files, corrupt chunks, unsupported sub-formats: Pillow says which in the message.
        raise BadImage(f"the 'image' file could not be decoded: {exc}")
    if array.shape != (height, width, 3):
        raise BadImage(f"the image decoded to an unexpected shape {array.shape}")
    return array


def base64_encode_image(array):
    """uint8 array → base64 text (the course's helper, for uint8 instead of float32)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


def base64_decode_image(text, shape, dtype="uint8"):
    """base64 text → array of `shape`. Raises ValueError if the bytes do not fill the shape exactly."""
    raw = base64.b64decode(text, validate=True)
    array = np.frombuffer(raw, dtype=np.dtype(dtype))
    return array.reshape(shape)
