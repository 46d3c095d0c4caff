"""``pp-sarathi <command> [hydra overrides]``: the hydra app and subcommand dispatch."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

from .sweep import SWEEP

COMMANDS = ("run", "compare", "microbench", "profile", "simulate")
USAGE = f"""usage: pp-sarathi <command> [hydra overrides ...]
commands: {', '.join(COMMANDS)}, report SWEEP_DIR
examples:
  pp-sarathi compare                                  # Orca vs SARATHI, pp=2, default model
  pp-sarathi run scheduler=sarathi parallel.pp=2 workload.num_requests=8
  pp-sarathi compare -m scheduler.chunk_size=64,128 workload.pd_ratio=5,10
  torchrun --nproc-per-node 2 -m pp_sarathi run parallel.pp=2
"""

log = logging.getLogger("pp_sarathi")


def conf_dir() -> str:
    # Shipped inside the package (the repository's conf/ links here) so installs find it too.
    here = Path(__file__).resolve().parents[1] / "conf"
    if not here.is_dir():
        raise SystemExit(f"pp-sarathi: hydra config dir not found at {here}")
    return str(here)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from ..config import RunConfig

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    if not OmegaConf.has_resolver("pp_uid"):
        token = uuid.uuid4().hex[:6]
        OmegaConf.register_new_resolver("pp_uid", lambda: token, use_cache=True)


def _error(message: str) -> None:
    """One line on stderr for the user; the same line in the run's main.log (hydra's file
    handler), not on stdout."""
    print(f"pp-sarathi: error: {message}", file=sys.stderr, flush=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from ..config import RunConfig
    from . import commands

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if multirun:
        SWEEP.point_started(hc, cfg.command)
    try:
        try:  # builds the dataclasses: their rules run here, before anything starts
            run_cfg: RunConfig = OmegaConf.to_object(cfg)
        except ValueError as exc:
            raise commands.UserError(str(exc)) from None
        run_cfg.output_dir = run_dir
        cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        cfg_dict["output_dir"] = run_dir
        if multirun:
            SWEEP.name_wandb_run(cfg_dict, hc)
        commands.dispatch(run_cfg, cfg_dict, run_dir)
    except commands.UserError as exc:
        if rank0:
            commands.record_failure(run_dir, str(exc))
        if multirun:  # the failed point is recorded; the sweep goes on
            log.error("sweep point %s failed: %s", hc.job.num, exc)
            SWEEP.failed += 1
            return
        _error(str(exc))
        sys.exit(exc.exit_code)
    except Exception as exc:
        if multirun:
            log.exception("sweep point %s failed", hc.job.num)
            commands.record_failure(run_dir, f"{type(exc).__name__}: {exc}")
            SWEEP.failed += 1
            return
        raise


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in ("--local_rank", "--local-rank") or (argv and argv[0].startswith("--local_rank=")):
        argv = argv[2:] if "=" not in argv[0] else argv[1:]  # deepspeed without --no_local_rank
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "report":
        from .report import report_main
        sys.exit(report_main(rest))
    if cmd not in COMMANDS:
        print(f"pp-sarathi: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    extra = [f"command={cmd}"]
    multirun = any(a in ("-m", "--multirun") for a in rest)
    if multirun and "WORLD_SIZE" in os.environ:
        print("pp-sarathi: error: a sweep (-m) starts fresh stage processes per point; run it "
              "directly, not under torchrun/deepspeed", file=sys.stderr)
        sys.exit(2)
    SWEEP.argv = [a for a in rest if not a.startswith("-")]
    if int(os.environ.get("RANK", "0")) != 0:
        # Only rank 0 writes files and logs. The other ranks get a scratch run dir: the default
        # runs/<time>-<id> differs per process and hydra would leave an empty dir per rank.
        import atexit
        import shutil
        import tempfile
        scratch = tempfile.mkdtemp(prefix=f"pp_sarathi-rank{os.environ['RANK']}-")
        atexit.register(shutil.rmtree, scratch, True)
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                  f"hydra.run.dir={scratch}"]
    sys.argv = [sys.argv[0]] + rest + extra
    register_configs()
    import hydra

    hydra.main(config_path=conf_dir(), config_name="config", version_base=None)(_task)()
    if multirun:
        SWEEP.finish()


if __name__ == "__main__":
    main()
