"""Execution: stage executors, the sampler, the rank-0 driver loop and the pipeline transport."""
