"""bench.gpu's whole path, dry-run on the CPU with the tiny model (the GPU run itself needs CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu


@pytest.mark.slow
def test_dry_run_on_cpu_reports_every_dtype_decoder_and_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"

    gpu.main(
        [
            "--device=cpu",
            "--size=tiny",
            f"--models={tiny_model_dir.parent}",
            "--dtypes=float32,float16",  # float16: the GPU default, and every CPU runs it
            "--batches=1,3",
            "--pools=1,2",
            "--images=3",
            "--seconds=0.05",
            f"--out={out}",
        ]
    )

    results = json.loads(out.read_text())
    assert results["naive_img_s"] > 0
    assert set(results["preprocess_img_s"]) == {"threads_1", "threads_2"}
    assert [figure["dtype"] for figure in results["dtypes"]] == ["float32", "float16"]
    for figure in results["dtypes"]:
        assert figure["identical"] is True
        rows = {(row["decoder"], row["batch"]) for row in figure["batches"]}
        assert rows == {("hf", 1), ("fast", 1), ("hf", 3), ("fast", 3)}
        assert all(row["img_s"] > 0 for row in figure["batches"])


def test_cuda_run_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu.main(["--device=cuda"])
