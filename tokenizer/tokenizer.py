"""Text <-> token ids for a model: a `tokenizers.Tokenizer` built from `tokenizer.json` or from
the vocabulary in a GGUF file, plus the model's special tokens and chat template.

Owns: `Tokenizer`, `TokenizerError`, `tokenizer_from_gguf`. Imports: tokenizers, gguf, stdlib.
Used by: server (prompts, streaming text), tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer


class TokenizerError(ValueError):
    """A tokenizer file that is missing, malformed or of a kind we do not support."""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-in character -> byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()

# End-of-turn tokens of common chat templates: generating one ends the assistant's turn even when
# the model's generation config does not list it.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>")


@dataclass
class Tokenizer:
    """A loaded tokenizer. `eos_ids` are every token id that ends generation."""

    hf: HFTokenizer
    bos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool
    chat_template: str | None
    special_ids: frozenset[int] = field(default=frozenset())

    @classmethod
    def from_path(cls, path: str | Path, gguf_metadata: dict | None = None) -> Tokenizer:
        """From a `.gguf` file (or its open `gguf.GGUFReader`) or a Hugging Face directory
        holding `tokenizer.json`."""
        path = Path(path)
        if path.is_dir():
            return _from_hf_dir(path)
        if path.suffix == ".gguf":
            return tokenizer_from_gguf(path, gguf_metadata)
        raise TokenizerError(f"{path}: not a .gguf file or a model directory")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token(self) -> str:
        return "" if self.bos_id is None else self.hf.id_to_token(self.bos_id)

    @property
    def eos_token(self) -> str:
        return self.hf.id_to_token(min(self.eos_ids)) if self.eos_ids else ""

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special-token strings in text (e.g. `<|im_start|>`) become their ids.
        A BOS id is prepended when the model asks for one (or when add_bos says so)."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            if not ids or ids[0] != self.bos_id:
                ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a byte-level piece may be part of a character)."""
        piece = self.hf.id_to_token(token_id) or ""
        if token_id in self.special_ids or not all(c in _BYTE_DECODER for c in piece):
            return piece.encode("utf-8")
        return bytes(_BYTE_DECODER[c] for c in piece)


def _from_hf_dir(path: Path) -> Tokenizer:
    file = path / "tokenizer.json"
    if not file.is_file():
        raise TokenizerError(f"{path}: no tokenizer.json")
    hf = HFTokenizer.from_file(str(file))
    config = _read_json(path / "tokenizer_config.json")
    gen = _read_json(path / "generation_config.json")

    def token_id(value) -> int | None:
        if isinstance(value, dict):  # {"content": "<s>", ...} in older configs
            value = value.get("content")
        return hf.token_to_id(value) if isinstance(value, str) else None

    bos = token_id(config.get("bos_token"))
    if bos is None and isinstance(gen.get("bos_token_id"), int):
        bos = gen["bos_token_id"]
    eos = {token_id(config.get("eos_token"))}
    gen_eos = gen.get("eos_token_id")
    eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    add_bos = bool(config.get("add_bos_token", False))
    return _finish(hf, bos, {e for e in eos if isinstance(e, int)}, add_bos, template)


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{file}: not valid JSON ({e})") from None


def _finish(hf: HFTokenizer, bos: int | None, eos: set[int], add_bos: bool,
            template: str | None) -> Tokenizer:
    specials = frozenset(i for i, t in hf.get_added_tokens_decoder().items() if t.special)
    # End-of-turn markers that the template uses end generation too.
    for tok in _END_OF_TURN:
        tid = hf.token_to_id(tok)
        if tid is not None and tid in specials and (template is None or tok in template):
            eos.add(tid)
    return Tokenizer(hf, bos, frozenset(eos), add_bos, template, specials)


# ---------------------------------------------------------------- GGUF

_SPLIT_DIGITS_BYTE_LEVEL = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone",
                            "minerva")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gguf_pre_tokenizer(pre: str):
    """The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre` (see its llama-vocab.cpp)."""
    if pre in _SPLIT_DIGITS_BYTE_LEVEL:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in ("gpt-2", "gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    regex = {"llama-bpe": _LLAMA3_REGEX, "llama3": _LLAMA3_REGEX, "qwen2": _QWEN2_REGEX}.get(pre)
    if regex is None:
        raise TokenizerError(f"GGUF pre-tokenizer {pre!r} is not supported (supported: "
                             f"{', '.join(_SPLIT_DIGITS_BYTE_LEVEL)}, gpt-2, llama-bpe, qwen2)")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def tokenizer_from_gguf(path: str | Path, metadata: dict | None = None) -> Tokenizer:
    """Build the same tokenizer llama.cpp uses for a GGUF's BPE ("gpt2") vocabulary, from the
    file's metadata (already parsed by the caller, or read here with the `gguf` package)."""
    if metadata is None:
        import gguf

        try:
            fields = gguf.GGUFReader(str(path)).fields
        except Exception as e:
            raise TokenizerError(f"{path}: not a readable GGUF file ({e})") from None
        metadata = {key: field.contents() for key, field in fields.items()}

    def get(key: str, default=None):
        return metadata.get(key, default)

    kind = get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"{path}: GGUF tokenizer model {kind!r} is not supported (gpt2 BPE only)")
    tokens = get("tokenizer.ggml.tokens")
    types = get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges", [])]
    pre = get("tokenizer.ggml.pre", "default")
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                ignore_merges=pre in ("llama-bpe", "llama3")))
    hf.pre_tokenizer = _gguf_pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    # token types: 3 = control (special), 4 = user-defined (matched in text, but printable).
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokens, types) if k == 3])
    hf.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, k in zip(tokens, types) if k == 4])
    eos = {get("tokenizer.ggml.eos_token_id"), get("tokenizer.ggml.eot_token_id")}
    return _finish(hf, get("tokenizer.ggml.bos_token_id"), {e for e in eos if e is not None},
                   bool(get("tokenizer.ggml.add_bos_token", False)), get("tokenizer.chat_template"))
