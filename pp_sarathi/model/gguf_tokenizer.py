"""Build a ``tokenizers`` tokenizer from the vocabulary a GGUF file embeds.

Byte-level BPE vocabularies (``tokenizer.ggml.model = gpt2``: SmolLM, Llama 3, Qwen, ...) are
supported. The pre-tokenizer follows llama.cpp's ``tokenizer.ggml.pre`` so that text splits as
the model was trained on: e.g. ``smollm`` splits digits one by one before the GPT-2 regex.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .tokenizer import Tokenizer, TokenizerError, tokenizers_module

log = logging.getLogger("pp_sarathi")

# llama.cpp token types (tokenizer.ggml.token_type) that are never split by the BPE model.
_CONTROL, _USER_DEFINED = 3, 4

# Llama 3 / tiktoken-style split (cl100k): contractions, letter runs, 1-3 digit groups, ...
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGIT_FIRST = {"smollm", "starcoder", "refact", "falcon3"}  # each digit its own word, then GPT-2 regex
_LLAMA3_LIKE = {"llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", "qwen2", "deepseek-r1-qwen"}


def _pre_tokenizer(tk_mod, pre: str | None):
    pt = tk_mod.pre_tokenizers
    if pre in _DIGIT_FIRST:
        return pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)])
    if pre in _LLAMA3_LIKE:
        return pt.Sequence([pt.Split(tk_mod.Regex(_LLAMA3_SPLIT), behavior="isolated"),
                            pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre not in (None, "default", "gpt2", "gpt-2"):
        log.warning("GGUF pre-tokenizer %r is not known here; splitting text with the GPT-2 regex", pre)
    return pt.ByteLevel(add_prefix_space=False)


def tokenizer_from_gguf(path: str | Path, ckpt=None) -> Tokenizer | None:
    """The GGUF's embedded tokenizer, or ``None`` when the file embeds none."""
    from .gguf_file import GGUFCheckpoint

    ckpt = ckpt or GGUFCheckpoint(path)
    kind = ckpt.field("tokenizer.ggml.model", None)
    if kind is None:
        return None
    if kind != "gpt2":
        raise TokenizerError(f"{path}: embedded tokenizer type {kind!r} is not supported for text "
                             "(byte-level BPE 'gpt2' only); give prompt_token_ids instead")
    tk = tokenizers_module()
    tokens = ckpt.field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in ckpt.field("tokenizer.ggml.merges", [])]
    types = ckpt.field("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = _pre_tokenizer(tk, ckpt.field("tokenizer.ggml.pre", None))
    backend.decoder = tk.decoders.ByteLevel()
    special = [tk.AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)]
    backend.add_special_tokens(special)
    bos = ckpt.field("tokenizer.ggml.bos_token_id", None)
    if ckpt.field("tokenizer.ggml.add_bos_token", False) and bos is not None:
        bos_tok = tokens[int(bos)]
        backend.post_processor = tk.processors.TemplateProcessing(
            single=f"{bos_tok} $A", pair=f"{bos_tok} $A $B", special_tokens=[(bos_tok, int(bos))])
    return Tokenizer(backend, f"{path} (embedded {kind} tokenizer)")
