"""Timing, bubble accounting, serving metrics and their outputs (results.json, trace, timeline)."""
