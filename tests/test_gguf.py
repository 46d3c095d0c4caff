"""llama-architecture GGUF checkpoints (model.path=FILE.gguf): dequantisation, llama.cpp's Q/K
permutation undone, per-stage reads, and bad files refused before any stage starts."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("gguf", reason="GGUF support needs the gguf package (scripts/setup.sh installs it)")

from conftest import build_hf_model, make_requests  # noqa: E402
from gguf_util import llamacpp_permute, write_llama_gguf  # noqa: E402
from test_model_reference import _run_and_compare  # noqa: E402

from pp_sarathi.model.arch import UnsupportedModelError  # noqa: E402
from pp_sarathi.model.gguf_file import GGUFError, unpermute_qk  # noqa: E402
from pp_sarathi.model.loader import CheckpointError, LoadReport, load_stage  # noqa: E402
from pp_sarathi.runtime.prepare import prepare  # noqa: E402
from pp_sarathi.workload.files import WorkloadFileError  # noqa: E402

DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def hf_llama():
    """Tiny llama (GQA 4/2 heads, tied embeddings) with plain rope, as GGUF files hold it."""
    return build_hf_model("llama", seed=3, rope_parameters=DEFAULT_ROPE)


@pytest.fixture(scope="module")
def f32_gguf(hf_llama, tmp_path_factory):
    return write_llama_gguf(hf_llama, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def test_unpermute_inverts_llamacpp_permutation():
    w = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3)
    for heads in (1, 2, 8):
        assert torch.equal(unpermute_qk(torch.from_numpy(llamacpp_permute(w.numpy(), heads)), heads), w)


def test_f32_gguf_greedy_matches_hf(f32_gguf, hf_llama, workload_file, run_config):
    _run_and_compare(f32_gguf, hf_llama, workload_file, run_config)


def test_untied_f16_gguf_greedy_matches_hf(tmp_path, workload_file, run_config):
    hf = build_hf_model("llama", seed=4, rope_parameters=DEFAULT_ROPE, tie_word_embeddings=False)
    with torch.no_grad():  # weights exactly representable in float16, so the file loses nothing
        for p in hf.parameters():
            p.copy_(p.half().float())
    path = write_llama_gguf(hf, tmp_path / "tiny-f16.gguf", qtype="F16")
    _run_and_compare(path, hf, workload_file, run_config)


def test_q8_0_gguf_dequantises_close_to_the_original(hf_llama, tmp_path):
    path = write_llama_gguf(hf_llama, tmp_path / "tiny-q8.gguf", qtype="Q8_0")
    ours = load_stage(path, 0, 4)
    ref = copy.deepcopy(hf_llama.model)
    hf_layer, our_layer = ref.layers[1], ours.layers[1]
    qkv = torch.cat([hf_layer.self_attn.q_proj.weight, hf_layer.self_attn.k_proj.weight,
                     hf_layer.self_attn.v_proj.weight])
    for got, want in [(our_layer.qkv_proj.weight, qkv),
                      (our_layer.down_proj.weight, hf_layer.mlp.down_proj.weight),
                      (ours.embed_tokens.weight, ref.embed_tokens.weight)]:
        err = (got.detach() - want.detach()).abs().max() / want.detach().abs().max()
        assert err < 0.01, err  # 8-bit blocks: well under 1 % of the range; a wrong row order is ~100 %


def test_stage_reads_only_its_own_layers(f32_gguf):
    first, last = LoadReport(), LoadReport()
    load_stage(f32_gguf, 0, 2, report=first)
    load_stage(f32_gguf, 2, 4, report=last)
    assert {k.split(".")[1] for k in first.keys_read if k.startswith("blk.")} == {"0", "1"}
    assert {k.split(".")[1] for k in last.keys_read if k.startswith("blk.")} == {"2", "3"}
    assert "output_norm.weight" not in first.keys_read and "output_norm.weight" in last.keys_read
    assert "token_embd.weight" in last.keys_read  # tied: the last stage's LM head


def _prepare(path, workload_file, run_config, prompt=None):
    req = {"id": "a", "prompt": prompt, "max_tokens": 2} if prompt else make_requests([[5, 6]], 2)[0]
    return prepare(run_config(path, workload_file([req])))


def test_wrong_architecture_is_refused(hf_llama, tmp_path, workload_file, run_config):
    path = write_llama_gguf(hf_llama, tmp_path / "gpt2.gguf", architecture="gpt2")
    with pytest.raises(UnsupportedModelError, match="GGUF architecture 'gpt2' is not supported"):
        _prepare(path, workload_file, run_config)


@pytest.mark.parametrize("keep", [0.6, 0.02])
def test_truncated_file_is_refused(f32_gguf, keep, tmp_path, workload_file, run_config):
    data = f32_gguf.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(GGUFError, match="truncated"):
        _prepare(path, workload_file, run_config)


def test_unknown_quantisation_is_refused(hf_llama, tmp_path, workload_file, run_config):
    import gguf

    from pp_sarathi.model.gguf_file import supported_types

    q81 = gguf.GGMLQuantizationType.Q8_1
    assert q81 not in supported_types()  # otherwise pick another type for this test
    path = write_llama_gguf(hf_llama, tmp_path / "q81.gguf", extra_types={"blk.1.ffn_up.weight": q81})
    with pytest.raises(GGUFError, match="blk.1.ffn_up.weight uses quantisation Q8_1"):
        _prepare(path, workload_file, run_config)


def test_missing_tensor_is_refused(hf_llama, tmp_path, workload_file, run_config):
    path = write_llama_gguf(hf_llama, tmp_path / "holes.gguf", skip=("blk.3.ffn_down.weight",))
    with pytest.raises(CheckpointError, match="missing tensor.*blk.3.ffn_down.weight"):
        _prepare(path, workload_file, run_config)


def test_missing_gguf_file_names_it(tmp_path, workload_file, run_config):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        _prepare(tmp_path / "nope.gguf", workload_file, run_config)


def test_text_prompt_with_gguf_without_tokenizer(f32_gguf, workload_file, run_config):
    with pytest.raises(WorkloadFileError, match="embeds no tokenizer"):
        _prepare(f32_gguf, workload_file, run_config, prompt="hello")
