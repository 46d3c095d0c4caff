"""Config groups of the simulator: hardware roofline and simulation settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class HardwareConfig:
    name: str = "cpu"  # preset name (a100-80gb, a6000, h100, h200, cpu)


@dataclass
class SimConfig:
    profile: Optional[str] = None  # profile CSV; unset = roofline from `hardware`
