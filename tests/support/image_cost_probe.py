"""What one image costs a worker's process to turn into the model's input, as peak RSS growth: run as
`python -m tests.support.image_cost_probe MODEL_DIR WARM_UP_IMAGE IMAGE` (tests/support/preloaded.py forks
it with torch already imported). Prints one JSON line: the peak's growth in MB and the tensor's shape."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from core.settings import WorkerSettings
from inference_consumer.model import load_caption_model

WARM_UP_MAX_PIXELS = 10**6
MAX_PIXELS = 24_000_000


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(model_dir: str, warm_up: str, image: str) -> None:
    model = load_caption_model(WorkerSettings(model=model_dir, device="cpu"))
    # The processor's own first-use cost is not the image's.
    model.pixels(Path(warm_up).read_bytes(), max_pixels=WARM_UP_MAX_PIXELS)
    data = Path(image).read_bytes()
    before = peak_rss_kb()
    pixels = model.pixels(data, max_pixels=MAX_PIXELS)
    after = peak_rss_kb()
    print(json.dumps({"peak_mb": (after - before) / 1024, "shape": list(pixels.shape)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
