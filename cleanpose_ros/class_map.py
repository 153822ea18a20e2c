"""Detector class names/ids -> model categories.

ROS parameters cannot hold dicts, so the map is a string list of "detector_class:category" entries. Lookups
are case-insensitive; a model category name always maps to itself, so a detector that already emits NOCS
names ("mug") needs no entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cleanpose_model.categories import NOCS

# NOCS Mask R-CNN numeric ids (1-based, 0 = background) and the COCO names of the NOCS categories.
DEFAULT_CLASS_MAP = [f"{i}:{name}" for i, name in enumerate(NOCS.names, 1)] + ["cup:mug"]


class ClassMapError(ValueError):
    pass


class ClassMap:
    def __init__(self, categories: Sequence[str], entries: Iterable[str] = ()):
        self.categories = list(categories)
        self._index = {c.lower(): i for i, c in enumerate(self.categories)}
        self._map: dict[str, int] = dict(self._index)
        for e in entries:
            key, sep, cat = str(e).rpartition(":")
            key, cat = key.strip().lower(), cat.strip().lower()
            if not sep or not key or not cat:
                raise ClassMapError(f"class_map entry '{e}' is not of the form 'detector_class:category'")
            if cat not in self._index:
                raise ClassMapError(
                    f"class_map entry '{e}': '{cat}' is not a model category {self.categories}"
                )
            self._map[key] = self._index[cat]

    def lookup(self, detector_class: str) -> int | None:
        """0-based model category of `detector_class`, or None when it is not mapped."""
        return self._map.get(str(detector_class).strip().lower())

    def name(self, category: int) -> str:
        return self.categories[category]
