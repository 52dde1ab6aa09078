"""A GGUF file's vocabulary as a `tokenizers.Tokenizer` that splits text exactly as llama.cpp does.

Owns: `GGUFVocab`, `vocab_from_gguf`. Imports: tokenizers, tokenizer.pretokenizers, stdlib.
Used by: tokenizer.tokenizer.

Three kinds of vocabulary, by `tokenizer.ggml.model`:

- `gpt2`: byte-level BPE. Text is split by the regexes llama.cpp names in `tokenizer.ggml.pre`
  (the table in tokenizer/pretokenizers.py), each piece is written in GPT-2's byte alphabet and
  merged by the file's merge list.
- `llama`: SentencePiece. Spaces become U+2581 "▁", a "▁" starts every run of text (unless
  `tokenizer.ggml.add_space_prefix` is false), and the pair whose merged token has the highest
  score merges first; a character no token spells is written as its UTF-8 bytes, `<0xNN>` tokens.
  That is BPE with merges ranked by score, which is how it is built here.
- `gemma4`: BPE over UTF-8 text with "▁" for spaces and `<0xNN>` byte fallback, split only at
  newlines.

Control tokens (type 3) are special: matched in text only when special tokens are parsed.
User-defined tokens (type 4) are always matched, before the text around them is split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from tokenizer.pretokenizers import NAMES, RAW_UTF8, REGEXES

# llama.cpp's token types (llama_token_type in llama.h)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # "▁", SentencePiece's written space


class VocabError(ValueError):
    """A GGUF vocabulary Ember cannot build (the message names what and why)."""


@dataclass
class GGUFVocab:
    hf: HFTokenizer
    add_bos: bool  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token


def vocab_from_gguf(get: Callable[[str, Any], Any]) -> GGUFVocab:
    """Build the tokenizer from a GGUF's metadata; `get(key, default)` reads one key."""
    kind = get("tokenizer.ggml.model", None)
    build = {"gpt2": _byte_level_bpe, "llama": _sentencepiece, "gemma4": _gemma4}.get(kind)
    if build is None:
        raise VocabError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2 for "
                         "byte-level BPE, llama for SentencePiece, gemma4)")
    tokens = list(get("tokenizer.ggml.tokens", None) or [])
    if not tokens:
        raise VocabError("the GGUF file has no tokenizer.ggml.tokens")
    types = list(get("tokenizer.ggml.token_type", None) or [NORMAL] * len(tokens))
    hf, add_bos = build(tokens, types, get)
    _add_special_tokens(hf, tokens, types, str(get("general.name", "") or "").lower())
    explicit = get("tokenizer.ggml.add_bos_token", None)
    if explicit is not None and kind != "gemma4":  # llama.cpp forces BOS on for gemma4
        add_bos = bool(explicit)
    return GGUFVocab(hf, add_bos)


def _byte_level_bpe(tokens, types, get):
    name = get("tokenizer.ggml.pre", None) or "default"
    if name not in NAMES:
        raise VocabError(f"GGUF pre-tokenizer {name!r} is not supported (Ember knows llama.cpp's: "
                         f"{', '.join(sorted(NAMES))})")
    kind, flags = NAMES[name]
    raw = kind in RAW_UTF8
    hf = HFTokenizer(models.BPE(vocab=_ids(tokens), merges=_merges(get), byte_fallback=raw,
                                ignore_merges="ignore_merges" in flags))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in REGEXES[kind]]
    if raw:
        hf.normalizer = normalizers.Replace(" ", SPACE)
        hf.decoder = _metaspace_decoder(strip_first=False)
    else:
        splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        hf.decoder = decoders.ByteLevel()
    hf.pre_tokenizer = pre_tokenizers.Sequence(splits)
    return hf, "add_bos" in flags


def _sentencepiece(tokens, types, get):
    scores = list(get("tokenizer.ggml.scores", None) or [])
    if len(scores) != len(tokens):
        raise VocabError("a SentencePiece vocabulary needs one tokenizer.ggml.scores per token")
    unk = get("tokenizer.ggml.unknown_token_id", 0)
    hf = HFTokenizer(models.BPE(vocab=_ids(tokens), merges=_merges_by_score(tokens, types, scores),
                                byte_fallback=True,
                                unk_token=tokens[unk] if 0 <= unk < len(tokens) else None))
    prefix = bool(get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend(SPACE)] if prefix else []
    hf.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    hf.decoder = _metaspace_decoder(strip_first=prefix)
    return hf, True


def _gemma4(tokens, types, get):
    hf = HFTokenizer(models.BPE(vocab=_ids(tokens), merges=_merges(get), byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", SPACE)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated")
    hf.decoder = _metaspace_decoder(strip_first=False)
    return hf, True


def _ids(tokens: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        ids.setdefault(t, i)  # a repeated string keeps its first id, as llama.cpp's lookup does
    return ids


def _merges(get) -> list[tuple[str, str]]:
    merges = get("tokenizer.ggml.merges", None)
    if merges is None:
        raise VocabError("the GGUF file has no tokenizer.ggml.merges")
    out = []
    for m in merges:
        cut = m.find(" ", 1)  # as llama.cpp reads them: the first space after the first char
        if cut > 0:
            out.append((m[:cut], m[cut + 1:]))
    return out


def _merges_by_score(tokens, types, scores) -> list[tuple[str, str]]:
    """Every way to spell a token as two tokens, ranked by the merged token's score (highest
    first): BPE with these merges picks the same pair SentencePiece's highest-score rule does."""
    ids = _ids(tokens)
    ranked = []
    for i, t in enumerate(tokens):
        if types[i] == BYTE or len(t) < 2:
            continue
        for k in range(1, len(t)):
            if t[:k] in ids and t[k:] in ids:
                ranked.append((-scores[i], i, t[:k], t[k:]))
    ranked.sort()
    return [(a, b) for _, _, a, b in ranked]


def _metaspace_decoder(strip_first: bool):
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if strip_first:  # the space prefix the encoder added is not part of the text
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


# Token strings llama.cpp makes control tokens whatever the file says (llama-vocab.cpp finds
# end-of-generation and fill-in-the-middle tokens by their text), and ones it makes plain text.
_CONTROL_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
    "▁<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
    "▁<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
    "▁<MID>", "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
})
_ALWAYS_TEXT = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})


def _token_kinds(tokens: list[str], types: list[int]) -> list[int]:
    """The token types llama.cpp tokenizes by, after its by-text corrections."""
    present = set(tokens)
    kinds = []
    for t, k in zip(tokens, types):
        if t in _ALWAYS_TEXT:
            k = USER_DEFINED
        elif t == "</s>" and "<|tool_response>" in present:  # gemma4's </s> is a plain token
            k = NORMAL
        elif t == "<|end|>" and {"<|return|>", "<|call|>"} <= present:  # gpt-oss
            k = USER_DEFINED
        elif t in _CONTROL_TEXTS:
            k = CONTROL
        kinds.append(k)
    return kinds


def _add_special_tokens(hf: HFTokenizer, tokens, types, model_name: str) -> None:
    kinds = _token_kinds(tokens, types)
    # llama.cpp strips the whitespace after Phi-3's special tokens (llama-vocab.cpp, by name).
    phi3 = "phi-3" in model_name or "phi3" in model_name
    keep_space = {"<unk>", "<s>", "<|endoftext|>"}

    def added(t: str, special: bool) -> AddedToken:
        return AddedToken(t, special=special, normalized=False,
                          rstrip=phi3 and t not in keep_space)

    hf.add_special_tokens([added(t, True) for t, k in zip(tokens, kinds) if k in (CONTROL, UNKNOWN)])
    hf.add_tokens([added(t, False) for t, k in zip(tokens, kinds) if k == USER_DEFINED])
