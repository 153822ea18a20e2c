"""sensor_msgs/CompressedImage -> arrays, for the layouts the standard image_transport plugins publish.

No ROS imports: the functions read `msg.format` and `msg.data` only, so tests and benchmarks run anywhere.

Colour (compressed_image_transport, topic `<image>/compressed`): `format` is "<encoding>; <jpeg|png>
compressed <bgr8|rgb8|...>" (older publishers write only "jpeg" / "png"). `data` is the JPEG/PNG file. The
plugin encodes BGR-ordered pixels unless the format says "compressed rgb", so a decoded array is BGR then.

Depth (compressed_depth_image_transport, topic `<depth>/compressedDepth`): `format` is
"<16UC1|32FC1>; compressedDepth [png|rvl]" (older publishers: "...; compressedDepth" meaning png). `data` is a
12-byte config header - int32 format enum, float32 depthQuantA, float32 depthQuantB, little-endian as the
publisher's struct is copied on x86/ARM - followed by the PNG file. For 16UC1 the PNG holds the raw uint16
depth (mm); for 32FC1 it holds quantized inverse depth v (v = A / d + B) and d = A / (v - B), v = 0 invalid.
RVL-coded depth is not supported (named in the error).

Every failure raises `CodecError` (a `conversions.ConversionError`) naming the cause, so the node can log one
line, count it and skip the frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from cleanpose_ros.conversions import ConversionError

DEPTH_HEADER_BYTES = 12  # int32 enum + 2 x float32
_DEPTH_HEADER = np.dtype([("format", "<i4"), ("quant_a", "<f4"), ("quant_b", "<f4")])
# compressed_depth_image_transport's enum value for its (only) format, written by every publisher version
INV_DEPTH = 0


class CodecError(ConversionError):
    """A CompressedImage cannot be decoded (reason in the text)."""


def _bytes(data) -> np.ndarray:
    # rclpy gives array.array('B') (or bytes); hand-built messages may hold lists
    if isinstance(data, list):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def header_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) a PNG's IHDR or a JPEG's frame header declares, read before decoding, so a small
    message declaring a huge image is refused instead of allocated; None when neither is found."""
    b = buf.tobytes() if buf.size < 64 else buf[:65536].tobytes()
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24 and b[12:16] == b"IHDR":
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(b):  # marker segments up to the first start-of-frame (SOF0..SOF15 but DHT/JPG/DAC)
        if b[i] != 0xFF:
            return None
        m = b[i + 1]
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(b[i + 7 : i + 9], "big"), int.from_bytes(b[i + 5 : i + 7], "big")
        i += 2 + int.from_bytes(b[i + 2 : i + 4], "big")
    return None


def _check_size(buf: np.ndarray, max_pixels: int | None) -> None:
    if max_pixels is None:
        return
    size = header_size(buf)
    if size is not None and size[0] * size[1] > max_pixels:
        raise CodecError(
            f"the image declares {size[0]}x{size[1]} = {size[0] * size[1]} pixels, more than "
            f"max_image_pixels {max_pixels} (not decoded)"
        )


def decode_color(data, fmt: str, max_pixels: int | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB. `fmt` is the message's format string; an image declaring more
    than `max_pixels` pixels is refused before decoding."""
    f = str(fmt).lower()
    if "compresseddepth" in f:
        raise CodecError(f"format '{fmt}' is a compressedDepth image, not a colour one")
    if f and not any(k in f for k in ("jpeg", "jpg", "png")):
        raise CodecError(f"unsupported compressed colour format '{fmt}' (jpeg or png)")
    buf = _bytes(data)
    if buf.size == 0:
        raise CodecError("empty data")
    _check_size(buf, max_pixels)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise CodecError(f"{buf.size} bytes are not a decodable {fmt or 'jpeg/png'} image")
    # "compressed rgb8": the encoder was handed RGB-ordered pixels, so imdecode's "BGR" is really RGB
    if "compressed rgb" in f:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_depth(data, fmt: str, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """compressedDepth bytes -> ((H, W) uint16 mm, "16UC1") or ((H, W) float32 m, NaN invalid, "32FC1")."""
    enc, _, rest = str(fmt).partition(";")
    enc, rest = enc.strip().upper(), rest.strip().lower()
    if "compresseddepth" not in rest:
        raise CodecError(
            f"format '{fmt}' is not a compressedDepth one ('16UC1; compressedDepth png' or '32FC1; ...')"
        )
    codec = rest.replace("compresseddepth", "").strip() or "png"
    if codec != "png":
        raise CodecError(f"compressedDepth codec '{codec}' not supported (png only)")
    if enc not in ("16UC1", "32FC1"):
        raise CodecError(f"compressedDepth encoding '{enc}' not supported (16UC1 or 32FC1)")
    buf = _bytes(data)
    if buf.size <= DEPTH_HEADER_BYTES:
        raise CodecError(f"{buf.size} bytes: no room for the {DEPTH_HEADER_BYTES}-byte header and a PNG")
    head = buf[:DEPTH_HEADER_BYTES].view(_DEPTH_HEADER)[0]
    _check_size(buf[DEPTH_HEADER_BYTES:], max_pixels)
    img = cv2.imdecode(buf[DEPTH_HEADER_BYTES:], cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise CodecError(
            f"the {buf.size - DEPTH_HEADER_BYTES} bytes after the header are not a decodable PNG"
        )
    if img.dtype != np.uint16 or img.ndim != 2:
        raise CodecError(
            f"the PNG is {img.dtype} with shape {img.shape}, a 16-bit single-channel one is needed"
        )
    if enc == "16UC1":
        return img, enc
    a, b = float(head["quant_a"]), float(head["quant_b"])
    if not (np.isfinite(a) and np.isfinite(b)) or a == 0.0:
        raise CodecError(f"32FC1 quantization parameters A={a}, B={b} are not usable")
    v = img.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.float32(a) / (v - np.float32(b))
    d[img == 0] = np.nan
    return d, enc


def encode_color(
    rgb: np.ndarray, codec: str = "jpeg", quality: int = 95, png_level: int = 3
) -> tuple[bytes, str]:
    """(H, W, 3) uint8 RGB -> (data, format) as compressed_image_transport publishes an rgb8 image (tests,
    benchmarks); the defaults are the plugin's (jpeg_quality 95, png_level 3)."""
    ext = {"jpeg": ".jpg", "png": ".png"}[codec]
    if codec == "jpeg":
        opts = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    else:
        opts = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    ok, out = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), opts)
    if not ok:
        raise CodecError(f"{codec} encoding failed")
    return out.tobytes(), f"rgb8; {codec} compressed bgr8"


def encode_depth(depth_mm: np.ndarray, png_level: int = 3) -> tuple[bytes, str]:
    """(H, W) uint16 mm -> (data, format) as compressed_depth_image_transport publishes a 16UC1 image (its
    default png_level 3)."""
    if depth_mm.dtype != np.uint16 or depth_mm.ndim != 2:
        raise CodecError(f"16UC1 depth must be (H, W) uint16, got {depth_mm.dtype} {depth_mm.shape}")
    ok, out = cv2.imencode(".png", depth_mm, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise CodecError("png encoding failed")
    head = np.array([(INV_DEPTH, 0.0, 0.0)], _DEPTH_HEADER).tobytes()
    return head + out.tobytes(), "16UC1; compressedDepth png"


@dataclass
class DecodedImage:
    """A decoded frame shaped like sensor_msgs/Image (the fields conversions.image_to_numpy reads), so the
    frame path treats it as a raw image; `data` is the decoded array's buffer (no copy)."""

    header: object
    height: int
    width: int
    encoding: str
    step: int
    data: np.ndarray
    is_bigendian: int = 0
    decode_ms: float = field(default=0.0)

    @staticmethod
    def of(header, arr: np.ndarray, encoding: str, decode_ms: float = 0.0) -> DecodedImage:
        arr = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        return DecodedImage(
            header, h, w, encoding, arr.strides[0], arr.reshape(-1).view(np.uint8), 0, decode_ms
        )


def decode_color_msg(msg, max_pixels: int | None = None) -> DecodedImage:
    """CompressedImage (colour) -> DecodedImage rgb8."""
    t0 = time.perf_counter()
    rgb = decode_color(msg.data, msg.format, max_pixels)
    return DecodedImage.of(msg.header, rgb, "rgb8", (time.perf_counter() - t0) * 1e3)


def decode_depth_msg(msg, max_pixels: int | None = None) -> DecodedImage:
    """CompressedImage (compressedDepth) -> DecodedImage 16UC1 or 32FC1."""
    t0 = time.perf_counter()
    depth, enc = decode_depth(msg.data, msg.format, max_pixels)
    return DecodedImage.of(msg.header, depth, enc, (time.perf_counter() - t0) * 1e3)
