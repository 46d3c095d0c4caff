"""Discrete-event pipeline simulation driven by the real schedulers and a cost model."""
