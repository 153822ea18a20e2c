"""cleanpose_ros.codecs: CompressedImage layouts of the image_transport plugins, decoded without ROS."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from cleanpose_ros import codecs, conversions


def _rgb(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content (JPEG's error on noise says nothing about the channel order)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40)], -1).astype(np.uint8)
    return np.clip(img + rng.integers(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_png_colour_round_trip_is_exact_and_rgb_ordered():
    rgb = _rgb()
    data, fmt = codecs.encode_color(rgb, "png")
    assert fmt == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(codecs.decode_color(data, fmt), rgb)


def test_jpeg_colour_round_trip_keeps_channel_order():
    rgb = _rgb()
    data, fmt = codecs.encode_color(rgb, "jpeg", quality=95)
    out = codecs.decode_color(data, fmt)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - rgb.astype(int)).mean(axis=(0, 1))
    assert err.max() < 4.0, err  # a swapped R/B would be off by ~100
    # the legacy format string (no encoding) means the same BGR-ordered file
    np.testing.assert_array_equal(codecs.decode_color(data, "jpeg"), out)


def test_compressed_rgb_format_means_rgb_ordered_file():
    rgb = _rgb()
    ok, png = cv2.imencode(".png", rgb)  # RGB pixels handed to the encoder as they are
    assert ok
    np.testing.assert_array_equal(codecs.decode_color(png.tobytes(), "rgb8; png compressed rgb8"), rgb)


def test_compressed_depth_16uc1_round_trip_and_header_layout():
    rng = np.random.default_rng(1)
    d = rng.integers(0, 4000, (30, 40)).astype(np.uint16)
    d[0, :5] = 0  # invalid pixels stay 0
    data, fmt = codecs.encode_depth(d)
    assert fmt == "16UC1; compressedDepth png"
    enum, a, b = struct.unpack("<iff", data[:12])
    assert (enum, a, b) == (codecs.INV_DEPTH, 0.0, 0.0)
    assert data[12:16] == b"\x89PNG"
    out, enc = codecs.decode_depth(data, fmt)
    assert enc == "16UC1" and out.dtype == np.uint16
    np.testing.assert_array_equal(out, d)
    # older publishers: no codec name after compressedDepth means png
    np.testing.assert_array_equal(codecs.decode_depth(data, "16UC1; compressedDepth")[0], d)


def test_compressed_depth_32fc1_inverse_quantization():
    # the publisher's quantization: v = A / d + B with A = z0 (z0 + 1), B = 1 - A / max_depth
    z0, dmax = 100.0, 10.0
    a, b = z0 * (z0 + 1.0), 1.0 - z0 * (z0 + 1.0) / dmax
    d = np.array([[0.5, 1.0, 2.0], [4.0, 8.0, 0.0]], np.float32)
    v = np.where(d > 0, a / np.where(d > 0, d, 1) + b, 0).round().astype(np.uint16)
    _, png = cv2.imencode(".png", v)
    data = struct.pack("<iff", 0, a, b) + png.tobytes()
    out, enc = codecs.decode_depth(data, "32FC1; compressedDepth png")
    assert enc == "32FC1" and np.isnan(out[1, 2])
    np.testing.assert_allclose(out[np.isfinite(out)], d[d > 0], rtol=2e-3)


def test_decoded_image_passes_the_raw_image_conversions():
    rgb = _rgb()
    data, fmt = codecs.encode_color(rgb, "png")

    class Msg:
        header, format = "hdr", fmt

    Msg.data = data
    img = codecs.decode_color_msg(Msg)
    assert (img.width, img.height, img.encoding, img.header) == (64, 48, "rgb8", "hdr")
    np.testing.assert_array_equal(conversions.rgb_from_image(img), rgb)
    d = np.full((48, 64), 1234, np.uint16)
    Msg.data, Msg.format = codecs.encode_depth(d)
    dimg = codecs.decode_depth_msg(Msg)
    np.testing.assert_allclose(conversions.depth_from_image(dimg), 1.234, rtol=1e-6)
    assert dimg.decode_ms >= 0.0


@pytest.mark.parametrize(
    "data, fmt, match",
    [
        (b"", "jpeg", "empty"),
        (b"not an image at all", "rgb8; jpeg compressed bgr8", "not a decodable"),
        (b"\x00" * 20, "theora", "unsupported compressed colour format"),
        (b"\x00" * 20, "16UC1; compressedDepth png", "compressedDepth image"),
    ],
)
def test_bad_colour_data_raises_a_named_error(data, fmt, match):
    with pytest.raises(codecs.CodecError, match=match):
        codecs.decode_color(data, fmt)


def test_bad_depth_data_raises_a_named_error():
    good, fmt = codecs.encode_depth(np.ones((4, 4), np.uint16))
    cases = [
        (good[:12], fmt, "no room"),
        (good[:12] + b"garbage", fmt, "not a decodable PNG"),
        (good, "16UC1; compressedDepth rvl", "rvl"),
        (good, "8UC3; compressedDepth png", "encoding '8UC3'"),
        (good, "rgb8; png compressed bgr8", "not a compressedDepth"),
    ]
    _, png8 = cv2.imencode(".png", np.ones((4, 4), np.uint8))
    cases.append((good[:12] + png8.tobytes(), fmt, "16-bit single-channel"))
    for data, f, match in cases:
        with pytest.raises(codecs.CodecError, match=match):
            codecs.decode_depth(data, f)
    assert issubclass(codecs.CodecError, conversions.ConversionError)


def test_declared_size_is_checked_before_decoding():
    rgb = _rgb(48, 64)
    for codec in ("jpeg", "png"):
        data, fmt = codecs.encode_color(rgb, codec)
        assert codecs.header_size(np.frombuffer(data, np.uint8)) == (64, 48)
        assert codecs.decode_color(data, fmt, max_pixels=64 * 48).shape == (48, 64, 3)
        with pytest.raises(codecs.CodecError, match="max_image_pixels 3071"):
            codecs.decode_color(data, fmt, max_pixels=64 * 48 - 1)
    depth, fmt = codecs.encode_depth(np.ones((30, 40), np.uint16))
    with pytest.raises(codecs.CodecError, match="40x30 = 1200 pixels"):
        codecs.decode_depth(depth, fmt, max_pixels=1000)
    # a PNG header that declares a huge image is refused, whatever follows it
    bomb = bytearray(codecs.encode_color(rgb, "png")[0])
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    with pytest.raises(codecs.CodecError, match="100000x100000"):
        codecs.decode_color(bytes(bomb), "png", max_pixels=10**7)
