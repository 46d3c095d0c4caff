"""pp_sarathi: pipeline-parallel LLM inference with SARATHI. Python API: ``LLM``, ``SamplingParams``."""

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name):
    # Lazy: `import pp_sarathi` (the CLI, the simulator) does not pay for torch and the runtime.
    if name in ("LLM", "SamplingParams", "RequestOutput", "GenerateResult"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'pp_sarathi' has no attribute {name!r}")
