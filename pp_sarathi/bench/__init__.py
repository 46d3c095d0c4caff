"""Benchmarks: the paper's Table 2 microbenchmark, device peaks and roofline bounds, and the
GPU (issue 7) bundle. Imports only torch, numpy and the standard library (plus the core), so it
runs on GPU machines that have nothing but PyTorch."""
