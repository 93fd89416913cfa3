"""Weights served from a read-only shared memory map of the safetensors file, so workers share one copy."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.errors import CaptionerError
from core.settings import WorkerSettings
from inference_consumer.model import load_caption_model
from inference_consumer.shared_weights import (
    SAFETENSORS_FILE,
    NotShareableError,
    find_safetensors,
    map_safetensors,
    share_weights,
)


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    permissions: str  # e.g. "r--s": read-only, shared


def mappings_of(path: Path) -> list[Mapping]:
    """This process's memory mappings of `path`, from /proc/self/maps."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]) == path:
            start, end = (int(address, 16) for address in fields[0].split("-"))
            found.append(Mapping(start, end, fields[1]))
    return found


def mapping_holding(tensor: torch.Tensor, mappings: list[Mapping]) -> Mapping | None:
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    return next((m for m in mappings if m.start <= begin and end <= m.end), None)


def test_loaded_weights_are_a_read_only_shared_map_of_the_file(tiny_model_dir: Path) -> None:
    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu")).model
    mappings = mappings_of((tiny_model_dir / SAFETENSORS_FILE).resolve())

    holders = {name: mapping_holding(tensor, mappings) for name, tensor in model.state_dict().items()}

    assert all(holder is not None for holder in holders.values()), [
        n for n, h in holders.items() if h is None
    ]
    assert {holder.permissions for holder in holders.values() if holder is not None} == {"r--s"}


def test_other_dtypes_keep_a_private_copy(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inference_consumer.model"):
        model = load_caption_model(
            WorkerSettings(model=str(tiny_model_dir), device="cpu", dtype="float16")
        ).model
    mappings = mappings_of((tiny_model_dir / SAFETENSORS_FILE).resolve())

    assert all(mapping_holding(tensor, mappings) is None for tensor in model.state_dict().values())
    assert "weights: private copy" in caplog.text


def test_weights_unlike_the_file_are_left_as_loaded(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.output.bias.add_(1.0)
    before = {name: tensor.data_ptr() for name, tensor in model.state_dict().items()}

    with pytest.raises(NotShareableError, match=r"output\.bias differs"):
        share_weights(model, tiny_model_dir / SAFETENSORS_FILE)

    assert {name: tensor.data_ptr() for name, tensor in model.state_dict().items()} == before


def test_mapped_tensors_equal_what_from_pretrained_loads(tiny_model_dir: Path) -> None:
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    mapped = map_safetensors(tiny_model_dir / SAFETENSORS_FILE)

    assert all(torch.equal(loaded[name], mapped[name]) for name in loaded)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 4, struct.pack("<Q", 2**40) + b"{}", struct.pack("<Q", 5) + b"nope!"],
    ids=["empty", "short", "huge-header", "not-json"],
)
def test_a_broken_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / SAFETENSORS_FILE
    path.write_bytes(content)
    with pytest.raises(NotShareableError):
        map_safetensors(path)


def test_offsets_outside_the_file_are_refused(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    path = tmp_path / SAFETENSORS_FILE
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    with pytest.raises(NotShareableError, match="offsets"):
        map_safetensors(path)


@pytest.mark.parametrize("entry", [b"[1, 2]", b'"F32"', b"7", b"null"])
def test_a_header_entry_that_is_no_object_is_refused_by_an_explicit_check(
    tmp_path: Path, entry: bytes
) -> None:
    header = b'{"w": ' + entry + b"}"
    path = tmp_path / SAFETENSORS_FILE
    path.write_bytes(struct.pack("<Q", len(header)) + header)

    with pytest.raises(NotShareableError, match="w: header entry is not an object") as raised:
        map_safetensors(path)

    assert isinstance(raised.value, CaptionerError) and not raised.value.retriable


def test_only_a_single_file_checkpoint_is_found(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert find_safetensors(str(tiny_model_dir)) == tiny_model_dir / SAFETENSORS_FILE
    assert find_safetensors(str(tmp_path)) is None  # a directory without one (e.g. sharded)
    assert find_safetensors(str(tmp_path / "nowhere")) is None
    assert find_safetensors("captioner-tests/not-in-the-hub-cache") is None
