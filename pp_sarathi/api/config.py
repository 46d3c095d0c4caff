"""RunConfig for the Python API without hydra: presets read from ``conf/`` plus keyword overrides."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import RunConfig

CONF = Path(__file__).resolve().parents[1] / "conf"

# Short keyword names for the keys people set most; anything else as "group.key" or group__key.
ALIASES = {
    "dtype": "model.dtype", "max_model_len": "model.max_model_len",
    "chunk_size": "scheduler.chunk_size", "max_batch_size": "scheduler.max_batch_size",
    "tile_size": "scheduler.tile_size",
    "backend": "parallel.backend", "transport": "parallel.transport", "partition": "parallel.partition",
    "timeout_s": "parallel.timeout_s",
    "threads_per_stage": "parallel.threads_per_stage",
    "block_size": "cache.block_size", "num_blocks": "cache.num_blocks",
}


def read_preset(group: str, name: str) -> dict:
    """A flat ``key: value`` preset file of ``conf/<group>/``; values parsed as JSON scalars."""
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        raise ValueError(f"unknown {group} preset {name!r}; known: {', '.join(known)}")
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or ":" not in line:
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def is_preset(group: str, name: str) -> bool:
    return (CONF / group / f"{name}.yaml").is_file()


def _set(cfg: RunConfig, dotted: str, value) -> None:
    obj, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise TypeError(f"LLM(): unknown option {dotted!r} ({part!r} is not a key of {where}; "
                            f"see docs/guide.md, configuration reference)")
        if i == len(parts) - 1:
            setattr(obj, part, value)
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise TypeError(f"LLM(): {'.'.join(parts[:i + 1])} has no sub-keys")


def build_config(model, pp: int, scheduler: str, overrides: dict) -> RunConfig:
    """``model``: a preset name (default, tiny, smollm2, ...), an HF checkpoint dir or a .gguf file."""
    cfg = RunConfig()
    cfg.logging.progress = False
    cfg.logging.wandb.mode = "disabled"
    if model is None or (isinstance(model, str) and is_preset("model", model)):
        for k, v in read_preset("model", model or "default").items():
            _set(cfg, f"model.{k}", v)
    else:
        cfg.model.name = Path(model).name
        cfg.model.path = str(model)
    for k, v in read_preset("scheduler", scheduler).items():
        _set(cfg, f"scheduler.{k}", v)
    if not isinstance(pp, int) or pp < 1:
        raise ValueError(f"pp must be a positive integer, got {pp!r}")
    cfg.parallel.pp = pp
    for key, value in overrides.items():
        _set(cfg, ALIASES.get(key, key.replace("__", ".")), value)
    return cfg
