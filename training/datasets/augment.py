"""Training-time colour augmentation and point noise (preprocessing.md §3.5, §4).

ColorJitter reproduces torchvision's PIL code path (torchvision cannot be installed next to our torch);
all randomness comes from the Generator passed in.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageEnhance


def _adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    # torchvision adds np.int8(hue * 255) to uint8 hue and lets it wrap around
    np_h = (np.asarray(h, dtype=np.int16) + int(hue_factor * 255)) % 256
    h = Image.fromarray(np_h.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert(img.mode)


def color_jitter(
    rgb: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.3,
) -> np.ndarray:
    """torchvision ColorJitter on an RGB uint8 array: random order of the four adjustments."""
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    order = rng.permutation(4)
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    h = rng.uniform(-hue, hue)
    # torchvision drops an adjustment whose range is zero (its parameter becomes None)
    for k in order:
        if k == 0 and brightness > 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif k == 1 and contrast > 0:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif k == 2 and saturation > 0:
            img = ImageEnhance.Color(img).enhance(s)
        elif k == 3 and hue > 0:
            img = _adjust_hue(img, h)
    return np.asarray(img, dtype=np.uint8).copy()


def _linear_motion_blur(img: np.ndarray, angle: float, length: int) -> np.ndarray:
    rad = np.deg2rad(angle)
    dx, dy = np.cos(rad), np.sin(rad)
    a = int(max(abs(dx), abs(dy)) * length * 2)
    if a <= 0:
        return img
    kern = np.zeros((a, a))
    cx = cy = a // 2
    ex, ey = int(dx * length + cx), int(dy * length + cy)
    cv2.line(kern, (cx, cy), (ex, ey), 1.0)
    total = kern.sum()
    if total == 0:
        kern[cx, cy] = 1.0
    else:
        kern /= total
    return cv2.filter2D(img, -1, kern)


def _gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = img + rng.standard_normal(img.shape) * sigma
    return np.clip(out, 0, 255).astype(np.uint8)


def rgb_add_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DPDN `rgb_add_noise`; the array is RGB but converted with BGR2HSV as published (only S, V scaled)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.uint16)
    hsv[:, :, 1] = np.minimum(hsv[:, :, 1] * rng.uniform(1.25, 1.45), 255)
    hsv[:, :, 2] = np.minimum(hsv[:, :, 2] * rng.uniform(1.15, 1.35), 255)
    img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if rng.random() > 0.8:
        kernel = -np.ones((3, 3))
        kernel[1, 1] = rng.random() * 3 + 9
        kernel /= kernel.sum()
        img = cv2.filter2D(img, -1, kernel)
    if rng.random() > 0.8:
        img = _linear_motion_blur(img, int(rng.random() * 360), int(rng.random() * 15) + 1)
    if rng.random() > 0.8:
        ksize = (3, 3) if rng.random() > 0.2 else (5, 5)
        img = cv2.GaussianBlur(img, ksize, rng.random())
    sigma = rng.integers(15) if rng.random() > 0.2 else rng.integers(25)
    img = _gaussian_noise(img, float(sigma), rng)
    if rng.random() > 0.8:
        img = img + rng.normal(0.0, 7.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def augment_rgb(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rgb_add_noise(color_jitter(rgb, rng), rng)


def add_point_noise(pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """±5 mm clipped Gaussian jitter applied to training points only."""
    noise = np.clip(0.001 * rng.standard_normal(pts.shape), -0.005, 0.005)
    return (pts + noise).astype(np.float32)


def augment_object(
    pts: np.ndarray, rgb: np.ndarray, rng: np.random.Generator, enabled: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A training object's random perturbation when ``enabled`` (points first, then colour, from the one
    generator, as every loader draws them), else the object unchanged."""
    if not enabled:
        return pts, rgb
    return add_point_noise(pts, rng), augment_rgb(rgb, rng)
