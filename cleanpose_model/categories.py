"""The category lists of the datasets the model families are trained on: the one place they are written.

Training (datasets, synthetic scenes, evaluation), the model families (``cleanpose_model.families``) and the
ROS runtime (class map) all import these objects instead of keeping their own copies, so a list cannot drift.
Index order is the 0-based class id every network and label file uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CategorySet:
    """The classes of one dataset: ``names`` in class-id order, ``symmetric`` the classes symmetric about the
    object y axis (pose loss and rotation error ignore the rotation about y)."""

    name: str
    title: str
    names: tuple[str, ...]
    symmetric: frozenset[str]
    # Derived once here so every user holds the same object (the published evaluators' synset lists put a
    # background class first; symmetric names/ids follow class-id order).
    synset: tuple[str, ...] = field(init=False)
    symmetric_names: tuple[str, ...] = field(init=False)
    symmetric_ids: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{self.name}: duplicate category names {self.names}")
        unknown = sorted(self.symmetric - set(self.names))
        if unknown:
            raise ValueError(f"{self.name}: symmetric categories {unknown} are not in {self.names}")
        object.__setattr__(self, "synset", ("BG", *self.names))
        object.__setattr__(self, "symmetric_names", tuple(c for c in self.names if c in self.symmetric))
        object.__setattr__(
            self, "symmetric_ids", tuple(i for i, c in enumerate(self.names) if c in self.symmetric)
        )

    def __len__(self) -> int:
        return len(self.names)


NOCS = CategorySet(
    "nocs",
    "NOCS (CAMERA25/REAL275)",
    ("bottle", "bowl", "camera", "can", "laptop", "mug"),
    frozenset({"bottle", "bowl", "can"}),
)
HOUSECAT6D = CategorySet(
    "housecat6d",
    "HouseCat6D",
    ("box", "bottle", "can", "cup", "remote", "teapot", "cutlery", "glass", "shoe", "tube"),
    frozenset({"bottle", "can", "glass"}),
)
DATASETS: dict[str, CategorySet] = {c.name: c for c in (NOCS, HOUSECAT6D)}

# The published CATRE and HouseCat6D evaluators use one symmetric list for every dataset (bowl included on
# HouseCat6D, glass on NOCS), the union of the two sets; evaluation.md §2.3.
EVALUATOR_SYMMETRIC: frozenset[str] = NOCS.symmetric | HOUSECAT6D.symmetric


def dataset_of(names) -> CategorySet | None:
    """The dataset whose class list is exactly ``names`` (in order), or None."""
    names = tuple(names)
    return next((c for c in DATASETS.values() if c.names == names), None)


def dataset_with(cat_num: int) -> CategorySet | None:
    """The dataset with ``cat_num`` classes (the networks' heads only know the count), or None."""
    return next((c for c in DATASETS.values() if len(c) == cat_num), None)
