"""Model weights served from a read-only shared memory map of their safetensors file.

Every worker on a host that maps the same file reads the same page-cache pages, so the weights count once
on the host and not in any worker's private memory (USS). transformers' own loader also memory-maps the
file, but copy-on-write and writable: one in-place write anywhere would silently turn those pages into a
private copy. Here the mapping is `MAP_SHARED` and `PROT_READ`: it can never become private, and a write
would fault instead of copying.

Only tensors whose name, shape, dtype and values equal the file's are replaced, so this never changes what
the model computes; anything else (a dtype conversion, renamed or fused weights, a sharded checkpoint)
leaves the model as loaded and says why.
"""

from __future__ import annotations

import json
import mmap
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from inference_consumer.errors import WorkerError

SAFETENSORS_FILE = "model.safetensors"
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class NotShareableError(WorkerError):
    """The model's weights are not exactly the file's tensors; the model is left as it was (and served
    from its private copy, so this never stops a worker)."""

    code = "weights_not_shareable"


@dataclass(frozen=True)
class SharedWeights:
    path: Path
    tensors: int
    nbytes: int


def find_safetensors(model: str, revision: str | None = None) -> Path | None:
    """The single-file safetensors checkpoint of a local model directory or of a hub id already in the
    local hub cache (from_pretrained put it there), at `revision` (the commit loaded; None: the default
    branch); None when there is none."""
    directory = Path(model)
    if directory.is_dir():
        candidate = directory / SAFETENSORS_FILE
        return candidate if candidate.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, SAFETENSORS_FILE, revision=revision)
    except ValueError:  # not a valid hub id either
        return None
    return Path(cached) if isinstance(cached, str) else None


def map_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file as a view of one read-only shared mapping of it (no copy).

    The views must never be written: torch cannot mark a tensor read-only, and a write faults."""
    with path.open("rb") as file:
        try:
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file
            raise NotShareableError(f"cannot map the file: {exc}") from exc
    header, data_start = _read_header(mapping)
    with warnings.catch_warnings():
        # "The given buffer is not writable": intended, see above.
        warnings.simplefilter("ignore", UserWarning)
        data = torch.frombuffer(mapping, dtype=torch.uint8)
    return {name: _view(data, data_start, name, entry) for name, entry in header.items()}


def share_weights(model: nn.Module, path: Path) -> SharedWeights:
    """Point every parameter and persistent buffer of `model` at the identical tensor of the file mapping.

    Raises NotShareableError, without touching `model`, unless every one of them has an equal in the file."""
    mapped = map_safetensors(path)
    expected = model.state_dict()
    for name, tensor in expected.items():
        _check_same(name, tensor, mapped.get(name))
    model.load_state_dict({name: mapped[name] for name in expected}, strict=True, assign=True)
    nbytes = sum(tensor.numel() * tensor.element_size() for tensor in expected.values())
    return SharedWeights(path=path, tensors=len(expected), nbytes=nbytes)


def _check_same(name: str, loaded: Tensor, stored: Tensor | None) -> None:
    if stored is None:
        raise NotShareableError(f"{name} is not in the file")
    if loaded.device.type != "cpu":
        raise NotShareableError(f"{name} is on {loaded.device}")
    if loaded.dtype != stored.dtype or loaded.shape != stored.shape:
        raise NotShareableError(
            f"{name} is {loaded.dtype} {tuple(loaded.shape)} in the model, "
            f"{stored.dtype} {tuple(stored.shape)} in the file"
        )
    if not torch.equal(loaded, stored):
        raise NotShareableError(f"{name} differs from the file's values")


def _read_header(mapping: mmap.mmap) -> tuple[dict[str, dict[str, object]], int]:
    if len(mapping) < _HEADER_LENGTH_BYTES:
        raise NotShareableError("not a safetensors file: too short")
    (length,) = struct.unpack("<Q", mapping[:_HEADER_LENGTH_BYTES])
    if length > min(_MAX_HEADER_BYTES, len(mapping) - _HEADER_LENGTH_BYTES):
        raise NotShareableError("not a safetensors file: bad header length")
    try:
        header = json.loads(mapping[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + length])
    except ValueError as exc:
        raise NotShareableError("not a safetensors file: header is not JSON") from exc
    if not isinstance(header, dict):
        raise NotShareableError("not a safetensors file: header is not an object")
    header.pop("__metadata__", None)
    return header, _HEADER_LENGTH_BYTES + length


def _view(data: Tensor, data_start: int, name: str, entry: object) -> Tensor:
    if not isinstance(entry, dict):
        raise NotShareableError(f"{name}: header entry is not an object")
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(size) for size in entry["shape"]]
        begin, end = (data_start + int(offset) for offset in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NotShareableError(f"{name}: unsupported or malformed header entry") from exc
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = 1
    for size in shape:
        count *= size
    if not data_start <= begin <= end <= data.numel() or end - begin != count * itemsize:
        raise NotShareableError(f"{name}: data offsets do not match its shape")
    if begin % itemsize:
        raise NotShareableError(f"{name}: not aligned to its {itemsize}-byte elements")
    return data[begin:end].view(dtype).view(shape)
