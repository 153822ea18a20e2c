"""NOCS / HouseCat6D evaluation protocol (``metrics``), the `cleanpose-eval` CLI (``evaluate``) and AP curves
(``plots``)."""
