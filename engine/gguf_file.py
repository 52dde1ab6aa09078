"""A GGUF file, memory-mapped: its metadata as Python values and its tensors as NumPy views.

Owns: `GGUFFile`, `GGUFTensor`. Imports: numpy, stdlib, engine.config (ModelError),
kernels.formats (tensor types). Used by: engine.loader; server.models hands the metadata to the
tokenizer.

The format (GGUF v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, metadata
count u64; metadata entries (key string, type u32, value); tensor infos (name, n_dims u32,
dims u64 x n_dims innermost first, type u32, offset u64); then, aligned to
`general.alignment` (32), the tensor data. Strings are a u64 length and UTF-8 bytes.

Written here rather than taken from the `gguf` package's reader because that one builds a NumPy
view per array element: 2.8 s for the default model's 49k-token vocabulary, over half of the
start-up budget, against ~0.1 s here. Nothing is copied: a tensor's `data` is a view of the map.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ModelError
from kernels.formats import BY_GGML_TYPE, FORMATS

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_ARRAY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    kind: str  # a name of kernels.formats.FORMATS: "F32", "BF16", "Q4_K", ...
    shape: tuple[int, ...]  # NumPy order: outermost first
    data: np.ndarray  # F32/F16: that dtype in `shape`; BF16: uint16; blocks: uint8 (rows, row bytes)


class GGUFFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (ValueError, OSError) as e:  # an empty file cannot be mapped
            raise ModelError(f"{self.path}: not a readable GGUF file ({e})") from None
        self._buf = memoryview(self._map)
        self._pos = 0
        if bytes(self._buf[:4]) != b"GGUF":
            raise ModelError(f"{self.path}: not a readable GGUF file (it does not start with 'GGUF')")
        try:
            self.metadata, infos = self._read_header()
        except struct.error:
            raise ModelError(f"{self.path}: the GGUF header is cut off at byte {self._pos} of "
                             f"{len(self._map)} (a truncated download?)") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise ModelError(f"{self.path}: not a readable GGUF file ({e})") from None
        _check_types(self.path, infos)
        alignment = int(self.metadata.get("general.alignment", 32))
        start = -(-self._pos // alignment) * alignment
        self.tensors = {name: self._tensor(name, dims, kind, start + offset)
                        for name, dims, kind, offset in infos}

    def _read(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._read("<Q")
        s = bytes(self._buf[self._pos:self._pos + n]).decode("utf-8")
        self._pos += n
        return s

    def _value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self._read(_SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, n = self._read("<I"), self._read("<Q")
            if item in _ARRAY_DTYPES:  # numbers: one view, then Python values
                dtype = np.dtype(_ARRAY_DTYPES[item])
                arr = np.frombuffer(self._buf, dtype, n, self._pos)
                self._pos += n * dtype.itemsize
                return arr.tolist()
            return [self._value(item) for _ in range(n)]
        raise ValueError(f"unknown metadata type {kind}")

    def _read_header(self):
        self._pos = 4
        version = self._read("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2, 3)")
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = self._string()
            metadata[key] = self._value(self._read("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._read("<Q") for _ in range(self._read("<I"))]
            infos.append((name, dims, self._read("<I"), self._read("<Q")))
        return metadata, infos

    def _tensor(self, name: str, dims: list[int], kind: int, offset: int) -> GGUFTensor:
        fmt = BY_GGML_TYPE[kind]
        shape = tuple(reversed(dims))
        n = int(np.prod(dims))
        if dims[0] % fmt.block_weights:
            raise ModelError(f"{self.path}: tensor {name}: {dims[0]} columns are not whole "
                             f"{fmt.name} blocks of {fmt.block_weights}")
        size = n // fmt.block_weights * fmt.block_bytes
        if offset + size > len(self._map):
            raise ModelError(f"{self.path}: tensor {name} runs past the end of the file (its "
                             f"{size} bytes at {offset}, the file has {len(self._map)}: a "
                             "truncated download?)")
        raw = self._map[offset:offset + size]
        if fmt.name in ("F32", "F16"):
            data = raw.view(np.float32 if fmt.name == "F32" else np.float16).reshape(shape)
        elif fmt.name == "BF16":
            data = raw.view(np.uint16).reshape(shape)
        else:
            data = raw.reshape(-1, dims[0] // fmt.block_weights * fmt.block_bytes)
        return GGUFTensor(name, fmt.name, shape, data)


def _check_types(path: Path, infos: list) -> None:
    """One error naming every tensor type Ember cannot read, and the tensors that hold it."""
    unknown: dict[int, list[str]] = {}
    for name, _, kind, _ in infos:
        if kind not in BY_GGML_TYPE:
            unknown.setdefault(kind, []).append(name)
    if not unknown:
        return
    from gguf.constants import GGMLQuantizationType  # only for the names in this message

    def type_name(kind: int) -> str:
        try:
            return GGMLQuantizationType(kind).name
        except ValueError:
            return f"type {kind}"

    def tensors(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    found = "; ".join(f"{type_name(k)} ({tensors(names)})" for k, names in sorted(unknown.items()))
    raise ModelError(f"{path}: tensor types Ember cannot read: {found}. It reads "
                     f"{', '.join(FORMATS)}: get this model in one of those (Q4_K_M, Q8_0 and F16 "
                     "files are the common ones), or convert this file with llama.cpp: "
                     f"`llama-quantize --allow-requantize {path.name} out.gguf Q4_K_M`")
