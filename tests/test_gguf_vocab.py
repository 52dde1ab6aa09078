"""Tokenizers built from GGUF metadata against llama.cpp's own tokenizer tests.

llama.cpp checks itself with vocabulary-only GGUFs and, per file, `.inp` texts and `.out` ids
(tests/test-tokenizer-0.cpp: no BOS added, special tokens not parsed). The same files, from the
llama-cpp-python source distribution (fixture `llama_cpp_vocabs`), must give the same ids here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from engine.gguf_file import GGUFFile
from tokenizer import TextStream, Tokenizer, TokenizerError

# Every vocabulary with cases, except bert-bge (a WordPiece embedding model, not a chat model).
CASES = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
         "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]
SEPARATOR = "\n__ggml_vocab_test__\n"

# Whether llama.cpp starts a prompt with BOS (llama_vocab_get_add_bos), for files that say so
# and, marked *, for files that do not (then it follows the tokenizer kind and pre-tokenizer).
ADD_BOS = {"aquila": False, "baichuan": True, "command-r": True, "deepseek-coder": True,  # * * . .
           "deepseek-llm": True, "falcon": False, "gemma-4": True, "gpt-2": False,  # . * . *
           "gpt-neox": False, "llama-bpe": True, "llama-spm": True, "mpt": False,  # * * . *
           "phi-3": True, "qwen2": False, "qwen35": False, "refact": False,  # . * * *
           "starcoder": False}  # *


@functools.cache
def load(folder: Path, name: str) -> Tokenizer:
    path = folder / f"ggml-vocab-{name}.gguf"
    return Tokenizer.from_path(path, GGUFFile(path).metadata)  # as the server loads a model


def cases(folder: Path, name: str) -> list[tuple[str, list[int]]]:
    """Parsed as test-tokenizer-0.cpp parses them: texts split at the separator, one line of ids
    per text."""
    raw = (folder / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        cut = raw.find(SEPARATOR, pos)
        texts.append(raw[pos:] if cut < 0 else raw[pos:cut])
        pos = len(raw) if cut < 0 else cut + len(SEPARATOR)
    lines = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts)
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_cases(llama_cpp_vocabs, name):
    tok = load(llama_cpp_vocabs, name)
    tests = cases(llama_cpp_vocabs, name)
    assert len(tests) >= 40
    tok.hf.encode_special_tokens = True  # llama.cpp's test does not parse special tokens
    try:
        failed = [(text, want, ids) for text, want in tests
                  if (ids := tok.hf.encode(text, add_special_tokens=False).ids) != want]
    finally:
        tok.hf.encode_special_tokens = False
    assert not failed, f"{len(failed)} of {len(tests)} cases differ, first: {failed[0]}"


@pytest.mark.parametrize("name", CASES)
def test_decoding_and_streaming(llama_cpp_vocabs, name):
    """Each case decodes back to its text, all at once and streamed token by token; a streamed
    piece never holds half a character (byte-fallback and byte-level pieces are held back)."""
    tok = load(llama_cpp_vocabs, name)
    for text, ids in cases(llama_cpp_vocabs, name):
        whole = tok.decode(ids)
        stream = TextStream(tok)
        pieces = [stream.push(i) for i in ids]
        assert "".join(pieces) == whole, text
        assert not any("\ufffd" in p for p in pieces) or "\ufffd" in text, (text, pieces)
        assert b"".join(tok.token_bytes(i) for i in ids).decode("utf-8", "replace").endswith(
            whole.lstrip(" ")), text
        if tok.byte_level:  # byte-level BPE decodes exactly; SentencePiece drops its space prefix
            assert whole == text


@pytest.mark.parametrize("name", sorted(ADD_BOS))
def test_bos_as_llama_cpp_adds_it(llama_cpp_vocabs, name):
    tok = load(llama_cpp_vocabs, name)
    assert tok.add_bos is ADD_BOS[name]
    ids = tok.encode("Hello world")
    assert (ids[0] == tok.bos_id) is ADD_BOS[name]


def test_sentencepiece_details(llama_cpp_vocabs):
    tok = load(llama_cpp_vocabs, "llama-spm")
    assert not tok.byte_level
    # the space prefix, byte fallback for a character no token spells, ▁ for spaces
    space = tok.hf.token_to_id("▁")
    assert tok.encode(" Hello", add_bos=False) == [space, *tok.encode("Hello", add_bos=False)]
    ids = tok.encode("🦙", add_bos=False)
    assert [tok.hf.id_to_token(i) for i in ids] == ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert b"".join(tok.token_bytes(i) for i in ids) == " 🦙".encode()
    # control tokens are parsed in prompts (and then no space prefix is glued to them)
    assert tok.encode("<s>Hi", add_bos=False)[0] == tok.bos_id
    assert tok.decode(tok.encode("Hi there", add_bos=False)) == "Hi there"


def test_user_defined_tokens_always_match(llama_cpp_vocabs):
    tok = load(llama_cpp_vocabs, "gemma-4")
    tool_call = tok.hf.token_to_id("<|tool_call>")
    tok.hf.encode_special_tokens = True
    try:
        assert tool_call in tok.hf.encode("call <|tool_call> now", add_special_tokens=False).ids
    finally:
        tok.hf.encode_special_tokens = False


def test_unsupported_vocabularies_are_named(llama_cpp_vocabs):
    with pytest.raises(TokenizerError, match="tokenizer model 'bert' is not supported"):
        load(llama_cpp_vocabs, "bert-bge")
    path = llama_cpp_vocabs / "ggml-vocab-gpt-2.gguf"
    meta = dict(GGUFFile(path).metadata, **{"tokenizer.ggml.pre": "kimi-k2"})
    with pytest.raises(TokenizerError, match="pre-tokenizer 'kimi-k2' is not supported"):
        Tokenizer.from_path(path, meta)
