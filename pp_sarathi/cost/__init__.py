"""The cost model: how long a micro-batch takes on a pipeline stage (torch-free).

    BatchShape                 what a micro-batch is for costing (shape.py)
    StageTimePredictor         the interface: stage_seconds(shape, num_layers, first, last)
    CostModel, StageTimes      per-op composition into stage and pipeline times (predictor.py)
    RooflineCosts              FLOPs and bytes against hardware peaks (roofline.py)
    ProfileCosts               per-op costs measured on this device, a profile CSV (measured.py)
    holdout_errors             the measured predictor's error on held-out profile rows (holdout.py)
    make_cost_model            the predictor a run's config asks for (choose.py)
    PlanCost                   stage times of candidate batch plans on a pipeline split (plan.py)

Used by the simulator and by the scheduler's stage-time planner; imports numpy, the standard
library, ``config`` and ``model``'s torch-free shape arithmetic only.
"""
from .choose import make_cost_model
from .fit import LinearFit, weighted_lstsq
from .holdout import holdout_errors
from .measured import ProfileCosts
from .plan import PlanCost
from .predictor import CostModel, StageTimePredictor, StageTimes
from .profile_csv import PROFILE_COLUMNS, read_profile, write_profile
from .roofline import RooflineCosts, kv_capacity_tokens
from .shape import BatchShape

__all__ = ["BatchShape", "CostModel", "LinearFit", "PROFILE_COLUMNS", "PlanCost", "ProfileCosts", "RooflineCosts",
           "StageTimePredictor", "StageTimes", "holdout_errors", "kv_capacity_tokens", "make_cost_model",
           "read_profile", "weighted_lstsq", "write_profile"]
