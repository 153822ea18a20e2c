"""The project's benchmarks: one harness (``benchmarks.harness``) and its suites, run as

    python -m benchmarks <suite> [--device D] [--objects N ...] [--iterations K] [--warmup W]
                                 [--out DIR] [--quick]

Suites: ``forward`` (estimator forward per mode and object count; ``--baseline-root`` times an older checkout
in the same run), ``kernels`` (each Triton kernel against its torch reference), ``memory`` (process memory
per object count, a fresh process per row), ``preprocess`` (per-object input building, numpy and torch forms),
``node`` (the ROS node: its frame path in-process, or the DDS path publish -> poses), ``tracking`` (identities
and temporal filtering on synthetic sequences with ground truth: id switches, jitter, accuracy, lag),
``codecs`` (compressed inputs: decode cost per frame, and the node's latency over DDS raw vs compressed).
Every suite prints markdown tables and writes ``<out>/<suite>.json``; ratios are only formed between rows
of the same run.
"""
