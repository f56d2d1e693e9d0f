"""Reading `*.safetensors` files with numpy alone (no torch, no extra package).

The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data that follows the
header), then the raw little-endian data. Hugging Face Llama checkpoints store bfloat16,
which numpy has no type for: its 16 bits are the top half of a float32, so widening is a
shift. Tensors are memory-mapped and converted one at a time.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I8": np.int8,
           "U8": np.uint8, "I32": np.int32, "I64": np.int64}


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or not what vkq can load (the message says which)."""


class SafetensorsFile:
    """The tensors of one file: `names`, `shape(name)`, `dtype(name)`, `float32(name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100 << 20:
                    raise CheckpointError(f"{self.path}: a {n}-byte header is not a safetensors header")
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + n
        self._map: np.memmap | None = None

    @property
    def names(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def dtype(self, name: str) -> str:
        return self._entry(name)["dtype"]

    def _entry(self, name: str) -> dict:
        try:
            return self._header[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}") from None

    def float32(self, name: str) -> np.ndarray:
        """The tensor as a float32 array (F32, F16 and BF16 storage)."""
        e = self._entry(name)
        kind = e["dtype"]
        if kind not in ("F32", "F16", "BF16"):
            raise CheckpointError(f"{self.path}: tensor {name!r} is {kind}, expected a float type "
                                  f"(F32, F16 or BF16)")
        raw = self._raw(name, e)
        if kind == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)

    def _raw(self, name: str, e: dict) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = e["data_offsets"]
        dtype = np.dtype(_DTYPES[e["dtype"]])
        count = int(np.prod(e["shape"], dtype=np.int64))
        if end - begin != count * dtype.itemsize or self._data_start + end > len(self._map):
            raise CheckpointError(f"{self.path}: tensor {name!r}'s data does not match its shape "
                                  f"{e['shape']} and dtype {e['dtype']} (file truncated?)")
        data = self._map[self._data_start + begin: self._data_start + end]
        return data.view(dtype).reshape(e["shape"])


def open_folder(folder: str | Path) -> dict[str, SafetensorsFile]:
    """tensor name -> the file holding it, over every `*.safetensors` file of a folder."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files")
    out: dict[str, SafetensorsFile] = {}
    for path in files:
        f = SafetensorsFile(path)
        for name in f.names:
            out[name] = f
    return out


def write(path: str | Path, tensors: dict[str, np.ndarray], bf16: bool = False) -> None:
    """Write float tensors as safetensors (F32, or BF16 truncated from float32 with round to
    nearest even when `bf16`): for tests and for saving small models."""
    header: dict = {}
    chunks: list[bytes] = []
    offset = 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, np.float32)
        if bf16:
            bits = a.view(np.uint32)
            rounded = bits + (0x7FFF + ((bits >> 16) & 1))
            data, kind = (rounded >> 16).astype(np.uint16).tobytes(), "BF16"
        else:
            data, kind = a.tobytes(), "F32"
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for c in chunks:
            f.write(c)
