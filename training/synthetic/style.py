"""Rendering styles for domain-shift studies (issue 16): style ``a`` is the generator as it always was (the
same bytes); style ``b`` is a second domain that differs in all four ways a robot's own scenes differ from
the training renders:

- appearance: colour channels rotated (R,G,B) -> (G,B,R) and a gamma of 0.7, so every object and table
  colour and texture is another one;
- lighting: dimmer ambient (x 0.6), a warm tint (x 1.15, 1.0, 0.8) and stronger highlights (+0.3 specular);
- depth: a noisier sensor (axial noise x 3, 4 % random and 85 % edge drop-out);
- shape: every object is stretched along its up axis by a factor in [1.0, 1.5] and along its two horizontal
  axes by factors in [0.8, 1.0], then re-normalised (box centred, diagonal 1) and set back on the table, so
  proportions leave the ranges of style ``a``'s shape generator.

Style ``b`` draws its shape factors from a generator of its own (``default_rng([seed, scene, 0x5B])``), so the
scene layout, views and noise draw the same numbers as style ``a``'s."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .render import DepthNoise, Frame, Lighting
from .scene import Scene

STYLES = ("a", "b")


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    return style


def restyle_scene(scene: Scene, rng: np.random.Generator, style: str) -> Scene:
    """Style b: stretched object models (new model ids: ``<id>-b``), resting on the table again."""
    if check_style(style) == "a":
        return scene
    for obj in scene.objects:
        f = np.array([rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.5), rng.uniform(0.8, 1.0)])
        v = obj.model.vertices * f
        v = v - 0.5 * (v.max(0) + v.min(0))
        v = v / np.linalg.norm(v.max(0) - v.min(0))
        obj.model = replace(obj.model, vertices=v, model_id=f"{obj.model.model_id}-b")
        lowest = float(((obj.scale * v) @ obj.R_world.T)[:, 2].min())
        obj.t_world = np.array([obj.t_world[0], obj.t_world[1], -lowest])
    return scene


def lighting(rng: np.random.Generator, style: str) -> Lighting:
    light = Lighting.random(rng)
    if check_style(style) == "a":
        return light
    return replace(
        light,
        ambient=0.6 * light.ambient,
        color=light.color * np.array([1.15, 1.0, 0.8]),
        specular=light.specular + 0.3,
    )


def depth_noise(style: str) -> DepthNoise:
    if check_style(style) == "a":
        return DepthNoise()
    base = DepthNoise()
    return replace(
        base, sigma_a=3 * base.sigma_a, sigma_b=3 * base.sigma_b, random_dropout=0.04, edge_dropout=0.85
    )


def restyle_frame(frame: Frame, style: str) -> Frame:
    if check_style(style) == "a":
        return frame
    rgb = frame.rgb[..., [1, 2, 0]].astype(np.float32) / 255.0
    return replace(frame, rgb=np.clip(255.0 * rgb**0.7 + 0.5, 0, 255).astype(np.uint8))
