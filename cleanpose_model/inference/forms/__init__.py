"""Inference forms: one module per reference module it replaces (``forms/attention.py`` for
``nn/attention.py``, ..., ``forms/net.py`` for ``net.py``). Each computes its reference's function (to float
rounding) with fewer launches; the kernel and precision it runs are constructor arguments, chosen by the
builder (``inference/build.py``)."""
