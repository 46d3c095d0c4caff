"""What each subcommand does, once hydra has composed the config."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
from pathlib import Path

from ..config import RunConfig
from ..model.arch import UnsupportedModelError
from ..model.loader import CheckpointError
from ..runtime.cores import log_cores
from ..runtime.launch import (PipelineFailure, RunInterrupted, install_stop_handlers, launch, local_core_plan,
                              run_stage_process, serve_local)
from ..runtime.prepare import prepare
from ..workload import WorkloadFileError
from .artifacts import PartialOutputs, finalize_run, load_timeline, salvage_outputs

log = logging.getLogger("pp_sarathi")


class UserError(Exception):
    """Bad input or a failed run, reported as one line (exit code 2, or 128 + the signal for a
    run stopped by SIGINT/SIGTERM, as a shell reports a killed command)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _interrupted(signal_name: str, message: str) -> UserError:
    return UserError(message, 128 + signal.Signals[signal_name].value)


def record_failure(run_dir: str, message: str) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "failed.json").write_text(json.dumps({"error": message}))


def dispatch(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> None:
    handlers = {"run": cmd_run, "compare": cmd_compare, "microbench": cmd_microbench,
                "profile": cmd_profile, "simulate": cmd_simulate}
    handlers[cfg.command](cfg, cfg_dict, run_dir)


def _prepare(cfg: RunConfig):
    try:
        return prepare(cfg)
    except (ValueError, FileNotFoundError, WorkloadFileError, CheckpointError, UnsupportedModelError) as exc:
        raise UserError(str(exc)) from None


def _distributed_env() -> tuple[int, int, int, int] | None:
    """(rank, world, local_rank, local_world) when started by torchrun or deepspeed."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return rank, world, local_rank, local_world


def execute(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> dict | None:
    """Run one workload under one scheduler; rank 0 returns results.json's content."""
    prep = _prepare(cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    finalize = functools.partial(finalize_run, config=cfg_dict, run_dir=run_dir)
    partial = functools.partial(PartialOutputs, run_dir, cfg.sampling.logprobs > 0)
    env = _distributed_env()
    if env is not None:
        rank, world, local_rank, local_world = env
        if world != cfg.parallel.pp:
            raise UserError(f"launched with {world} processes but parallel.pp={cfg.parallel.pp}")
        from .launchers import stage_of_rank
        stage = stage_of_rank(rank, world)
        if rank == 0:
            log.info("stages: %s", _ranges_text(prep.layer_ranges))
        plan = local_core_plan(cfg, local_world)
        cores = plan[local_rank] if plan else None
        if cores:
            log_cores(stage, cores)
        run_stage_process(prep, stage, world, local_rank, local_world, finalize, partial, cores)
        return _read_results(run_dir) if rank == 0 else None
    log.info("model %s, scheduler %s, pp=%d, stages: %s", cfg.model.name, cfg.scheduler.name,
             cfg.parallel.pp, _ranges_text(prep.layer_ranges))
    if cfg.parallel.pp == 1:
        from .progress import progress_bar
        stop = install_stop_handlers(0)
        with progress_bar(len(prep.requests), cfg.logging.progress, cfg.scheduler.name) as bar:
            writer = partial()
            outcome = serve_local(prep, lambda seqs: (writer(seqs), bar.update(len(seqs))), stop)
        results = finalize(outcome)
        if stop.reason is not None:
            raise _interrupted(stop.reason, f"run stopped by {stop.reason}; outputs so far are in {run_dir}")
        return results
    from .progress import watch_partial
    try:
        with watch_partial(Path(run_dir) / "outputs.partial.jsonl", len(prep.requests),
                           cfg.logging.progress, cfg.scheduler.name):
            launch(prep, finalize, partial)
    except RunInterrupted as exc:
        if not (Path(run_dir) / "outputs.jsonl").exists():
            salvage_outputs(prep.requests, run_dir, str(exc))
        raise _interrupted(exc.signal_name, f"{exc}; outputs so far are in {run_dir}") from None
    except PipelineFailure as exc:
        salvage_outputs(prep.requests, run_dir, str(exc))
        raise UserError(f"{exc}; finished requests are in {run_dir}/outputs.jsonl") from None
    return _read_results(run_dir)


def _read_results(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def _ranges_text(ranges) -> str:
    return ", ".join(f"{i}:[{a},{b})" for i, (a, b) in enumerate(ranges))


def cmd_run(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> None:
    results = execute(cfg, cfg_dict, run_dir)
    if results is not None:
        from .table import print_results, print_texts
        print_results({cfg.scheduler.name: results})
        print_texts(Path(run_dir) / "outputs.jsonl")
        log.info("wrote %s", run_dir)


def cmd_compare(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> None:
    if _distributed_env() is not None:
        raise UserError("compare starts fresh stage processes per scheduler; run it directly, not under torchrun")
    from .compare import compare_command

    def run_one(sub_cfg: RunConfig, sub_dict: dict, sub_dir: str):
        return execute(sub_cfg, sub_dict, sub_dir), load_timeline(sub_dir)

    compare_command(cfg, cfg_dict, run_dir, run_one)


def cmd_microbench(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> None:
    from ..bench.microbench import run_microbench
    run_microbench(cfg, Path(run_dir))


def cmd_profile(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> None:
    from ..sim.profile import run_profile
    out = Path(run_dir) / "profile.csv"
    run_profile(cfg, out)
    log.info("wrote %s", out)


def cmd_simulate(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> None:
    from .simulate import simulate_command
    simulate_command(cfg, cfg_dict, run_dir)
