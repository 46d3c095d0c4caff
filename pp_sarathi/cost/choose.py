"""Which predictor a run uses: the profile CSV when ``sim.profile`` is set, else the roofline."""
from __future__ import annotations

from ..config import RunConfig
from ..model.arch import ModelArch
from .measured import ProfileCosts
from .predictor import CostModel
from .roofline import RooflineCosts


def make_cost_model(cfg: RunConfig, arch: ModelArch) -> CostModel:
    """Profile CSV when ``sim.profile`` is set, else the ``hardware`` roofline."""
    if cfg.sim.profile:
        if cfg.hardware.tp > 1:
            raise ValueError("a profile measures one device without tensor parallelism; "
                             "unset sim.profile (roofline) or set hardware.tp=1")
        return ProfileCosts.from_csv(cfg.sim.profile, arch, cfg.model.dtype, statistic=cfg.sim.profile_statistic)
    return RooflineCosts(arch, cfg.model.dtype, cfg.hardware)
