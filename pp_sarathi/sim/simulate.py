"""Simulate a run: the real scheduler and driver loop over a simulated pipeline.

    run_simulation(cfg)            -> RunOutcome (summarize() it like a real run)
    simulate_compare(cfg)          -> compare.json content (results per scheduler + ratios)
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path

from ..config import CompareConfig, RunConfig
from ..metrics.compare import run_compare
from ..metrics.summary import summarize
from ..model.arch import ModelArch
from ..model.checkpoint import checkpoint_arch
from ..runtime.driver import drive
from ..metrics.records import RunOutcome, SimInfo
from ..metrics.timing import CPU_KEYS
from ..runtime.partition import layer_counts, layer_ranges, reference_shape
from ..runtime.stage import num_kv_blocks
from ..scheduler import BlockManager, make_scheduler
from ..cost import CostModel, RooflineCosts, kv_capacity_tokens, make_cost_model
from ..cost.plan import PlanCost
from ..cost.probed import ProbedCosts
from .engine import SimPipeline, TimeShare, VirtualClock
from .workload import PlaceholderTokens, sim_requests

log = logging.getLogger("pp_sarathi")


def sim_arch(cfg: RunConfig) -> ModelArch:
    """The model's shape without weights: from ``model.path``'s config.json when set, else the
    preset fields ``cfg.model.*`` (nothing is written or loaded)."""
    if cfg.model.path:  # HF dir or .gguf: metadata only
        return checkpoint_arch(Path(cfg.model.path).expanduser())
    return ModelArch.from_config(cfg.model)


def dummy_token(cfg: RunConfig, arch: ModelArch) -> int:
    if cfg.sim.dummy_token_id >= 0:
        if cfg.sim.dummy_token_id in arch.eos_token_ids:
            raise ValueError(f"sim.dummy_token_id={cfg.sim.dummy_token_id} is an EOS token")
        return cfg.sim.dummy_token_id
    return next(t for t in range(arch.vocab_size) if t not in arch.eos_token_ids)


class _Progress:
    def __init__(self, every: int, total: int, name: str):
        self.every, self.total, self.name, self.done, self.next = every, total, name, 0, every

    def __call__(self, seqs) -> None:
        self.done += len(seqs)
        if self.every and self.done >= self.next:
            log.info("[sim %s] %d/%d requests finished", self.name, self.done, self.total)
            self.next += self.every


def run_simulation(cfg: RunConfig, cost: CostModel | None = None, on_finished=None,
                   replay: dict[tuple[int, int], float] | None = None,
                   planner_coef: dict[str, float] | None = None) -> RunOutcome:
    """Simulate ``cfg`` (scheduler, workload, ``parallel.pp`` stages) on the cost model
    (``sim.profile`` CSV, else the ``hardware`` roofline). Tokens are a dummy non-EOS id and
    every request runs to its ``max_tokens`` (ignore_eos semantics). ``replay``: the
    (stage, batch id) -> compute seconds of a real run of the same config, used instead of the
    cost model's compute (no jitter, no time sharing: they are in the recorded times).
    ``planner_coef``: plan as a real run does, on a probed predictor with these terms
    (``ProbedCosts``) refitted online to the simulated stage-0 compute, instead of on the cost
    model the simulation runs on.

    The returned outcome carries ``sim`` (a SimInfo: info dict: cost model, host seconds, KV check).
    """
    host_t0 = time.perf_counter()
    arch = sim_arch(cfg)
    pp = cfg.parallel.pp
    cost = cost or make_cost_model(cfg, arch)
    counts = layer_counts(arch, pp, cfg.parallel.partition, cost,
                          reference_shape(cfg.scheduler, pp, arch.max_position_embeddings))
    ranges = layer_ranges(counts)
    requests = sim_requests(cfg.workload, arch.vocab_size, arch.eos_token_ids, arch.max_position_embeddings)
    placeholder = bool(requests) and isinstance(requests[0].prompt_token_ids, PlaceholderTokens)
    # As measured: the profile's spread for each step's own duration.
    jitter = cfg.sim.jitter if cfg.sim.jitter >= 0 else (cost.jitter_at if cost.jitter > 0 else 0.0)
    if on_finished is None and cfg.sim.progress_every:
        on_finished = _Progress(cfg.sim.progress_every, len(requests), cfg.scheduler.name)

    def once(stretch, callback):
        if cfg.cache.num_blocks > 0:
            blocks = BlockManager(cfg.cache.num_blocks, cfg.cache.block_size)
        else:
            # The default cache holds max_batch_size full-context requests, so it never binds and
            # the block size cannot change any decision: one block per request keeps the
            # scheduler's block tables at one entry (the same schedule, much less bookkeeping).
            blocks = BlockManager(num_kv_blocks(cfg, arch) * cfg.cache.block_size
                                  // arch.max_position_embeddings or 1, arch.max_position_embeddings)
        planner = PlanCost(ProbedCosts(arch, cost.dtype, planner_coef) if planner_coef else cost, counts)
        sched = make_scheduler(cfg.scheduler, blocks, arch.max_position_embeddings, pp,
                               arch.eos_token_ids, ignore_eos=True, predictor=planner)
        sched.add_requests(requests, None if placeholder else arch.vocab_size)
        clock = VirtualClock()
        pipe = SimPipeline(cost, counts, clock, dummy_token(cfg, arch), cfg.sim.driver_blocks_on_stage0,
                           cfg.sim.schedule_overhead_us * 1e-6, block_size=cfg.cache.block_size,
                           jitter=jitter, seed=cfg.sim.seed, stretch=stretch, replay=replay,
                           observer=planner.observe if planner_coef else None)
        batches = drive(sched, pipe, clock, callback)
        return blocks, sched, clock, pipe, batches, planner

    # More stage threads than the profiled host's cores: stages computing at the same time
    # share them. Their speed depends on how many compute at once, which depends on their
    # speed: iterate, each simulation taking the previous one's timeline.
    threads = max(1, int(getattr(cost, "threads", 1) or 1))
    cores = int(getattr(cost, "cores", 0) or 0)
    time_share = bool(cores) and pp * threads > cores and cfg.sim.time_share_iterations > 0 and replay is None
    walls = []
    stretch = None
    runs = 1 + (cfg.sim.time_share_iterations if time_share else 0)
    for it in range(runs):
        blocks, sched, clock, pipe, batches, planner = once(stretch, on_finished if it == runs - 1 else None)
        walls.append(clock.now())
        if it < runs - 1:
            stretch = TimeShare(pipe.records, cores, threads).stretch
    seqs = [sched.seqs[r.index] for r in requests]
    host_s = time.perf_counter() - host_t0

    info = {"cost_model": cost.describe(), "host_s": host_s, "virtual_s": clock.now(),
            "num_batches": len(batches), "kv_blocks": blocks.num_blocks, "kv_block_size": blocks.block_size,
            "layers_per_stage": counts, "stage_busy_s": pipe.busy_s,
            "jitter": "profile, by step duration" if callable(jitter) else jitter, "seed": cfg.sim.seed}
    if time_share:
        info["time_share"] = {"cores": cores, "threads_per_stage": threads, "wall_s_per_iteration": walls}
    if isinstance(cost, RooflineCosts):
        cap = kv_capacity_tokens(arch, cfg.hardware, max(counts), cost.dtype)
        need = blocks.num_blocks * blocks.block_size
        info["kv_capacity_tokens_per_stage"] = cap
        info["kv_cache_tokens_configured"] = need
        if need > cap:
            log.warning("simulated KV cache (%d tokens per stage) exceeds what %s x tp=%d can hold (%d)",
                        need, cfg.hardware.name, cfg.hardware.tp, cap)
    device = f"sim:{cost.describe().get('source')}:" + (
        f"{cfg.hardware.name}/tp{cfg.hardware.tp}" if isinstance(cost, RooflineCosts)
        else str(cost.describe().get("device")))
    # A simulated stage runs the cost model's thread count on no real core, and no process ran:
    # no CPU time or page faults measured (the keys stay those of a real run).
    cpus = {s: {"threads": threads, "cores": [], "cores_bound": False, **dict.fromkeys(CPU_KEYS)} for s in range(pp)}
    return RunOutcome(seqs, batches, pipe.records, pp, clock.now(), ranges, device, None,
                      sim=SimInfo(info, pipe.jitter_factor), stage_cpus=cpus,
                      # hops are priced by the cost model, none is counted
                      transport={"mode": str(cfg.parallel.transport), "hops": []} if pp > 1 else None,
                      predictor={"source": planner.cost.describe().get("source"),
                                 "cost_model": planner.cost.describe(), "online_scale": planner.scale,
                                 "observations": planner.observations, "refits": planner.refits})


def simulation_results(outcome: RunOutcome, config: dict | None = None) -> dict:
    """results.json for a simulated run: :func:`summarize` plus a ``sim`` section."""
    res = summarize(outcome, config)
    res["sim"] = dict(outcome.sim.info) if outcome.sim else {}
    return res


def simulate_compare(cfg: RunConfig, schedulers: list[str] | None = None, baseline: str | None = None,
                     config: dict | None = None, keep_outcomes: bool = False) -> dict:
    """Simulate the same workload under several schedulers (default ``cfg.compare.schedulers``,
    against ``cfg.compare.baseline``) and return compare.json's content
    (:func:`pp_sarathi.metrics.compare.compare_summary`). ``config``: the resolved config dict
    each scheduler's results record (default: ``cfg`` as a dict). With ``keep_outcomes`` the
    RunOutcomes are returned under the (non-JSON) key ``"_outcomes"``.
    """
    if schedulers is not None or baseline is not None:
        cfg = copy.deepcopy(cfg)
        cfg.compare = CompareConfig(schedulers=list(schedulers or cfg.compare.schedulers),
                                    baseline=baseline or cfg.compare.baseline)
    cost = make_cost_model(cfg, sim_arch(cfg))  # one cost model (and one profile read) for all
    outcomes = {}

    def run_one(name: str, sub: RunConfig) -> dict:
        sub_config = copy.deepcopy(config) if config is not None else _config_dict(sub)
        sub_config.setdefault("scheduler", {})["name"] = name
        out = outcomes[name] = run_simulation(sub, cost)
        log.info("[sim %s] %d micro-batches, %.1f s simulated in %.1f s", name, len(out.batches),
                 out.wall_s, out.sim.info["host_s"])
        return simulation_results(out, sub_config)

    summary = run_compare(cfg, run_one)
    if keep_outcomes:
        summary["_outcomes"] = outcomes
    return summary


def _config_dict(cfg: RunConfig) -> dict:
    return asdict(cfg)
