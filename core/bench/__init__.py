"""Benchmarks: each module measures ratios within one run (these machines are
noisy, so absolute times are context, ratios are the claim) and exposes
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> dict``. Run one
with ``dsport bench NAME``; the README quotes their output with the command."""
