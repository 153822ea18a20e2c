"""sensor_msgs/Image <-> numpy and CameraInfo -> K, without cv_bridge.

cv_bridge is not on PyPI and on robots it is a frequent source of OpenCV/Boost/numpy ABI trouble, so the
package converts the standard encodings itself. Every failure raises `ConversionError` with a message that
names the field at fault, so the node can log one clear line and skip the frame.
"""

from __future__ import annotations

import array

import numpy as np

# encoding -> (numpy dtype, channels)
_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8uc1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16uc1": (np.uint16, 1),
    "32fc1": (np.float32, 1),
}
_SUPPORTED = ", ".join(sorted(_ENCODINGS))
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


class ConversionError(ValueError):
    """A message cannot be turned into the array the pipeline needs (reason in the text)."""


def image_to_numpy(msg, copy: bool = True) -> np.ndarray:
    """Image -> (H, W) or (H, W, C) array of the encoding's dtype: a copy in native byte order (the message
    may be reused); with `copy=False` a read-only view of the message's buffer where the layout allows
    (padded rows and foreign byte order still copy), for callers that only read it while they hold `msg`."""
    enc = msg.encoding.lower()
    if enc not in _ENCODINGS:
        raise ConversionError(f"unsupported image encoding '{msg.encoding}' (supported: {_SUPPORTED})")
    dtype, ch = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ConversionError(f"empty image ({w}x{h})")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * ch * itemsize
    if step < row_bytes:
        raise ConversionError(f"step {step} < width*channels*itemsize = {row_bytes} ({msg.encoding} {w}x{h})")
    data = msg.data
    # rclpy gives array.array('B'); lists (hand-built messages) go through asarray.
    buf = np.asarray(data, dtype=np.uint8) if isinstance(data, list) else np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * h:
        raise ConversionError(f"data has {buf.size} bytes, expected step*height = {step * h}")
    rows = buf[: step * h].reshape(h, step)[:, :row_bytes]
    dt = np.dtype(dtype)
    if itemsize > 1:
        big = bool(msg.is_bigendian)
        dt = dt.newbyteorder(">" if big else "<")
    arr = np.ascontiguousarray(rows).view(dt).reshape((h, w, ch) if ch > 1 else (h, w))
    if not copy and dt.isnative:
        if arr.flags.writeable:
            arr = arr.view()
            arr.flags.writeable = False
        return arr
    return arr.astype(dt.newbyteorder("="), copy=True)


def rgb_from_image(msg) -> np.ndarray:
    """Colour Image (rgb8/bgr8/rgba8/bgra8) -> (H, W, 3) uint8 in RGB order."""
    if msg.encoding.lower() not in COLOR_ENCODINGS:
        raise ConversionError(f"colour image encoding '{msg.encoding}' not supported (use {COLOR_ENCODINGS})")
    enc = msg.encoding.lower()
    if enc == "rgb8":
        return image_to_numpy(msg)
    arr = image_to_numpy(msg, copy=False)  # the channel shuffle below makes the one copy
    if enc == "bgr8":
        return np.ascontiguousarray(arr[:, :, ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(arr[:, :, :3])
    return np.ascontiguousarray(arr[:, :, 2::-1])  # bgra8


def depth_from_image(msg) -> np.ndarray:
    """Depth Image -> (H, W) float32 metres with 0 for every invalid pixel (REP-118: 16UC1 millimetres with
    0 invalid, 32FC1 metres with NaN/0 invalid; +-inf and negative values are treated as invalid too)."""
    enc = msg.encoding.lower()
    if enc in ("16uc1", "mono16"):
        d = image_to_numpy(msg, copy=False).astype(np.float32)
        d /= np.float32(1000.0)
        return d
    if enc == "32fc1":
        d = image_to_numpy(msg)  # a copy of its own: cleaned in place
        bad = ~np.isfinite(d) | (d < 0)
        if bad.any():
            d[bad] = 0.0
        return d
    raise ConversionError(f"depth encoding '{msg.encoding}' not supported (use 16UC1 in mm or 32FC1 in m)")


def mask_from_image(msg, copy: bool = True) -> np.ndarray:
    """mono8 (or 8UC1/16UC1) mask/label image -> (H, W) array, non-zero = set (`copy` as image_to_numpy)."""
    enc = msg.encoding.lower()
    if enc not in ("mono8", "8uc1", "16uc1", "mono16"):
        raise ConversionError(f"mask encoding '{msg.encoding}' not supported (mono8, or 16UC1 labels)")
    return image_to_numpy(msg, copy=copy)


def numpy_to_image(arr: np.ndarray, encoding: str, header=None):
    """numpy -> sensor_msgs/Image; the array's shape/dtype must fit the encoding."""
    from sensor_msgs.msg import Image

    key = encoding.lower()
    if key not in _ENCODINGS:
        raise ConversionError(f"unsupported image encoding '{encoding}'")
    dtype, ch = _ENCODINGS[key]
    arr = np.asarray(arr)
    if arr.dtype != dtype:
        raise ConversionError(f"{encoding} needs dtype {np.dtype(dtype).name}, got {arr.dtype}")
    if (ch == 1 and arr.ndim != 2) or (ch > 1 and (arr.ndim != 3 or arr.shape[2] != ch)):
        raise ConversionError(f"{encoding} needs {ch} channel(s), got shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * ch * arr.dtype.itemsize)
    # One memcpy into the message's own (empty) array.array. Assigning to `msg.data` instead goes through the
    # generated setter, which rebuilds an array.array element by element (~1 ms for 640x480 rgb8).
    if isinstance(msg.data, array.array) and msg.data.typecode == "B" and not len(msg.data):
        msg.data.frombytes(memoryview(arr).cast("B"))
    else:  # message classes that hold the field otherwise
        msg.data = arr.tobytes()
    return msg


def camera_info_to_K(msg) -> np.ndarray:
    """CameraInfo -> (3, 3) float64 intrinsics of the (rectified-as-given) image; raises on an unset K."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] == 0:
        raise ConversionError(f"CameraInfo K is not a valid intrinsic matrix (fx={K[0, 0]}, fy={K[1, 1]})")
    return K


def has_distortion(msg) -> bool:
    return any(abs(float(v)) > 1e-12 for v in msg.d)
