"""Benchmarks of lightning-diffusion: quality against an autoregressive baseline at equal CPU training time,
sampling speed, training throughput (Lightning against a bare PyTorch loop) and attention time/memory.

Run from the repository root, e.g. ``python -m benchmarks.run_all``; see ``benchmarks/README.md``.
"""
