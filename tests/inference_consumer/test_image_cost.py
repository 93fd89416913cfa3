"""What one image can cost a worker is bounded by its pixel count, whatever its shape: measured in a
fresh process (peak RSS), from the bytes to the model's input tensor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.images import encode

pytestmark = pytest.mark.slow

MEASURE = """
import json, resource, sys
from core.settings import WorkerSettings
from inference_consumer.model import load_caption_model

model = load_caption_model(WorkerSettings(model=sys.argv[1], device="cpu"))
model.pixels(open(sys.argv[2], "rb").read(), max_pixels=10**6)  # warm up the processor
data = open(sys.argv[3], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = model.pixels(data, max_pixels=24_000_000)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": (after - before) / 1024, "shape": list(pixels.shape)}))
"""


def peak_mb(model_dir: Path, tmp_path: Path, picture: Image.Image) -> float:
    small, image = tmp_path / "small.png", tmp_path / "image.png"
    small.write_bytes(encode(Image.new("RGB", (64, 48)), "PNG"))
    image.write_bytes(encode(picture, "PNG"))
    del picture
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model_dir), str(small), str(image)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
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
