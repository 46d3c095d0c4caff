"""Text workloads: the checkpoint's tokenizer.json encodes JSONL prompts, outputs carry the
decoded text, EOS ids from generation_config.json and sampling.stop strings end requests."""
from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("tokenizers", reason="text workloads need the tokenizers package")

from conftest import make_requests, run_engine  # noqa: E402

from pp_sarathi.model.text_support import load_tokenizer
from pp_sarathi.model.tokenizer import TokenizerError  # noqa: E402
from pp_sarathi.runtime.prepare import prepare  # noqa: E402
from pp_sarathi.workload.files import WorkloadFileError  # noqa: E402

PROMPTS = ["the cat sat on the mat", "a dog ran", "hello world hello"]


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` ids: 0-2 special, then real words, then w<i>.
    Its decode joins words with spaces, so a stop string is easy to place in the text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "hello", "world"]
    words += [f"w{i}" for i in range(len(words), vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="session")
def text_ckpt(llama_ckpt, llama_hf, tmp_path_factory):
    """The tiny llama checkpoint plus a tokenizer.json."""
    d = tmp_path_factory.mktemp("text_ckpt") / "llama"
    shutil.copytree(llama_ckpt, d)
    word_tokenizer(llama_hf.config.vocab_size).save(str(d / "tokenizer.json"))
    (d / "generation_config.json").unlink(missing_ok=True)
    return d


def text_requests(max_tokens=8):
    return [{"id": f"t{i}", "prompt": p, "max_tokens": max_tokens} for i, p in enumerate(PROMPTS)]


@pytest.fixture
def free_run(text_ckpt, workload_file, run_config):
    """Greedy outputs with EOS ignored: the reference the stop tests cut."""
    return run_engine(run_config(text_ckpt, workload_file(text_requests()), ignore_eos=True))


def test_text_prompts_are_tokenized_and_outputs_decoded(text_ckpt, free_run):
    tok = load_tokenizer(text_ckpt)
    for seq, prompt in zip(free_run.sequences, PROMPTS):
        assert seq.request.prompt_token_ids == tok.encode(prompt)
        assert seq.request.prompt_token_ids[0] == 1  # the tokenizer's BOS template applies
        assert seq.text == tok.decode(seq.output_token_ids)
        assert seq.text and seq.finish_reason == "length"


def test_outputs_jsonl_has_text(free_run, tmp_path):
    from pp_sarathi.metrics.outputs import write_outputs

    write_outputs(free_run.sequences, tmp_path / "o.jsonl", with_logprobs=False)
    recs = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["text"] for r in recs] == [s.text for s in free_run.sequences]


def test_eos_from_generation_config_stops(text_ckpt, free_run, tmp_path, workload_file, run_config):
    ref = free_run.sequences[0].output_token_ids
    eos = ref[3]
    d = tmp_path / "eos_ckpt"
    shutil.copytree(text_ckpt, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 2]}))
    wl = workload_file(text_requests())
    out = run_engine(run_config(d, wl, ignore_eos=False))
    seq = out.sequences[0]
    assert seq.finish_reason == "stop"
    assert seq.output_token_ids == ref[:ref.index(eos) + 1]  # the EOS itself is the last token
    # ignore_eos keeps generating to max_tokens.
    out = run_engine(run_config(d, wl, ignore_eos=True))
    assert out.sequences[0].output_token_ids == ref and out.sequences[0].finish_reason == "length"


def test_stop_string_ends_request(text_ckpt, free_run, workload_file, run_config):
    tok = load_tokenizer(text_ckpt)
    ref = free_run.sequences[1].output_token_ids
    stop = tok.decode(ref[4:5])  # the word generated fifth
    cfg = run_config(text_ckpt, workload_file(text_requests()), ignore_eos=True)
    cfg.sampling.stop = [stop]
    out = run_engine(cfg)
    seq = out.sequences[1]
    first = next(j for j in range(1, len(ref) + 1) if stop in tok.decode(ref[:j]))
    assert seq.finish_reason == "stop"
    assert seq.output_token_ids == ref[:first]
    full = tok.decode(ref[:first])
    assert seq.text == full[:full.find(stop)]  # text ends before the stop string
    for other, r in zip(out.sequences, free_run.sequences):
        if stop not in (r.text or ""):
            assert other.output_token_ids == r.output_token_ids and other.finish_reason == "length"


def test_text_prompt_without_tokenizer_json(llama_ckpt, workload_file, run_config):
    with pytest.raises(WorkloadFileError) as info:
        prepare(run_config(llama_ckpt, workload_file(text_requests())))
    assert "has no tokenizer.json" in str(info.value) and str(llama_ckpt) in str(info.value)
    assert ":1:" in str(info.value)  # names the line


def test_text_prompt_on_embedded_model(tmp_path, workload_file, run_config):
    cfg = run_config(None, workload_file(text_requests()))
    cfg.model.path, cfg.model.name = None, "tiny"
    for k, v in dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=128).items():
        setattr(cfg.model, k, v)
    with pytest.raises(WorkloadFileError, match="embedded random-init model has no tokenizer"):
        prepare(cfg)


def test_stop_strings_without_tokenizer(llama_ckpt, workload_file, run_config):
    cfg = run_config(llama_ckpt, workload_file(make_requests([[5, 6]], 2)))
    cfg.sampling.stop = ["x"]
    with pytest.raises(TokenizerError, match="sampling.stop need.*has no tokenizer.json"):
        prepare(cfg)


@pytest.mark.parametrize("line, why", [
    ('{"id": "a", "prompt": "", "max_tokens": 3}', "prompt must be a non-empty string"),
    ('{"id": "a", "prompt": 7, "max_tokens": 3}', "prompt must be a non-empty string"),
])
def test_malformed_text_prompt(line, why, text_ckpt, tmp_path, run_config):
    path = tmp_path / "w.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(WorkloadFileError, match=why):
        prepare(run_config(text_ckpt, path))


def test_empty_stop_string_rejected(text_ckpt, workload_file, run_config):
    cfg = run_config(text_ckpt, workload_file(text_requests()))
    cfg.sampling.stop = [""]
    with pytest.raises(ValueError, match="non-empty strings"):
        prepare(cfg)


def test_cli_compare_with_text_prompts(text_ckpt, workload_file, tmp_path):
    from test_cli import QUIET, cli

    wl = workload_file(text_requests(max_tokens=4))
    d = tmp_path / "cmp"
    r = cli(["compare", "parallel.pp=1", f"model.path={text_ckpt}", "workload=jsonl", f"workload.path={wl}",
             "scheduler.chunk_size=4", "logging.timeline=false", *QUIET, f"hydra.run.dir={d}"])
    assert r.returncode == 0, r.stderr[-3000:]
    tok = load_tokenizer(text_ckpt)
    for name in ("orca", "sarathi"):
        recs = [json.loads(line) for line in (d / name / "outputs.jsonl").read_text().splitlines()]
        assert [rec["prompt_token_ids"] for rec in recs] == [tok.encode(p) for p in PROMPTS]
        assert all(rec["text"] == tok.decode(rec["output_token_ids"]) for rec in recs)


def test_cli_text_prompt_without_tokenizer_fails_before_stages(workload_file, tmp_path):
    from test_cli import QUIET, _one_line_error, cli

    wl = workload_file(text_requests())
    r = cli(["run", "parallel.pp=2", "model=tiny", "workload=jsonl", f"workload.path={wl}", *QUIET,
             f"hydra.run.dir={tmp_path / 'run'}"])
    _one_line_error(r, "embedded random-init model has no tokenizer")
    assert "stage" not in r.stderr  # refused in the launcher: no stage process ever started
