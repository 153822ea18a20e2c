"""The model-family registry: family name (as checkpoint headers store it) -> ``FamilyInfo``.

A family module defines its network, its ``Estimator`` and its ``FamilyInfo`` entries; adding a family means
adding its module and listing its entries in ``FAMILIES`` below.
"""

from __future__ import annotations

from cleanpose_model.families.base import MODES, Estimator, FamilyInfo, check_mode
from cleanpose_model.families.cleanpose import AGPOSE, CLEANPOSE
from cleanpose_model.families.selfsup import SELFSUP

FAMILIES: dict[str, FamilyInfo] = {f.name: f for f in (CLEANPOSE, AGPOSE, SELFSUP)}


def get_family(name: str) -> FamilyInfo:
    """The registered family called ``name``; ``KeyError`` listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; registered: {sorted(FAMILIES)}") from None


__all__ = [
    "AGPOSE",
    "CLEANPOSE",
    "FAMILIES",
    "MODES",
    "Estimator",
    "FamilyInfo",
    "check_mode",
    "get_family",
]
