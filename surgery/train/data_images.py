"""Reading training data folders: image folders (one subfolder per class; every header
checked against `MAX_IMAGE_PIXELS` before decoding, then decoded and resized as
`keras.utils.image_dataset_from_directory` does) and directories saved with
``tf.data.Dataset.save`` (read under a decompression budget). Both are walked with
`data_safety._Walk`; `train.data.load_data` dispatches to them."""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from ..errors import FormatError, InputError, ShapeError
from .data_safety import _not_numeric, _open_regular, _Walk

__all__ = ["MAX_IMAGE_PIXELS"]

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_IMAGE_PIXELS = 1 << 26  # pixels one image may declare (8192 x 8192), all frames together


def _model_input(model) -> tuple[tuple, str]:
    tensor = model.inputs[0]
    dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
    return tuple(tensor.shape[1:]), dtype


# ------------------------------------------------------------------ image folders

def _image_pixels(data: bytes) -> int | None:
    """Pixels the image header declares (every GIF frame counted), or None when the bytes are
    not a PNG, JPEG, GIF or BMP image with a readable header."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w * h
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w) * abs(h)
        if data[:2] == b"\xff\xd8":
            return _jpeg_pixels(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _gif_pixels(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_pixels(data: bytes) -> int | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w * h
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _gif_pixels(data: bytes) -> int | None:
    w, h, flags = struct.unpack("<HHB", data[6:11])
    total = w * h
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while i < len(data):
        block = data[i]
        if block == 0x3B:  # trailer
            return total
        if block == 0x21:  # extension: label, then sub-blocks
            i += 2
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW code size
            fw, fh, fflags = struct.unpack("<HHB", data[i + 5:i + 10])
            total += fw * fh
            i += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0) + 1
        else:
            return None
        while i < len(data) and data[i]:  # sub-blocks up to the empty one
            i += data[i] + 1
        i += 1
    return total


def _read_image(full: str) -> bytes:
    with _open_regular(full) as f:
        data = f.read()
    pixels = _image_pixels(data)
    if pixels is None:
        raise FormatError(f"{full}: not a readable PNG, JPEG, GIF or BMP image; replace or "
                          "remove it")
    if pixels > MAX_IMAGE_PIXELS:
        raise FormatError(f"{full}: declares {pixels} pixels, more than the "
                          f"{MAX_IMAGE_PIXELS} allowed for one image; refusing to decode it "
                          "(resize it first)")
    return data


def _load_images(path: str, model, seed: int, labels: bool = True):
    walk = _Walk(path)
    classes = walk.subfolders()
    is_image = lambda n: n.lower().endswith(_IMAGE_EXT)  # noqa: E731
    files = [(os.path.join(folder, name), label) for label, c in enumerate(classes)
             for folder, name in walk.files(os.path.join(path, c), is_image)]
    if not classes and not labels:  # images without class folders (prediction)
        files = [(os.path.join(folder, name), -1) for folder, name in walk.files(path, is_image)]
    if not files:
        raise InputError(f"{path}: no images found (an image folder needs one subfolder per "
                         f"class holding {'/'.join(_IMAGE_EXT)} files)", path=path)
    shape, _ = _model_input(model)
    if len(shape) != 3 or None in shape[:2]:
        raise ShapeError(f"{path}: an image folder needs a model with (height, width, channels) "
                         f"input; this one takes {shape}")
    channels = shape[2]
    if channels not in (1, 3, 4):
        raise ShapeError(f"{path}: the model takes {channels} channels; image folders give 1, "
                         "3 or 4")
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    x = np.empty((len(files),) + tuple(shape), np.float32)
    for i, (full, _) in enumerate(files):
        data = _read_image(full)
        try:  # as keras.utils.image_dataset_from_directory: decode, bilinear resize
            image = tf.image.decode_image(data, channels=channels, expand_animations=False)
            image = tf.image.resize(image, shape[:2], method="bilinear")
        except (tf.errors.OpError, ValueError) as e:
            raise FormatError(f"{full}: not a readable image ({_tf_message(e)}); replace or "
                              "remove it") from None
        x[i] = image.numpy() / 255.0
    y = np.array([label for _, label in files], np.int64) if classes else None
    return x, y, None, None, tuple(classes), tuple(os.path.relpath(f, path) for f, _ in files)


def _tf_message(e: Exception) -> str:
    """The first line of a TensorFlow error, without its op and function decorations."""
    text = (str(getattr(e, "message", None) or e).splitlines() or [""])[0]
    text = re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{[^}]*\}\}\s*", "", text)).strip()
    return text[:200]


# ------------------------------------------------------------------ saved tf.data

def _load_tfdata(path: str):
    walk = _Walk(path)
    stored = sum(os.path.getsize(os.path.join(folder, name))
                 for folder, name in walk.files(path))
    from ..io.tfimport import tensorflow

    tf = tensorflow()
    fix = "re-save it with tf.data.Dataset.save, or use an intact copy"
    try:
        ds = tf.data.Dataset.load(path)
        spec = ds.element_spec
    except Exception as e:  # TF and protobuf raise several kinds for a bad directory
        raise FormatError(f"{path}: can't load the saved tf.data dataset ({type(e).__name__}: "
                          f"{_tf_message(e)}); {fix}", path=path) from None
    if not (isinstance(spec, tuple) and len(spec) == 2
            and all(isinstance(s, tf.TensorSpec) for s in spec)):
        raise FormatError(f"{path}: a saved tf.data dataset for training must yield (x, y) "
                          f"pairs of tensors; it yields {spec}", path=path)
    for name, s in zip(("x", "y"), spec):
        if not (s.dtype.is_floating or s.dtype.is_integer or s.dtype.is_bool):
            raise _not_numeric(name, s.dtype.name, path)
    budget = 1000 * stored + (1 << 20)  # the same ratio a zip member may have
    xs, ys, held = [], [], 0
    try:
        for x, y in ds.as_numpy_iterator():
            held += x.nbytes + y.nbytes
            if held > budget:
                raise FormatError(f"{path}: the saved dataset expands beyond {budget} bytes "
                                  f"from {stored} stored; refusing a decompression bomb", path=path)
            xs.append(x)
            ys.append(y)
    except tf.errors.OpError as e:
        raise FormatError(f"{path}: damaged saved tf.data dataset ({type(e).__name__}: "
                          f"{_tf_message(e)}); {fix}", path=path) from None
    if not xs:
        raise FormatError(f"{path}: the saved tf.data dataset is empty", path=path)
    try:
        return np.stack(xs), np.array(ys), None, None, ()
    except ValueError:
        raise FormatError(f"{path}: the dataset's samples differ in shape ({xs[0].shape} and "
                          f"{next(a.shape for a in xs if a.shape != xs[0].shape)}); a "
                          "training set needs one shape", path=path) from None
