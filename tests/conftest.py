"""Shared fixtures: tiny random-init HF checkpoints (written once per session with
``transformers``), workload files and run configs.

The checkpoints are deliberately small (hidden 64, 2-4 layers, vocab 300-400) so the whole
suite runs in seconds on a 2-core CPU, but use a large init range so greedy decoding is not
stuck on one token, and random norm weights / QKV biases so those code paths are exercised.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pp_sarathi.config import RunConfig

# One entry per supported family; each exercises a different corner of the architecture.
FAMILY_SPECS = {
    # GQA (4 query heads, 2 KV heads), tied embeddings, llama3 rope scaling whose original
    # context (64) is below max_position_embeddings so the scaled, smoothed and unscaled
    # frequency bands all occur for head_dim 16.
    "llama": dict(
        cls="LlamaForCausalLM", cfg="LlamaConfig", vocab_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
    ),
    # QKV bias (randomised below: HF initialises biases to zero), untied LM head.
    "qwen2": dict(
        cls="Qwen2ForCausalLM", cfg="Qwen2Config", vocab_size=320, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    ),
    # Multi-query attention (1 KV head), untied; sliding window large enough not to bind
    # in the reference prompts (see test_model_reference for a binding window).
    "mistral": dict(
        cls="MistralForCausalLM", cfg="MistralConfig", vocab_size=300, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        sliding_window=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
}

COMMON = dict(hidden_size=64, intermediate_size=128, max_position_embeddings=128,
              initializer_range=0.4, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)


def build_hf_model(family: str, seed: int = 0, **overrides):
    """A random-init HF model of ``family`` in float32 eval mode."""
    import transformers

    spec = dict(FAMILY_SPECS[family])
    cls = getattr(transformers, spec.pop("cls"))
    cfg_cls = getattr(transformers, spec.pop("cfg"))
    kwargs = {**COMMON, **spec, **overrides}
    config = cfg_cls(**kwargs)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # HF initialises RMSNorm weights to 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):  # ... and biases to 0
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def save_checkpoint(model, path: Path, **save_kwargs) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, **save_kwargs)
    return path


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


_CACHE: dict[str, tuple[Path, object]] = {}


def _family_ckpt(root: Path, family: str):
    if family not in _CACHE:
        model = build_hf_model(family)
        _CACHE[family] = (save_checkpoint(model, root / family), model)
    return _CACHE[family]


@pytest.fixture(scope="session")
def hf_checkpoint(ckpt_root):
    """``hf_checkpoint(family) -> (checkpoint dir, the HF model it was saved from)``."""
    return lambda family: _family_ckpt(ckpt_root, family)


@pytest.fixture(scope="session")
def llama_ckpt(hf_checkpoint) -> Path:
    return hf_checkpoint("llama")[0]


@pytest.fixture(scope="session")
def llama_hf(hf_checkpoint):
    return hf_checkpoint("llama")[1]


def write_jsonl(path: Path, requests: list[dict]) -> Path:
    """Write a ``workload=jsonl`` file; each request needs id, prompt_token_ids, max_tokens."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def make_requests(prompts: list[list[int]], max_tokens: int | list[int]) -> list[dict]:
    if isinstance(max_tokens, int):
        max_tokens = [max_tokens] * len(prompts)
    return [{"id": f"r{i}", "prompt_token_ids": list(p), "max_tokens": m}
            for i, (p, m) in enumerate(zip(prompts, max_tokens))]


def random_prompts(lengths: list[int], vocab_size: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    # Avoid the special ids 0-2 so an EOS never hides in a prompt.
    return [torch.randint(3, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def make_run_config(model_path, workload_path, *, scheduler: str = "sarathi", chunk_size: int = 8,
                    max_batch_size: int = 8, dtype: str = "float32", logprobs: int = 0,
                    ignore_eos: bool = True, temperature: float = 0.0, block_size: int = 4,
                    num_blocks: int = 0, output_dir=".") -> RunConfig:
    cfg = RunConfig()
    cfg.device = "cpu"
    cfg.model.path = str(model_path)
    cfg.model.dtype = dtype
    cfg.scheduler.name = scheduler
    cfg.scheduler.chunk_size = chunk_size
    cfg.scheduler.max_batch_size = max_batch_size
    cfg.cache.block_size = block_size
    cfg.cache.num_blocks = num_blocks
    cfg.workload.name = "jsonl"
    cfg.workload.path = str(workload_path)
    cfg.sampling.temperature = temperature
    cfg.sampling.logprobs = logprobs
    cfg.sampling.ignore_eos = ignore_eos
    cfg.parallel.pp = 1
    cfg.logging.progress = False
    cfg.logging.trace = False
    cfg.logging.timeline = False
    cfg.logging.wandb.mode = "disabled"
    cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def workload_file(tmp_path):
    """``workload_file(requests) -> path`` of a jsonl file in this test's tmp dir."""
    counter = iter(range(10**6))
    return lambda requests: write_jsonl(tmp_path / f"workload{next(counter)}.jsonl", requests)


@pytest.fixture
def run_config():
    return make_run_config


def run_engine(cfg: RunConfig):
    from pp_sarathi.runtime.prepare import prepare
    from pp_sarathi.runtime.launch import serve_local

    return serve_local(prepare(cfg))


def _dump_outcome(outcome, path: str) -> None:
    """finalize hook of a pipeline run in a test: rank 0 pickles its outcome for the test."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump(outcome, f)


def run_pipeline(cfg: RunConfig, pp: int, tmp_dir: Path):
    """Run ``cfg`` over ``pp`` real stage processes (gloo on CPU) through the runtime's own
    launcher; returns rank 0's RunOutcome."""
    import functools
    import pickle

    from pp_sarathi.runtime.launch import launch
    from pp_sarathi.runtime.prepare import prepare

    cfg.parallel.pp = pp
    cfg.parallel.threads_per_stage = 1
    path = Path(tmp_dir) / f"outcome_pp{pp}.pkl"
    launch(prepare(cfg), functools.partial(_dump_outcome, path=str(path)))
    with open(path, "rb") as f:
        return pickle.load(f)
