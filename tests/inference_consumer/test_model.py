"""Loading the model: the real from_pretrained path, and one clear message when it can't be had."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import inference_consumer.model as model_module
from core.model_id import public_model_id
from core.settings import WorkerSettings
from inference_consumer.decoding import FastGitDecoder
from inference_consumer.errors import ModelUnavailableError
from inference_consumer.model import (
    bf16_matmul_speedup,
    configure_torch_threads,
    directory_revision,
    load_caption_model,
    report_bf16_speed,
    resolved_revision,
    step_padding,
)
from tests.support.images import make_picture, reference_captioner
from tests.support.processes import CAPTIONER, free_port


def test_local_directory_loads_and_captions_like_generate(tiny_model_dir: Path) -> None:
    from tests.support.images import encode

    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), decoder="fast", device="cpu"))
    pictures = [make_picture(seed=seed) for seed in range(3)]

    titles = model.caption([model.preprocess(p) for p in pictures], max_new_tokens=[20, 20, 20])

    assert titles == reference_captioner(tiny_model_dir).captions([encode(p, "PNG") for p in pictures])


def test_sdpa_vision_attention_runs_the_fused_kernel_and_captions_as_generate_does_with_it(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused_calls: list[int] = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        fused_calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    pixels = [make_picture(seed=seed) for seed in range(3)]

    def titles(**settings: Any) -> list[str]:
        model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu", **settings))
        return model.caption([model.preprocess(p) for p in pixels], max_new_tokens=[20, 20, 20])

    titles(decoder="fast")
    assert fused_calls == []  # the default: HF's own eager attention
    fast = titles(decoder="fast", vision_attention="sdpa")
    assert fused_calls
    assert fast == titles(decoder="hf", vision_attention="sdpa")


def test_per_image_token_limits_cut_each_title(tiny_model_dir: Path) -> None:
    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"))
    pixels = [model.preprocess(make_picture(seed=1))] * 2

    short, full = model.caption(pixels, max_new_tokens=[3, 20])

    assert full.startswith(short) and len(short.split()) <= 3 < len(full.split())


def test_a_revision_names_the_weights_a_worker_loaded(tiny_model_dir: Path, tmp_path: Path) -> None:
    commit = "ab" * 20
    hub = WorkerSettings(model="owner/name", model_revision="v1.0")
    assert resolved_revision(hub, commit) == commit  # whatever branch or tag was asked for
    assert resolved_revision(hub, None) == "v1.0"
    assert resolved_revision(hub, "not a:commit") == "v1.0"
    local = WorkerSettings(model=str(tiny_model_dir))
    assert resolved_revision(local, None) is None  # the caption cache then digests the files
    named = WorkerSettings(model=str(tiny_model_dir), model_revision="tiny-2024")
    assert resolved_revision(named, None) == "tiny-2024"
    assert load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu")).revision is None

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / ".cache").mkdir()  # hidden files and folders are not the model
    revision = directory_revision(tiny_model_dir)
    assert revision.startswith("sha256-") and directory_revision(copy) == revision
    [weights] = copy.glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert directory_revision(copy) != revision  # other weights: another revision


def test_missing_model_raises_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="CAPTIONER_MODEL"):
        load_caption_model(WorkerSettings(model=str(tmp_path / "nowhere"), device="cpu"))


@pytest.mark.parametrize("processes", [1, 2])
def test_worker_without_weights_exits_with_a_message(processes: int) -> None:
    """Forked workers (CAPTIONER_WORKER_PROCESSES) end as one worker does: the first to fail says why, and
    the process that forked them ends with its status."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "captioner"), "worker"],
        env={
            "CAPTIONER_MODEL": "microsoft/git-base-textcaps",
            "CAPTIONER_WORKER_PROCESSES": str(processes),
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Set CAPTIONER_MODEL to a local model directory" in done.stderr


def test_threads_come_from_config() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("model", "model_id", "public"),
    [
        ("microsoft/git-base-textcaps", None, "microsoft/git-base-textcaps"),
        ("{dir}/tiny", None, "tiny"),
        (
            "{dir}/hub/models--microsoft--git-base-textcaps/snapshots/0123abc",
            None,
            "microsoft/git-base-textcaps",
        ),
        ("{dir}/tiny", "captioner/tiny@v2", "captioner/tiny@v2"),
    ],
)
def test_replies_name_the_model_by_a_public_id(
    tmp_path: Path, model: str, model_id: str | None, public: str
) -> None:
    if model.startswith("{dir}"):
        model = model.format(dir=tmp_path)
        Path(model).mkdir(parents=True)

    settings = WorkerSettings(model=model, model_id=model_id)
    assert public_model_id(settings.model, settings.model_id) == public


def test_a_loaded_directory_is_named_without_its_path(tiny_model_dir: Path) -> None:
    model = load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"))

    assert model.name == tiny_model_dir.name


def hub_unreachable_env(hf_home: Path, **env: str) -> dict[str, str]:
    """A fresh Hugging Face cache and a hub endpoint where nothing listens."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CAPTIONER_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    return inherited | {
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "HF_HOME": str(hf_home),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CAPTIONER_WORKER_THREADS": "1",
        **env,
    }


@pytest.mark.timeout(120)  # imports alone take ~40 s on a loaded 2-core machine
def test_an_unreachable_hub_fails_a_first_start_at_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [CAPTIONER, "worker"],
        env=hub_unreachable_env(tmp_path / "hf", CAPTIONER_MODEL="microsoft/git-base-textcaps"),
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert done.returncode == 2, done.stderr
    assert "the Hugging Face hub does not answer and it is not in the local cache" in done.stderr
    assert "Set CAPTIONER_MODEL to a local model directory" in done.stderr


@pytest.mark.timeout(120)  # imports alone take ~40 s on a loaded 2-core machine
def test_a_cached_hub_model_loads_while_the_hub_is_unreachable(tmp_path: Path, tiny_model_dir: Path) -> None:
    commit = "0123abc" + "0" * 33
    repo = tmp_path / "hf" / "hub" / "models--captioner--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    load = (
        "from core.settings import WorkerSettings; from inference_consumer.model import load_caption_model; "
    )
    load += "model = load_caption_model(WorkerSettings()); print(model.name, model.revision)"

    done = subprocess.run(
        [sys.executable, "-c", load],
        env=hub_unreachable_env(tmp_path / "hf", CAPTIONER_MODEL="captioner/tiny", CAPTIONER_DEVICE="cpu"),
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"captioner/tiny {commit}"  # the commit main named: the cache's revision


def test_a_model_the_fast_decoder_cannot_follow_is_unavailable_with_a_way_out(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "penalised"
    shutil.copytree(tiny_model_dir, model_dir)
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config_path.write_text(json.dumps(config | {"repetition_penalty": 1.3}))

    with pytest.raises(ModelUnavailableError, match=r"repetition_penalty.*CAPTIONER_DECODER=hf"):
        load_caption_model(WorkerSettings(model=str(model_dir), decoder="fast", device="cpu"))


def test_bf16_on_a_cpu_without_native_bf16_is_refused_at_start_in_one_line(tiny_model_dir: Path) -> None:
    settings = WorkerSettings(model=str(tiny_model_dir), device="cpu", dtype="bfloat16")

    with pytest.raises(ModelUnavailableError) as refused:
        load_caption_model(settings, cpu_flags={"avx2", "fma", "avx512f", "amx_tile"})

    assert "\n" not in str(refused.value)
    assert "AVX512-BF16 or AMX-BF16" in str(refused.value) and "float32" in str(refused.value)


def test_a_bf16_slower_than_float32_is_told_at_start_with_the_measured_ratio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="inference_consumer.model"):
        report_bf16_speed(0.6)
        report_bf16_speed(2.4)

    slower, faster = caplog.records
    assert slower.levelno == logging.WARNING and "0.60x" in slower.getMessage()
    assert "CAPTIONER_DTYPE=float32 is faster here" in slower.getMessage()
    assert faster.levelno == logging.INFO and "2.40x" in faster.getMessage()


def test_the_bf16_probe_is_float32_s_best_time_over_bfloat16_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake linear advances a fake clock: 1 s a float32 call, 2 s a bfloat16 one, 5 s more for each
    dtype's first (untimed) call, and one slow timed bfloat16 call that the best of them leaves out."""
    clock = [0.0]
    calls: dict[torch.dtype, int] = {}

    def linear(activations: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        assert activations.dtype == weight.dtype
        calls[weight.dtype] = calls.get(weight.dtype, 0) + 1
        slow = calls[weight.dtype] == 1 or (weight.dtype == torch.bfloat16 and calls[weight.dtype] == 3)
        clock[0] += (1.0 if weight.dtype == torch.float32 else 2.0) + (5.0 if slow else 0.0)
        return activations

    monkeypatch.setattr(model_module.torch.nn.functional, "linear", linear)
    monkeypatch.setattr(model_module.time, "perf_counter", lambda: clock[0])

    assert bf16_matmul_speedup(repeats=3) == 0.5
    assert calls == {torch.float32: 4, torch.bfloat16: 4}


def test_loading_the_model_in_bf16_on_the_cpu_probes_once_and_warns_where_bf16_is_slower(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[int] = []
    monkeypatch.setattr(model_module, "bf16_matmul_speedup", lambda: probes.append(1) or 0.5)
    bf16 = WorkerSettings(model=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    with caplog.at_level(logging.INFO, logger="inference_consumer.model"):
        load_caption_model(bf16, cpu_flags={"avx512_bf16"})
        load_caption_model(WorkerSettings(model=str(tiny_model_dir), device="cpu"), cpu_flags={"avx512_bf16"})

    assert len(probes) == 1  # the bfloat16 model's load, not the float32 one's
    [told] = [record for record in caplog.records if "the speed of float32" in record.getMessage()]
    assert told.levelno == logging.WARNING and "0.50x" in told.getMessage()


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_where_the_cpu_has_it_runs_the_model_in_bf16(tiny_model_dir: Path, flag: str) -> None:
    """The fast decoder's titles in bf16 are generate's in bf16 (tests/inference_consumer/test_decoding.py
    holds the token-level check on this host's own CPU)."""
    pictures = [make_picture(seed=seed) for seed in range(3)]

    def titles(decoder: str) -> list[str]:
        settings = WorkerSettings(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", decoder=decoder)
        model = load_caption_model(settings, cpu_flags={flag})
        assert model.dtype == torch.bfloat16
        assert next(model.model.parameters()).dtype == torch.bfloat16
        return model.caption([model.preprocess(p) for p in pictures], max_new_tokens=[20] * 3)

    assert titles("fast") == titles("hf")


@pytest.mark.parametrize(
    ("flags", "settings", "padded_from"),
    [
        ({"avx2", "avx512f"}, {}, 11),
        ({"avx2", "avx512f"}, {"pad_decoding_steps_from": 13}, 13),
        ({"avx2", "avx512f"}, {"pad_decoding_steps_from": 0}, 0),
        ({"avx2", "fma"}, {}, 0),  # MKL's AVX2 kernel has no slow path below 16 rows
        ({"avx2", "avx512f"}, {"packed_cpu_weights": True}, 0),  # oneDNN, not MKL
        ({"avx2", "avx512f", "avx512_bf16"}, {"dtype": "bfloat16"}, 0),  # oneDNN too
    ],
)
def test_decoding_steps_are_padded_where_mkl_float32_runs_on_avx512(
    tiny_model_dir: Path, flags: set[str], settings: dict[str, Any], padded_from: int
) -> None:
    model = load_caption_model(
        WorkerSettings(model=str(tiny_model_dir), device="cpu", **settings), cpu_flags=flags
    )

    assert isinstance(model.decoder, FastGitDecoder)
    assert model.decoder.pad_steps_from == padded_from


@pytest.mark.parametrize(
    ("device", "settings"),
    [("cuda", {}), ("cpu", {"quantize": "int8"})],
    ids=["gpu", "int8"],
)
def test_decoding_steps_are_not_padded_off_mkl_float32(device: str, settings: dict[str, Any]) -> None:
    worker = WorkerSettings(**settings)

    assert step_padding(worker, torch.device(device), torch.float32, cpu_flags={"avx512f"}) == 0
