"""The checkpoint loader: sharded checkpoints, per-stage reads, clear errors, 4.x/5.x configs."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import build_hf_model, random_prompts, save_checkpoint
from pp_sarathi.model.arch import ModelArch, UnsupportedModelError
from pp_sarathi.model.kv_cache import PartSpec, build_attention_metadata
from pp_sarathi.model.loader import CheckpointError, LoadReport, load_stage

BLOCK = 4


def _prefill_logits(stages, prompt):
    """Run ``prompt`` through a chain of stages (one KV cache each); last-token logits."""
    parts = [PartSpec(0, len(prompt), list(range(1, 17)), True)]
    meta = build_attention_metadata(parts, BLOCK, "cpu", stages[0].arch.sliding_window)
    x = torch.tensor(prompt)
    for st in stages:
        x = st(x, meta, st.new_kv_cache(17, BLOCK))
    return x[0]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sharded_ckpt(tmp_path_factory, hf_checkpoint):
    path, hf_model = hf_checkpoint("llama")
    out = tmp_path_factory.mktemp("sharded")
    hf_model.save_pretrained(out, max_shard_size="20KB")
    return out


def test_sharded_checkpoint_loads_and_matches(sharded_ckpt, hf_checkpoint):
    path, hf_model = hf_checkpoint("llama")
    index = json.loads((sharded_ckpt / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2, shards
    assert not (sharded_ckpt / "model.safetensors").exists()
    single = load_stage(path, 0, 4)
    sharded = load_stage(sharded_ckpt, 0, 4)
    a, b = _state(single), _state(sharded)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    prompt = random_prompts([9], hf_model.config.vocab_size, seed=3)[0]
    with torch.no_grad():
        ref = hf_model(torch.tensor([prompt])).logits[0, -1]
    ours = _prefill_logits([sharded], prompt)
    assert (ours - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("ckpt", ["single", "sharded"])
def test_stage_reads_only_its_own_tensors(ckpt, sharded_ckpt, hf_checkpoint, monkeypatch):
    import safetensors

    path = hf_checkpoint("llama")[0] if ckpt == "single" else sharded_ckpt
    # Record every tensor actually pulled out of a safetensors file, independently of the
    # loader's own report.
    pulled: list[str] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self._f = real_open(*args, **kwargs)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._f.keys()

        def get_tensor(self, name):
            pulled.append(name)
            return self._f.get_tensor(name)

        def get_slice(self, name):
            pulled.append(name)
            return self._f.get_slice(name)

    import pp_sarathi.model.loader as loader_mod

    monkeypatch.setattr(loader_mod, "safe_open", Spy)
    report = LoadReport()
    stage = load_stage(path, 2, 4, report=report)
    assert sorted(pulled) == sorted(report.keys_read)
    assert len(pulled) == len(set(pulled)), "a tensor was read twice"
    per_layer = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                 "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
    expected = {f"model.layers.{i}.{n}" for i in (2, 3) for n in per_layer}
    # Last stage: final norm and the LM head, which is the (tied) embedding matrix.
    expected |= {"model.norm.weight", "model.embed_tokens.weight"}
    assert set(pulled) == expected
    assert stage.embed_tokens is None and stage.lm_head is not None
    assert stage.num_local_layers == 2

    # A first stage reads layers 0-1 and the embedding, not the final norm.
    pulled.clear()
    report = LoadReport()
    first = load_stage(path, 0, 2, report=report)
    assert set(pulled) == {f"model.layers.{i}.{n}" for i in (0, 1) for n in per_layer} | {
        "model.embed_tokens.weight"}
    assert first.lm_head is None and first.norm is None


def test_split_stages_compose_to_full_model(hf_checkpoint):
    path, hf_model = hf_checkpoint("llama")
    prompt = random_prompts([11], hf_model.config.vocab_size, seed=4)[0]
    full = _prefill_logits([load_stage(path, 0, 4)], prompt)
    split = _prefill_logits([load_stage(path, 0, 1), load_stage(path, 1, 3), load_stage(path, 3, 4)], prompt)
    assert (full - split).abs().max().item() <= 1e-5 * max(1.0, full.abs().max().item())


def _copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_tensor_names_it(tmp_path, hf_checkpoint):
    path = _copy_ckpt(hf_checkpoint("qwen2")[0], tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_stage(path, 0, 2)
    # A stage that does not need the tensor still loads.
    load_stage(path, 0, 1)


def test_unused_layer_tensor_is_refused(tmp_path, hf_checkpoint):
    """A bias the config does not announce would be silently dropped: refuse it instead."""
    path = _copy_ckpt(hf_checkpoint("mistral")[0], tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.bias"] = torch.zeros(tensors["model.layers.1.self_attn.o_proj.weight"].shape[0])
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.o_proj\.bias"):
        load_stage(path, 0, 2)
    load_stage(path, 0, 1)  # layer 1 is not this stage's


def test_missing_lm_head_names_it(tmp_path, hf_checkpoint):
    path = _copy_ckpt(hf_checkpoint("mistral")[0], tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        load_stage(path, 1, 2)


def test_shape_mismatch_names_it(tmp_path, hf_checkpoint):
    path = _copy_ckpt(hf_checkpoint("mistral")[0], tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight"):
        load_stage(path, 0, 2)


def test_shape_mismatch_against_config(tmp_path, hf_checkpoint):
    """config.json disagreeing with the weights (wrong intermediate size) is caught too."""
    path = _copy_ckpt(hf_checkpoint("mistral")[0], tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight"):
        load_stage(path, 0, 2)


def test_unsupported_architecture_names_it(tmp_path, hf_checkpoint):
    path = _copy_ckpt(hf_checkpoint("llama")[0], tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    cfg["model_type"] = "gpt2"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        ModelArch.from_pretrained(path)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        load_stage(path, 0, 4)


def test_missing_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelArch.from_pretrained(tmp_path)


BASE = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=1000,
            hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
            hidden_act="silu", eos_token_id=[5, 7], tie_word_embeddings=True)
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192, "rope_type": "llama3"}


def test_transformers_4x_and_5x_configs_parse_alike():
    v4 = dict(BASE, rope_theta=500000.0, torch_dtype="bfloat16", rope_scaling=dict(LLAMA3))
    v5 = dict(BASE, dtype="bfloat16", rope_parameters=dict(LLAMA3, rope_theta=500000.0))
    a4, a5 = ModelArch.from_hf_dict(v4), ModelArch.from_hf_dict(v5)
    for a in (a4, a5):
        assert a.rope_theta == 500000.0
        assert a.dtype == "bfloat16"
        assert a.rope_scaling["rope_type"] == "llama3" and a.rope_scaling["factor"] == 8.0
        assert a.rope_scaling["original_max_position_embeddings"] == 8192
        assert a.head_dim == 32 and a.num_kv_heads == 2 and a.eos_token_ids == (5, 7)
        assert a.tie_word_embeddings
    from pp_sarathi.model.arch import rope_inv_freq

    assert torch.equal(rope_inv_freq(a4), rope_inv_freq(a5))


def test_plain_rope_configs_parse_alike():
    v4 = dict(BASE, rope_theta=1e6, torch_dtype="float16")
    v5 = dict(BASE, dtype="float16", rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    v4_null = dict(v4, rope_scaling=None)
    for cfg in (v4, v5, v4_null):
        a = ModelArch.from_hf_dict(cfg)
        assert a.rope_theta == 1e6 and a.rope_scaling is None and a.dtype == "float16"
    # Old-style linear scaling ("type" instead of "rope_type").
    lin = ModelArch.from_hf_dict(dict(v4, rope_scaling={"type": "linear", "factor": 2.0}))
    plain = ModelArch.from_hf_dict(v4)
    from pp_sarathi.model.arch import rope_inv_freq

    assert torch.allclose(rope_inv_freq(lin), rope_inv_freq(plain) / 2)


def test_config_defaults_and_family_specifics():
    # No rope key at all -> theta 10000; no dtype -> float32.
    a = ModelArch.from_hf_dict({k: v for k, v in BASE.items()})
    assert a.rope_theta == 10000.0 and a.dtype == "float32" and a.rope_scaling is None
    q = ModelArch.from_hf_dict(dict(BASE, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                                    sliding_window=32, use_sliding_window=False))
    assert q.family == "qwen2" and q.qkv_bias and q.sliding_window is None
    m = ModelArch.from_hf_dict(dict(BASE, architectures=["MistralForCausalLM"], model_type="mistral",
                                    sliding_window=32))
    assert m.family == "mistral" and not m.qkv_bias and m.sliding_window == 32
    # Bias flags follow HF: llama attention_bias = q/k/v + o biases, mlp_bias = MLP biases;
    # Qwen2 = q/k/v biases only; Mistral has none whatever its config says.
    lb = ModelArch.from_hf_dict(dict(BASE, attention_bias=True, mlp_bias=True))
    assert lb.qkv_bias and lb.o_bias and lb.mlp_bias
    assert not (q.o_bias or q.mlp_bias)
    mb = ModelArch.from_hf_dict(dict(BASE, architectures=["MistralForCausalLM"], model_type="mistral",
                                     attention_bias=True))
    assert not (mb.qkv_bias or mb.o_bias or mb.mlp_bias)


def test_unsupported_rope_and_activation():
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelArch.from_hf_dict(dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(UnsupportedModelError, match="gelu"):
        ModelArch.from_hf_dict(dict(BASE, hidden_act="gelu"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_load_in_half_precision(dtype, hf_checkpoint):
    path = hf_checkpoint("qwen2")[0]
    stage = load_stage(path, 0, 2, dtype=dtype)
    want = getattr(torch, dtype)
    assert all(p.dtype == want for p in stage.parameters())
    logits = _prefill_logits([stage], [5, 6, 7, 8])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_unknown_dtype_rejected(hf_checkpoint):
    with pytest.raises(ValueError, match="float8"):
        load_stage(hf_checkpoint("qwen2")[0], 0, 2, dtype="float8")


def test_untied_checkpoint_with_tie_flag_uses_lm_head(tmp_path):
    """tie_word_embeddings=True but an lm_head.weight present: that tensor is the LM head."""
    model = build_hf_model("mistral", seed=8)
    path = save_checkpoint(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    stage = load_stage(path, 1, 2)
    assert torch.equal(stage.lm_head.weight, model.lm_head.weight)
