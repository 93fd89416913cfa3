"""FastGitDecoder must return exactly what greedy `GitForCausalLM.generate` returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModelForCausalLM, AutoProcessor, GitConfig, GitForCausalLM

from captioner.model_factory import make_model
from core.cpu_features import bf16_refusal, host_cpu_flags
from inference_consumer.decoding import (
    FULL_GEMM_ROWS,
    FastGitDecoder,
    HfGenerateDecoder,
    SpecialTokens,
    build_decoder,
    quantize_int8,
    step_rows,
)
from inference_consumer.errors import ModelUnavailableError
from inference_consumer.model import check_dtype_supported

EOS = 102
PAD = 0
IMAGE_SIZE = 32  # the tiny model's input resolution
# Added to the EOS logit so that, on the test images, some captions end within 20 tokens and others do not.
EOS_BIAS = 2.5


def _reinitialise(model: Any, *, eos_bias: float, seed: int = 1) -> Any:
    """Give the tiny model unit-gain random weights of our own, whatever `make_model` initialised.

    With small weights every image yields the same caption, and a decoder that mixed up images or positions
    would still pass. EOS gets a bias so that some, not all, captions end early.
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(randn(module.weight) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * randn(module.bias))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(randn(module.weight))
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        vision_embeddings = model.git.image_encoder.vision_model.embeddings
        vision_embeddings.class_embedding.copy_(randn(vision_embeddings.class_embedding))
        model.output.bias[EOS] += eos_bias
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model("tiny", tmp_path_factory.mktemp("git-tiny"))


@pytest.fixture(scope="session")
def model(tiny_dir: Path) -> Any:
    return _reinitialise(AutoModelForCausalLM.from_pretrained(tiny_dir), eos_bias=EOS_BIAS)


@pytest.fixture(scope="session")
def eos_heavy_model(tiny_dir: Path) -> Any:
    """EOS wins within a few tokens for every image."""
    return _reinitialise(AutoModelForCausalLM.from_pretrained(tiny_dir), eos_bias=2.7)


@pytest.fixture(scope="session")
def processor(tiny_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(tiny_dir)  # type: ignore[no-untyped-call]


HAS_ONEDNN: bool = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
packing = pytest.mark.parametrize(
    "packed",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_ONEDNN, reason="needs oneDNN"))],
    ids=["exact", "packed"],
)


@pytest.fixture(scope="session")
def bf16_model(tiny_dir: Path) -> Any:
    """The same weights as `model`, cast to bfloat16 (what CAPTIONER_DTYPE=bfloat16 loads)."""
    return _reinitialise(AutoModelForCausalLM.from_pretrained(tiny_dir), eos_bias=EOS_BIAS).to(torch.bfloat16)


HOST_HAS_BF16 = bf16_refusal(host_cpu_flags()) is None


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.inference_mode():
        yield


def _pixels(batch: int, seed: int) -> Tensor:
    return torch.randn((batch, 3, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))


def _both(
    model: Any, pixel_values: Tensor, max_new_tokens: int, min_new_tokens: int, *, packed: bool = False
) -> tuple[Tensor, Tensor]:
    lengths = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}
    expected = HfGenerateDecoder(model).generate(pixel_values, **lengths)
    fast = FastGitDecoder(model, packed_cpu_weights=packed)
    assert fast.packed_cpu_weights == packed
    return expected, fast.generate(pixel_values, **lengths)


def _assert_same_ids(expected: Tensor, actual: Tensor) -> None:
    assert actual.dtype == torch.long
    assert actual.shape == expected.shape
    assert torch.equal(actual, expected), f"\nexpected {expected.tolist()}\nactual   {actual.tolist()}"


def _finished_early(token_ids: Tensor) -> list[bool]:
    """Rows whose EOS came before the last column (so pad fills the rest)."""
    return [EOS in row[1:-1] for row in token_ids.tolist()]


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize(
    ("max_new_tokens", "min_new_tokens"), [(1, 0), (1, 1), (5, 0), (5, 5), (20, 0), (20, 20)]
)
@packing
def test_matches_generate_on_random_pixels(
    model: Any, batch: int, max_new_tokens: int, min_new_tokens: int, packed: bool
) -> None:
    expected, actual = _both(model, _pixels(batch, seed=batch), max_new_tokens, min_new_tokens, packed=packed)

    _assert_same_ids(expected, actual)
    assert (actual[:, 0] == 101).all()
    if batch > 1 and max_new_tokens > 1:
        assert len({tuple(row) for row in expected.tolist()}) > 1, "captions should depend on the image"


@packing
def test_matches_generate_on_processed_images(model: Any, processor: Any, packed: bool) -> None:
    rng = np.random.default_rng(7)
    images = [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for height, width in [(32, 32), (48, 40), (20, 64), (100, 90), (33, 31)]
    ]
    pixel_values = processor(images=images, return_tensors="pt").pixel_values

    expected, actual = _both(model, pixel_values, max_new_tokens=20, min_new_tokens=0, packed=packed)

    _assert_same_ids(expected, actual)
    assert processor.batch_decode(actual, skip_special_tokens=True) == processor.batch_decode(
        expected, skip_special_tokens=True
    )


@packing
def test_finished_rows_get_padding_and_leave_the_batch(model: Any, packed: bool) -> None:
    pixel_values = _pixels(8, seed=11)
    active_rows_per_step: list[int] = []

    expected = HfGenerateDecoder(model).generate(pixel_values, max_new_tokens=20)
    actual = FastGitDecoder(model, packed_cpu_weights=packed).decode(
        pixel_values, max_new_tokens=20, on_step_logits=lambda rows, _: active_rows_per_step.append(len(rows))
    )

    _assert_same_ids(expected, actual)
    finished_early = _finished_early(actual)
    assert any(finished_early) and not all(finished_early), (
        "the batch must mix early-EOS and full-length rows"
    )
    for row in actual.tolist():
        if EOS in row[1:]:
            assert set(row[row.index(EOS) + 1 :]) <= {PAD}
    assert active_rows_per_step[0] == 8
    assert active_rows_per_step[-1] == sum(not done for done in finished_early)
    assert active_rows_per_step == sorted(active_rows_per_step, reverse=True)


@packing
def test_stops_when_every_row_has_finished(eos_heavy_model: Any, packed: bool) -> None:
    expected, actual = _both(eos_heavy_model, _pixels(6, seed=3), 20, min_new_tokens=0, packed=packed)

    _assert_same_ids(expected, actual)
    assert actual.shape[1] < 1 + 20
    assert all(EOS in row for row in actual.tolist())
    assert len({row.index(EOS) for row in actual.tolist()}) > 1, "rows should finish at different steps"


@pytest.mark.parametrize("min_new_tokens", [2, 4])
def test_min_new_tokens_holds_back_eos(eos_heavy_model: Any, min_new_tokens: int) -> None:
    expected, actual = _both(
        eos_heavy_model, _pixels(6, seed=3), max_new_tokens=20, min_new_tokens=min_new_tokens
    )

    _assert_same_ids(expected, actual)
    assert (actual[:, 1 : 1 + min_new_tokens] != EOS).all()
    assert (actual == EOS).any()


def test_step_logits_are_bit_identical_until_a_row_finishes(model: Any) -> None:
    pixel_values = _pixels(3, seed=5)
    steps: list[tuple[Tensor, Tensor]] = []

    reference = model.generate(
        pixel_values=pixel_values,
        do_sample=False,
        max_new_tokens=6,
        min_new_tokens=6,
        output_scores=True,
        return_dict_in_generate=True,
    )
    FastGitDecoder(model).decode(
        pixel_values,
        max_new_tokens=6,
        min_new_tokens=6,
        on_step_logits=lambda rows, logits: steps.append((rows.clone(), logits.clone())),
    )

    assert len(steps) == len(reference.scores) == 6
    for (rows, logits), scores in zip(steps, reference.scores, strict=True):
        assert rows.tolist() == [0, 1, 2]
        assert torch.equal(logits, scores)


def test_step_logits_match_after_rows_left_the_batch(model: Any) -> None:
    pixel_values = _pixels(8, seed=11)
    steps: list[tuple[Tensor, Tensor]] = []

    reference = model.generate(
        pixel_values=pixel_values,
        do_sample=False,
        max_new_tokens=20,
        output_scores=True,
        return_dict_in_generate=True,
    )
    FastGitDecoder(model).decode(
        pixel_values,
        max_new_tokens=20,
        on_step_logits=lambda rows, logits: steps.append((rows.clone(), logits.clone())),
    )

    assert len(steps) == len(reference.scores)
    assert len(steps[-1][0]) < 8
    for (rows, logits), scores in zip(steps, reference.scores, strict=True):
        torch.testing.assert_close(logits, scores[rows], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("alive", "pad_from", "rows"),
    [(13, 0, 13), (10, 11, 10), (11, 11, 16), (15, 11, 16), (16, 11, 16), (23, 11, 23), (1, 1, 16)],
)
def test_steps_of_pad_from_to_fifteen_rows_run_sixteen(alive: int, pad_from: int, rows: int) -> None:
    assert step_rows(alive, pad_from=pad_from) == rows


def _head_rows_per_step(monkeypatch: pytest.MonkeyPatch, model: Any) -> list[int]:
    """Filled, as the fast decoder built after this call runs, with the rows of each vocabulary projection."""
    from inference_consumer import decoding

    rows: list[int] = []
    linear = decoding._linear

    def counting_linear(hidden: Tensor, layer: nn.Linear) -> Tensor:
        if layer is model.output:
            rows.append(hidden.shape[0])
        return linear(hidden, layer)

    monkeypatch.setattr(decoding, "_linear", counting_linear)
    return rows


def _padded_decode(
    model: Any, pixel_values: Tensor, **lengths: int
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The fast decoder's token ids, padding steps from 11 rows, and each step's (rows, logits)."""
    steps: list[tuple[Tensor, Tensor]] = []
    actual = FastGitDecoder(model, pad_steps_from=11).decode(
        pixel_values,
        on_step_logits=lambda rows, logits: steps.append((rows.clone(), logits.clone())),
        **lengths,
    )
    return actual, steps


def _generate_with_scores(model: Any, pixel_values: Tensor, **lengths: int) -> Any:
    return model.generate(
        pixel_values=pixel_values,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        **lengths,
    )


def test_a_padded_batch_runs_sixteen_rows_a_step_and_gets_generates_logits_in_a_batch_of_sixteen(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve images run their steps as 16 rows (4 fillers); each image's logits are then those `generate`
    gives it among 16 images, and no filler shows in the result."""
    pixel_values = _pixels(FULL_GEMM_ROWS, seed=11)
    lengths = {"max_new_tokens": 6, "min_new_tokens": 6}
    head_rows = _head_rows_per_step(monkeypatch, model)

    actual, steps = _padded_decode(model, pixel_values[:12], **lengths)
    among_sixteen = _generate_with_scores(model, pixel_values, **lengths)

    assert head_rows == [FULL_GEMM_ROWS] * 6
    _assert_same_ids(among_sixteen.sequences[:12], actual)
    _assert_same_ids(HfGenerateDecoder(model).generate(pixel_values[:12], **lengths), actual)
    for (rows, logits), scores in zip(steps, among_sixteen.scores, strict=True):
        assert rows.tolist() == list(range(12))
        assert torch.equal(logits, scores[:12])


def test_finished_rows_stay_in_the_steps_until_fewer_than_pad_from_are_left(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that emitted EOS keep running (as padding) while 11 or more captions go on: the steps stay at
    16 rows, bit-identical to `generate`'s, and the finished rows still read pad."""
    pixel_values = _pixels(FULL_GEMM_ROWS, seed=11)
    head_rows = _head_rows_per_step(monkeypatch, model)

    actual, steps = _padded_decode(model, pixel_values, max_new_tokens=20)
    reference = _generate_with_scores(model, pixel_values, max_new_tokens=20)

    _assert_same_ids(reference.sequences, actual)
    live_rows = [len(rows) for rows, _ in steps]
    assert any(11 <= live < FULL_GEMM_ROWS for live in live_rows), f"none of 11-15 live rows: {live_rows}"
    assert min(live_rows) < 11, f"no step below 11 live rows: {live_rows}"
    assert head_rows == [step_rows(live, pad_from=11) for live in live_rows]
    for (rows, logits), scores in zip(steps, reference.scores, strict=True):
        if len(rows) >= 11:
            assert torch.equal(logits, scores[rows])


@pytest.mark.parametrize("batch", [12, 20])
def test_padded_batches_whose_captions_end_early_caption_as_generate_does(
    model: Any, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Fillers beside captions that end (12 images), and a batch above 16 that shrinks to 16 rows by
    keeping finished ones, then below 11 (20 images)."""
    pixel_values = _pixels(batch, seed=5)
    head_rows = _head_rows_per_step(monkeypatch, model)

    actual, steps = _padded_decode(model, pixel_values, max_new_tokens=20)

    _assert_same_ids(HfGenerateDecoder(model).generate(pixel_values, max_new_tokens=20), actual)
    live_rows = [len(rows) for rows, _ in steps]
    assert len(set(live_rows)) > 2, f"captions should end at several steps: {live_rows}"
    assert any(11 <= live < FULL_GEMM_ROWS for live in live_rows), f"none of 11-15 live rows: {live_rows}"
    assert head_rows[0] == max(batch, FULL_GEMM_ROWS)
    assert head_rows == [step_rows(live, pad_from=11) for live in live_rows]


def test_pad_steps_from_beyond_sixteen_is_refused(model: Any) -> None:
    with pytest.raises(ValueError, match="pad_steps_from"):
        FastGitDecoder(model, pad_steps_from=FULL_GEMM_ROWS + 1)


def test_several_eos_ids_and_pad_from_eos(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pixel_values = _pixels(8, seed=11)
    frequent_token = int(HfGenerateDecoder(model).generate(pixel_values, max_new_tokens=20)[0, 3])
    monkeypatch.setattr(model.generation_config, "eos_token_id", [EOS, frequent_token])
    monkeypatch.setattr(model.generation_config, "pad_token_id", None)

    expected, actual = _both(model, pixel_values, max_new_tokens=20, min_new_tokens=0)

    _assert_same_ids(expected, actual)
    assert (actual[:, 1:] == frequent_token).any()
    assert SpecialTokens.from_generation_config(model.generation_config).pad == EOS


def test_int8_weights_decode_the_same_with_both_decoders(tiny_dir: Path) -> None:
    pytest.importorskip("torchao")
    model = quantize_int8(_reinitialise(AutoModelForCausalLM.from_pretrained(tiny_dir), eos_bias=EOS_BIAS))
    assert type(model.output.weight).__name__ == "Int8Tensor"

    expected, actual = _both(model, _pixels(8, seed=11), max_new_tokens=20, min_new_tokens=0)

    _assert_same_ids(expected, actual)


@pytest.mark.skipif(not HAS_ONEDNN, reason="needs oneDNN")
def test_packed_weights_run_every_decoding_step_linear(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_consumer import decoding

    calls: list[int] = []
    packed_call = decoding._OneDnnPackedLinears.__call__

    def counting_call(self: Any, hidden: Tensor, layer: nn.Linear) -> Tensor:
        calls.append(hidden.shape[0])
        return packed_call(self, hidden, layer)

    monkeypatch.setattr(decoding._OneDnnPackedLinears, "__call__", counting_call)
    FastGitDecoder(model, packed_cpu_weights=True).generate(
        _pixels(2, seed=4), max_new_tokens=5, min_new_tokens=5
    )

    layers = model.config.num_hidden_layers
    # Steps 2..5 run 6 linears per layer; steps 1..5 project onto the vocabulary.
    assert len(calls) == 4 * 6 * layers + 5


def test_packing_falls_back_to_exact_where_unsupported(
    tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _reinitialise(AutoModelForCausalLM.from_pretrained(tiny_dir), eos_bias=EOS_BIAS).double()
    pixel_values = _pixels(3, seed=2).double()

    decoder = FastGitDecoder(model, packed_cpu_weights=True)

    assert not decoder.packed_cpu_weights
    assert "not packing" in caplog.text
    expected = HfGenerateDecoder(model).generate(pixel_values, max_new_tokens=20)
    _assert_same_ids(expected, decoder.generate(pixel_values, max_new_tokens=20))


def test_build_decoder(model: Any) -> None:
    assert isinstance(build_decoder("hf", model), HfGenerateDecoder)
    fast = build_decoder("fast", model)
    assert isinstance(fast, FastGitDecoder) and not fast.packed_cpu_weights
    packed = build_decoder("fast", model, packed_cpu_weights=True)
    assert isinstance(packed, FastGitDecoder)
    assert packed.packed_cpu_weights == HAS_ONEDNN
    with pytest.raises(ModelUnavailableError, match="unknown decoder kind"):
        build_decoder("beam", model)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", ["bos_token_id", "eos_token_id"])
def test_a_model_without_bos_or_eos_is_unavailable_not_a_crash(
    model: Any, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setattr(model.generation_config, missing, None)

    with pytest.raises(ModelUnavailableError, match="bos_token_id and eos_token_id"):
        FastGitDecoder(model)


def test_rejects_generation_settings_it_would_ignore(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.3)
    with pytest.raises(NotImplementedError, match="repetition_penalty"):
        FastGitDecoder(model)


@pytest.mark.parametrize(
    ("pixel_values", "max_new_tokens", "min_new_tokens"),
    [
        (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), 0, 0),
        (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), 5, -1),
        (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), 10_000, 0),
        (torch.zeros(1, 2, 3, IMAGE_SIZE, IMAGE_SIZE), 5, 0),
    ],
)
def test_rejects_bad_arguments(
    model: Any, pixel_values: Tensor, max_new_tokens: int, min_new_tokens: int
) -> None:
    with pytest.raises(ValueError):
        FastGitDecoder(model).generate(
            pixel_values, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens
        )


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize(("max_new_tokens", "min_new_tokens"), [(1, 0), (5, 0), (20, 0), (20, 20)])
def test_bf16_matches_generate_in_bf16_where_the_cpu_has_it(
    bf16_model: Any, batch: int, max_new_tokens: int, min_new_tokens: int
) -> None:
    """Where the CPU has native bfloat16 the fast decoder is token-identical to bf16 `generate` on the same
    weights; where it has not, the worker refuses bfloat16 at start instead (never a skip)."""
    device = torch.device("cpu")
    if not HOST_HAS_BF16:
        with pytest.raises(ModelUnavailableError, match="AVX512-BF16 or AMX-BF16"):
            check_dtype_supported(torch.bfloat16, device, cpu_flags=host_cpu_flags())
        return
    check_dtype_supported(torch.bfloat16, device, cpu_flags=host_cpu_flags())
    pixel_values = _pixels(batch, seed=batch).to(torch.bfloat16)
    lengths = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}

    expected = HfGenerateDecoder(bf16_model).generate(pixel_values, **lengths)
    actual = FastGitDecoder(bf16_model).generate(pixel_values, **lengths)

    assert bf16_model.dtype == torch.bfloat16
    _assert_same_ids(expected, actual)
    if batch > 1 and max_new_tokens > 1:
        assert len({tuple(row) for row in expected.tolist()}) > 1, "captions should depend on the image"


class LiveTensorBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's __init_subclass__
    """The bytes of the storages the ops inside have made and not yet freed; `peak`: their most at once."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        made = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(made):
            if isinstance(tensor, Tensor):
                storage = StorageWeakRef(tensor.untyped_storage())
                self._storages.setdefault(storage.cdata, (storage, tensor.untyped_storage().nbytes()))
        self._storages = {key: kept for key, kept in self._storages.items() if not kept[0].expired()}
        self.peak = max(self.peak, sum(nbytes for _storage, nbytes in self._storages.values()))
        return made


def _small_git(*, image_size: int, patch_size: int, layers: int, heads: int, width: int) -> Any:
    """A GIT model of one small vision layer and a text decoder of the given shape, default weights."""
    config = GitConfig(
        vision_config={
            "hidden_size": 8,
            "intermediate_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        vocab_size=128,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * width,
        max_position_embeddings=64,
        bos_token_id=101,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    return GitForCausalLM(config).eval()  # type: ignore[no-untyped-call]


def test_the_prefill_holds_one_layers_attention_scores_once() -> None:
    """The prefill's working memory beyond its K/V cache is one buffer of a layer's attention scores (the
    softmax runs in place, and the scores are freed before the MLP), not the two `generate` holds."""
    batch, heads, width, new_tokens = 2, 8, 32, 2
    model = _small_git(image_size=64, patch_size=4, layers=2, heads=heads, width=width)
    tokens = (64 // 4) ** 2 + 1 + 1  # the image's patches, its class token, and the BOS
    scores_bytes = batch * heads * tokens * tokens * 4
    cache_bytes = 2 * 2 * batch * (tokens + new_tokens) * width * 4  # keys and values of 2 layers, float32

    live = LiveTensorBytes()
    with torch.inference_mode(), live:
        FastGitDecoder(model).generate(
            torch.rand(batch, 3, 64, 64), max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )

    assert live.peak < cache_bytes + 1.5 * scores_bytes, (live.peak, cache_bytes, scores_bytes)


def test_dropping_finished_rows_copies_the_cache_one_layer_at_a_time() -> None:
    batch, layers, width, new_tokens = 8, 4, 64, 40
    model = _reinitialise(
        _small_git(image_size=16, patch_size=8, layers=layers, heads=2, width=width), eos_bias=1.0
    )
    pixels = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    slots = (16 // 8) ** 2 + 1 + 1 + new_tokens
    cache_bytes = layers * 2 * batch * slots * width * 4

    live = LiveTensorBytes()
    with torch.inference_mode(), live:
        token_ids = FastGitDecoder(model).generate(pixels, max_new_tokens=new_tokens, min_new_tokens=0)

    ends = [row.index(EOS) for row in token_ids.tolist() if EOS in row]
    assert ends.count(min(ends)) <= 2  # the first rows to finish leave most of the cache to keep
    assert live.peak < 1.25 * cache_bytes, (live.peak, cache_bytes)
