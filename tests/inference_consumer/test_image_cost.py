"""What one image can cost a worker is bounded by its pixel count, whatever its shape: measured in a
process of its own (peak RSS), from the bytes to the model's input tensor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support import preloaded
from tests.support.images import encode

pytestmark = pytest.mark.slow

PROBE_TIMEOUT_S = 240


def peak_mb(model_dir: Path, tmp_path: Path, picture: Image.Image) -> float:
    """Measured in a process of its own (tests/support/image_cost_probe.py), forked with torch imported."""
    small, image = tmp_path / "small.png", tmp_path / "image.png"
    small.write_bytes(encode(Image.new("RGB", (64, 48)), "PNG"))
    image.write_bytes(encode(picture, "PNG"))
    del picture
    log = tmp_path / "probe.log"
    probe = preloaded.start(
        [sys.executable, "-m", "tests.support.image_cost_probe", str(model_dir), str(small), str(image)],
        env=dict(os.environ),
        log_path=log,
    )
    assert probe.wait(timeout=PROBE_TIMEOUT_S) == 0, log.read_text()
    measured = json.loads(log.read_text().strip().splitlines()[-1])
    print(f"{image.stat().st_size} bytes -> peak +{measured['peak_mb']:.0f} MB")
    return float(measured["peak_mb"])


@pytest.mark.parametrize("size", [(40000, 2), (2, 30000)], ids=["wide", "tall"])
def test_an_extreme_aspect_ratio_costs_next_to_nothing(
    tiny_model_dir: Path, tmp_path: Path, size: tuple[int, int]
) -> None:
    # Before it was bounded, the processor scaled 40000x2 to 4,480,000x224 floats: ~10 GB.
    assert peak_mb(tiny_model_dir, tmp_path, Image.new("RGB", size, "gray")) < 64


def test_an_image_at_the_pixel_limit_costs_at_most_seven_bytes_a_pixel(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    edge = 4898  # 23.99 MP of RGBA, the widest mode Pillow decodes PNG into
    assert peak_mb(tiny_model_dir, tmp_path, Image.new("RGBA", (edge, edge), (9, 99, 199, 255))) < (
        7 * edge * edge / 2**20 + 64
    )
