"""Image files of the datasets: :func:`read_image_file` returns the BGR image, or None and why it
cannot be used (missing, undecodable, a JPEG cut short, under :data:`MIN_IMAGE_SIDE` px)."""
from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["MIN_IMAGE_SIDE", "decode_image", "opencv_can_open", "read_image_file", "write_image"]

MIN_IMAGE_SIDE = 2     # pixels; a smaller image has no person to crop


def _jpeg_truncated(path: str) -> bool:
    """A JPEG without its end-of-image marker (libjpeg would fill the rest with grey). Cheap
    test: the file ends with ``FF D9`` (zero padding allowed); else Pillow decodes it fully,
    which raises on truncated data (extra bytes after EOI are accepted)."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return False
        fh.seek(max(0, os.path.getsize(path) - 1024))
        if fh.read().rstrip(b"\x00").endswith(b"\xff\xd9"):
            return False
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError):
        return True
    return False


def opencv_can_open(path) -> bool:
    """Whether OpenCV's own file functions (video I/O) can take ``path``: they crash the process
    on a name that is not valid UTF-8 (one holding surrogates: undecodable bytes)."""
    return not any("\ud800" <= c <= "\udfff" for c in str(path))


def decode_image(path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """The BGR image of the file at ``path`` decoded with ``flags``, or None (unreadable, not an
    image). The bytes are read by Python: OpenCV's own file functions crash on names that are
    not valid UTF-8."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    img = cv2.imdecode(buf, flags) if buf.size else None
    return None if img is None or img.size == 0 else img


def write_image(path, bgr: np.ndarray) -> bool:
    """Encode ``bgr`` by the suffix of ``path`` and write it (by Python, as :func:`decode_image`
    reads); False when it cannot be encoded."""
    ok, buf = cv2.imencode(path.suffix, bgr)
    if ok:
        path.write_bytes(buf.tobytes())
    return ok


def read_image_file(path: str) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 image, '') or (None, why it cannot be used)."""
    if not os.path.isfile(path):  # (a stat; spares cv2's own warning on missing files)
        return None, "a folder, not an image file" if os.path.isdir(path) else \
            "file does not exist"
    if _jpeg_truncated(path):
        return None, "truncated JPEG (the file ends before its end-of-image marker)"
    # the stored pixels, as the release's decoder (jpeg4py) gives them: an EXIF orientation tag
    # would turn the image away from the npz keypoints and boxes
    img = decode_image(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        return None, "file exists but could not be decoded (corrupt or not an image)"
    if min(h := img.shape[0], w := img.shape[1]) < MIN_IMAGE_SIDE:
        return None, f"image is {w}x{h} pixels, too small to crop a person from"
    return img, ""
