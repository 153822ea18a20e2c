"""NOCS / HouseCat6D evaluation protocol (metrics), the `cleanpose-eval` CLI and AP curves."""

from .metrics import (
    CATRE_IOU_LABEL,
    HOUSECAT_PROTOCOL,
    NOCS_IOU_LABEL,
    NOCS_PROTOCOL,
    EvalResult,
    Protocol,
    evaluate_records,
)

__all__ = [
    "CATRE_IOU_LABEL",
    "HOUSECAT_PROTOCOL",
    "NOCS_IOU_LABEL",
    "NOCS_PROTOCOL",
    "EvalResult",
    "Protocol",
    "evaluate_records",
]
