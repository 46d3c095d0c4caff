"""``pp-sarathi <command> [hydra overrides]``: the hydra app and subcommand dispatch."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

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


# Filled by _task in a multirun so that main() can summarise the sweep when it ends.
_SWEEP: dict = {}


def _sweep_keys(overrides: list[str]) -> set[str]:
    """Keys the command line sweeps over (``a=1,2``, ``range(...)``, ...)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        return {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)
                if o.is_sweep_override()}
    except Exception:  # noqa: BLE001 - naming only
        return set()


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
        _SWEEP.setdefault("dir", str(hc.sweep.dir))
        _SWEEP["jobs"] = _SWEEP.get("jobs", 0) + 1
        _SWEEP.setdefault("command", cfg.command)
    try:
        run_cfg: RunConfig = OmegaConf.to_object(cfg)
        run_cfg.output_dir = run_dir
        cfg_dict = OmegaConf.to_container(cfg, resolve=True)
        cfg_dict["output_dir"] = run_dir
        if multirun:
            # Sweep points: one wandb group per sweep, each run named by its swept values.
            wandb_cfg = cfg_dict.setdefault("logging", {}).setdefault("wandb", {})
            if not wandb_cfg.get("group"):
                wandb_cfg["group"] = Path(str(hc.sweep.dir)).name
            if not wandb_cfg.get("name"):
                swept = _sweep_keys(list(_SWEEP.get("argv", [])))
                parts = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
                wandb_cfg["name"] = ",".join(p.rsplit(".", 1)[-1] if "." in p.split("=", 1)[0] else p
                                             for p in parts) or f"job{hc.job.num}"
        commands.dispatch(run_cfg, cfg_dict, run_dir)
    except commands.UserError as exc:
        if rank0:
            commands.record_failure(run_dir, str(exc))
        if multirun:  # the failed point is recorded; the sweep goes on
            log.error("sweep point %s failed: %s", hc.job.num, exc)
            _SWEEP["failed"] = _SWEEP.get("failed", 0) + 1
            return
        _error(str(exc))
        sys.exit(2)
    except Exception as exc:
        if multirun:
            log.exception("sweep point %s failed", hc.job.num)
            commands.record_failure(run_dir, f"{type(exc).__name__}: {exc}")
            _SWEEP["failed"] = _SWEEP.get("failed", 0) + 1
            return
        raise


def _finish_sweep() -> None:
    """After a multirun of run/compare: summarise every point into sweep.csv and plots."""
    sweep_dir = _SWEEP.get("dir")
    if not sweep_dir or int(os.environ.get("RANK", "0")) != 0:
        return
    failed = _SWEEP.get("failed", 0)
    print(f"pp-sarathi: sweep finished: {_SWEEP.get('jobs', 0)} points, {failed} failed, in {sweep_dir}",
          flush=True)
    if _SWEEP.get("command") in ("run", "compare"):
        from .report import report_main
        try:
            report_main([sweep_dir])
        except Exception as exc:  # noqa: BLE001 - the sweep itself is done
            print(f"pp-sarathi: report failed ({exc}); rerun: pp-sarathi report {sweep_dir}",
                  file=sys.stderr)


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
    _SWEEP["argv"] = [a for a in rest if not a.startswith("-")]
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
        _finish_sweep()


if __name__ == "__main__":
    main()
