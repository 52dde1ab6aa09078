"""A GGUF file, memory-mapped: its metadata as Python values and its tensors as NumPy views.

Owns: `GGUFFile`, `GGUFTensor`. Imports: numpy, stdlib, engine.config (ModelError).
Used by: engine.loader; server.models hands the metadata to the tokenizer.

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

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
              8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}
# other ggml types, named in the error a file using them gets
_UNSUPPORTED = {6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K",
                14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
                20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
                27: "I64", 28: "F64", 29: "IQ1_M"}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_ARRAY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    kind: str  # "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"
    shape: tuple[int, ...]  # NumPy order: outermost first
    data: np.ndarray  # F32/F16: that dtype in `shape`; BF16: uint16; blocks: uint8 (rows, row bytes)


class GGUFFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            self._buf = memoryview(self._map)
            self._pos = 0
            self.metadata, infos = self._read_header()
            alignment = int(self.metadata.get("general.alignment", 32))
            start = -(-self._pos // alignment) * alignment
            self.tensors = {name: self._tensor(name, dims, kind, start + offset)
                            for name, dims, kind, offset in infos}
        except (struct.error, UnicodeDecodeError, ValueError, IndexError, OSError) as e:
            raise ModelError(f"{self.path}: not a readable GGUF file ({e})") from None

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
        if bytes(self._buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
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
        if kind not in GGML_TYPES:
            raise ModelError(f"tensor {name}: GGUF type {_UNSUPPORTED.get(kind, kind)} is not "
                             f"supported (supported: {', '.join(t[0] for t in GGML_TYPES.values())}); "
                             f"convert the model with llama.cpp's llama-quantize to Q8_0, Q4_0 or Q4_1")
        type_name, per_block, block_bytes = GGML_TYPES[kind]
        shape = tuple(reversed(dims))
        n = int(np.prod(dims))
        if dims[0] % per_block:
            raise ModelError(f"tensor {name}: {dims[0]} columns are not whole {type_name} blocks")
        size = n // per_block * block_bytes
        if offset + size > len(self._map):
            raise ModelError(f"{self.path}: tensor {name} runs past the end of the file")
        raw = self._map[offset:offset + size]
        if type_name in ("F32", "F16"):
            data = raw.view(np.float32 if type_name == "F32" else np.float16).reshape(shape)
        elif type_name == "BF16":
            data = raw.view(np.uint16).reshape(shape)
        else:
            data = raw.reshape(-1, dims[0] // per_block * block_bytes)
        return GGUFTensor(name, type_name, shape, data)
