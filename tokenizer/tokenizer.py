"""Text <-> token ids for a model: a `tokenizers.Tokenizer` built from `tokenizer.json` or from
the vocabulary in a GGUF file, plus the model's special tokens and chat template.

Owns: `Tokenizer`, `TokenizerError`, `tokenizer_from_gguf`. Imports: tokenizers, gguf, stdlib,
tokenizer.gguf_vocab.
Used by: server (prompts, streaming text), tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from tokenizer.gguf_vocab import VocabError, vocab_from_gguf


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
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>", "</s>",
                "<end_of_turn>", "<turn|>", "<|end_of_text|>", "<end_of_utterance>")


def _is_hex(s: str) -> bool:
    return all(c in "0123456789ABCDEFabcdef" for c in s)


@dataclass
class Tokenizer:
    """A loaded tokenizer. `eos_ids` are every token id that ends generation."""

    hf: HFTokenizer
    bos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool
    chat_template: str | None
    special_ids: frozenset[int] = field(default=frozenset())
    byte_level: bool = True  # pieces in GPT-2's byte alphabet; else SentencePiece's "▁" and <0xNN>

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
        wanted = self.add_bos if add_bos is None else add_bos
        if wanted and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a byte-level piece may be part of a character)."""
        piece = self.hf.id_to_token(token_id) or ""
        if token_id in self.special_ids:
            return piece.encode("utf-8")
        if not self.byte_level:
            if len(piece) == 6 and piece[:3] == "<0x" and piece[5] == ">" and _is_hex(piece[3:5]):
                return bytes([int(piece[3:5], 16)])  # a byte-fallback token
            return piece.replace("\u2581", " ").encode("utf-8")
        if not all(c in _BYTE_DECODER for c in piece):
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
    # A tokenizer without a decoder is read as byte-level, the older Hugging Face default.
    byte_level = hf.decoder is None or b"ByteLevel" in hf.decoder.__getstate__()
    return Tokenizer(hf, bos, frozenset(eos), add_bos, template, specials, byte_level)


# ---------------------------------------------------------------- GGUF


def tokenizer_from_gguf(path: str | Path, metadata: dict | None = None) -> Tokenizer:
    """Build the tokenizer llama.cpp uses for a GGUF's vocabulary, from the file's metadata
    (already parsed by the caller, or read here with the `gguf` package)."""
    if metadata is None:
        import gguf

        try:
            fields = gguf.GGUFReader(str(path)).fields
        except Exception as e:  # noqa: BLE001 (the gguf reader fails in many ways on a bad file)
            raise TokenizerError(f"{path}: not a readable GGUF file ({e})") from None
        metadata = {key: field.contents() for key, field in fields.items()}

    def get(key: str, default=None):
        return metadata.get(key, default)

    try:
        vocab = vocab_from_gguf(get)
    except VocabError as e:
        raise TokenizerError(f"{path}: {e}") from None
    eos = {get("tokenizer.ggml.eos_token_id"), get("tokenizer.ggml.eot_token_id"),
           get("tokenizer.ggml.eom_token_id")}
    return _finish(vocab.hf, get("tokenizer.ggml.bos_token_id"), {e for e in eos if e is not None},
                   vocab.add_bos, get("tokenizer.chat_template"))
