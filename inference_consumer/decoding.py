"""Greedy caption decoding for GIT (`transformers.GitForCausalLM`).

`HfGenerateDecoder` is the reference: plain `model.generate`. `FastGitDecoder` returns the same token ids
with less work per step. It reuses the model's own modules and weights, but drives them itself:

* the vision encoder and visual projection run once per batch, as in `generate`;
* one prefill pass over [image tokens + BOS] fills a preallocated per-layer K/V cache;
* each decoding step runs the text decoder on the newest token only, with functional ops and no mask
  machinery, and projects only that position onto the vocabulary;
* rows that emitted EOS are dropped from the batch (cache rows included), so finished captions cost nothing,
  except where fewer rows would cost more (`pad_steps_from`, below).

The arithmetic mirrors `GitSelfAttention`/`GitLayer` op for op (matmul + softmax attention, the same
division by sqrt(head_dim), the same additive mask in the prefill), so as long as no row has finished the
logits are bit-identical to `generate`'s. Once rows are dropped, the matrix products run on fewer rows, and
BLAS may round the last bit differently than on the full batch; a token can then only differ on an exact
near-tie of the two best logits (last-bit apart). The opt-in `packed_cpu_weights` trades bit-identity of
the decoding steps for the same kind of last-bit differences, for faster steps on CPU (docs/performance.md).

`pad_steps_from` (the worker sets it for float32 on an AVX-512 CPU) runs a decoding step with that many to
FULL_GEMM_ROWS - 1 unfinished rows as FULL_GEMM_ROWS rows, keeping finished rows or adding filler ones:
MKL's float32 GEMM takes a slower kernel below that many rows, whose rows also round differently. A batch
of 16 or more then stays bit-identical to `generate` until fewer than `pad_steps_from` rows are left; a
smaller batch so padded gets the logits `generate` gives its images in a batch of 16 or more.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_consumer import stages
from inference_consumer.errors import ModelUnavailableError

log = logging.getLogger(__name__)

# A `transformers.GitForCausalLM`. Its submodules are reached through nn.Module's untyped attribute lookup,
# so the precise class would buy no checking here.
GitForCausalLM = Any

StepLogitsHook = Callable[[Tensor, Tensor], None]
"""Called per step with (original batch rows, their float32 logits after the min-new-tokens mask)."""


class GreedyDecoder(Protocol):
    def generate(
        self,
        pixel_values: Tensor,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        on_stage: stages.StageSink | None = None,
    ) -> Tensor:
        """on_stage: told the seconds of each stage of the batch (inference_consumer/stages.py)."""
        ...


class HfGenerateDecoder:
    """The reference decoder: `model.generate` with greedy search."""

    def __init__(self, model: GitForCausalLM) -> None:
        self._model = model

    def generate(
        self,
        pixel_values: Tensor,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        on_stage: stages.StageSink | None = None,
    ) -> Tensor:
        started = time.perf_counter()
        with torch.inference_mode():
            token_ids = self._model.generate(
                pixel_values=pixel_values,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
            )
        if on_stage is not None:
            on_stage(stages.GENERATE, time.perf_counter() - started)
        return cast(Tensor, token_ids)


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: tuple[int, ...]
    pad: int

    @classmethod
    def from_generation_config(cls, generation_config: Any) -> SpecialTokens:
        """Resolve the ids the way `generate` does: no pad id means the first EOS id pads."""
        bos = generation_config.bos_token_id
        eos = generation_config.eos_token_id
        if bos is None or eos is None:
            raise ModelUnavailableError(
                "GIT captioning needs bos_token_id and eos_token_id in the model's generation config"
            )
        eos_ids = (eos,) if isinstance(eos, int) else tuple(int(token) for token in eos)
        pad = generation_config.pad_token_id
        return cls(bos=int(bos), eos=eos_ids, pad=eos_ids[0] if pad is None else int(pad))


# Generation-config settings that would make `generate` add a logits processor this decoder does not apply.
_UNSUPPORTED_SETTINGS: dict[str, Callable[[Any], bool]] = {
    "guidance_scale": lambda value: value is not None and value != 1,
    "sequence_bias": lambda value: value is not None,
    "repetition_penalty": lambda value: value is not None and value != 1.0,
    "no_repeat_ngram_size": lambda value: value is not None and value > 0,
    "bad_words_ids": lambda value: value is not None,
    "min_length": lambda value: value is not None and value > 0,
    "forced_bos_token_id": lambda value: value is not None,
    "forced_eos_token_id": lambda value: value is not None,
    "remove_invalid_values": lambda value: value is True,
    "exponential_decay_length_penalty": lambda value: value is not None,
    "suppress_tokens": lambda value: value is not None,
    "begin_suppress_tokens": lambda value: value is not None,
    "watermarking_config": lambda value: value is not None,
}


def _check_plain_greedy(generation_config: Any) -> None:
    active = [
        name
        for name, is_active in _UNSUPPORTED_SETTINGS.items()
        if is_active(getattr(generation_config, name, None))
    ]
    if active:
        raise NotImplementedError(f"FastGitDecoder does not apply these generation settings: {active}")


LinearFn = Callable[[Tensor, nn.Linear], Tensor]
"""Applies an `nn.Linear`'s weights to a tensor; lets decoding steps swap in pre-packed CPU weights."""


FULL_GEMM_ROWS = 16
"""The fewest rows for which MKL's float32 GEMM on an AVX-512 CPU runs its full kernel: below them, at GIT's
decoding-step shapes, every row costs more, so that a step of 11 to 15 rows takes longer than one of 16
(docs/performance.md). Each row's result is the same bits for any count from this many on."""


def step_rows(alive: int, *, pad_from: int) -> int:
    """The rows a decoding step runs for `alive` unfinished captions: FULL_GEMM_ROWS from `pad_from` on
    (0: never), else `alive`."""
    if 0 < pad_from <= alive < FULL_GEMM_ROWS:
        return FULL_GEMM_ROWS
    return alive


def _linear(hidden: Tensor, layer: nn.Linear) -> Tensor:
    return F.linear(hidden, layer.weight, layer.bias)


class _OneDnnPackedLinears:
    """Linear layers with their float32 weights pre-packed for oneDNN (CPU only).

    `F.linear` on CPU calls MKL sgemm, which re-packs the whole weight on every call; with the few rows of a
    decoding step that packing dominates, and these pre-packed weights skip it (docs/performance.md). oneDNN
    sums in another order, so results differ from `F.linear`'s in the last bits: token ids stay
    the same unless the two best logits are that close. The packed copies cost as much memory as the weights
    and do not follow later changes to them.
    """

    def __init__(self, layers: list[nn.Linear]) -> None:
        with torch.no_grad():
            self._packed = {
                id(layer): cast(Tensor, torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach()))
                for layer in layers
            }

    @staticmethod
    def supports(layers: list[nn.Linear]) -> bool:
        return torch.backends.mkldnn.is_available() and all(  # type: ignore[no-untyped-call]
            type(layer.weight.data) is Tensor
            and layer.weight.device.type == "cpu"
            and layer.weight.dtype == torch.float32
            for layer in layers
        )

    def __call__(self, hidden: Tensor, layer: nn.Linear) -> Tensor:
        packed = self._packed[id(layer)]
        return cast(Tensor, torch.ops.mkldnn._linear_pointwise(hidden, packed, layer.bias, "none", [], ""))


def _in_place(activation: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """GIT's exact GELU as the same kernel run in place on its input, which the text layer never reuses;
    any other activation as it is."""
    from transformers.activations import GELUActivation

    if type(activation) is GELUActivation and activation.act is F.gelu:
        return cast(Callable[[Tensor], Tensor], torch.ops.aten.gelu_)
    return activation


def _layer_norm(hidden: Tensor, norm: nn.LayerNorm) -> Tensor:
    return F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


@dataclass(frozen=True)
class _TextLayer:
    """One `GitLayer`, evaluated with functional ops on its own weights."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_output: nn.Linear
    attention_norm: nn.LayerNorm
    intermediate: nn.Linear
    activation: Callable[[Tensor], Tensor]
    output: nn.Linear
    output_norm: nn.LayerNorm
    head_dim: int

    @classmethod
    def of(cls, layer: Any) -> _TextLayer:
        attention = layer.attention
        return cls(
            query=attention.self.query,
            key=attention.self.key,
            value=attention.self.value,
            attention_output=attention.output.dense,
            attention_norm=attention.output.LayerNorm,
            intermediate=layer.intermediate.dense,
            activation=_in_place(layer.intermediate.intermediate_act_fn),
            output=layer.output.dense,
            output_norm=layer.output.LayerNorm,
            head_dim=attention.self.attention_head_size,
        )

    def linears(self) -> list[nn.Linear]:
        return [self.query, self.key, self.value, self.attention_output, self.intermediate, self.output]

    def __call__(
        self,
        hidden: Tensor,
        keys: Tensor,
        values: Tensor,
        *,
        start: int,
        mask: Tensor | None,
        linear: LinearFn = _linear,
    ) -> Tensor:
        """Run `hidden` (batch, tokens, width), whose tokens sit at cache slots start.., through the layer.
        Each stage's temporaries (the attention scores, the intermediate activation) are freed before the
        next stage allocates: the prefill's peak memory."""
        context = self._attention(hidden, keys, values, start=start, mask=mask, linear=linear)
        attended = _layer_norm(linear(context, self.attention_output).add_(hidden), self.attention_norm)
        output = linear(self.activation(linear(attended, self.intermediate)), self.output)
        return _layer_norm(output.add_(attended), self.output_norm)

    def _attention(
        self,
        hidden: Tensor,
        keys: Tensor,
        values: Tensor,
        *,
        start: int,
        mask: Tensor | None,
        linear: LinearFn,
    ) -> Tensor:
        """Writes the tokens' keys and values at their cache slots; returns the heads' merged context."""
        end = start + hidden.shape[1]
        query = self._split_heads(linear(hidden, self.query))
        keys[:, :, start:end] = self._split_heads(linear(hidden, self.key))
        values[:, :, start:end] = self._split_heads(linear(hidden, self.value))
        # Same op order as GitSelfAttention: divide (not multiply) by sqrt(head_dim), additive mask, softmax
        # (in place: the same kernel, so the same bits, without a second buffer of the scores' size).
        scores = torch.matmul(query, keys[:, :, :end].transpose(-1, -2)).div_(math.sqrt(self.head_dim))
        if mask is not None:
            scores.add_(mask)
        return self._merge_heads(torch.matmul(torch.softmax(scores, dim=-1, out=scores), values[:, :, :end]))

    def _split_heads(self, hidden: Tensor) -> Tensor:
        batch, tokens, _ = hidden.shape
        return hidden.view(batch, tokens, -1, self.head_dim).transpose(1, 2)

    @staticmethod
    def _merge_heads(context: Tensor) -> Tensor:
        batch, heads, tokens, head_dim = context.shape
        return context.permute(0, 2, 1, 3).contiguous().view(batch, tokens, heads * head_dim)


@dataclass
class _KVCache:
    """Per-layer keys and values, (batch, heads, slots, head_dim), written in place slot by slot."""

    keys: list[Tensor]
    values: list[Tensor]

    @classmethod
    def allocate(
        cls, layers: int, shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype
    ) -> _KVCache:
        def fresh() -> list[Tensor]:
            return [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]

        return cls(keys=fresh(), values=fresh())

    def clear_rows_from(self, row: int) -> None:
        """Zeroes every slot of the rows from `row` on: filler rows attend to zeros, not to stale memory."""
        for cache in (*self.keys, *self.values):
            cache[row:].zero_()

    def keep_rows(self, rows: Tensor) -> None:
        """Keeps only `rows`, one layer's tensor at a time: copying every layer's keys (then values) before
        freeing any held half the cache twice, at the first caption that ends."""
        for caches in (self.keys, self.values):
            for layer, cache in enumerate(caches):
                caches[layer] = cache.index_select(0, rows)


class FastGitDecoder:
    """Token-identical replacement for greedy `GitForCausalLM.generate`, with its own KV cache.

    `packed_cpu_weights=True` runs the decoding steps (not the vision encoder or the prefill) on oneDNN
    pre-packed weights, about twice as fast on CPU but no longer bit-identical (see `_OneDnnPackedLinears`).
    It applies to float32 models on the CPU and is ignored, with a warning, anywhere else.
    `pad_steps_from` (0: never) pads decoding steps to FULL_GEMM_ROWS rows; see the module's docstring.
    """

    def __init__(
        self, model: GitForCausalLM, *, packed_cpu_weights: bool = False, pad_steps_from: int = 0
    ) -> None:
        if not 0 <= pad_steps_from <= FULL_GEMM_ROWS:
            raise ValueError(f"pad_steps_from must be 0 to {FULL_GEMM_ROWS}: {pad_steps_from}")
        _check_plain_greedy(model.generation_config)
        git = model.git
        if git.config.num_image_with_embedding is not None:
            raise NotImplementedError("FastGitDecoder captions single images, not multi-frame (video) GIT")
        self._image_encoder: nn.Module = git.image_encoder
        self._visual_projection: nn.Module = git.visual_projection
        self._word_embeddings: nn.Embedding = git.embeddings.word_embeddings
        self._position_embeddings: nn.Embedding = git.embeddings.position_embeddings
        self._embedding_norm: nn.LayerNorm = git.embeddings.LayerNorm
        self._layers = [_TextLayer.of(layer) for layer in git.encoder.layer]
        self._vocabulary_head: nn.Linear = model.output
        self._heads: int = git.config.num_attention_heads
        self._tokens = SpecialTokens.from_generation_config(model.generation_config)
        self._step_linear = self._linear_for_steps(packed_cpu_weights)
        self._pad_steps_from = pad_steps_from

    @property
    def packed_cpu_weights(self) -> bool:
        return isinstance(self._step_linear, _OneDnnPackedLinears)

    @property
    def pad_steps_from(self) -> int:
        return self._pad_steps_from

    def _linear_for_steps(self, packed_cpu_weights: bool) -> LinearFn:
        if not packed_cpu_weights:
            return _linear
        linears = [linear for layer in self._layers for linear in layer.linears()] + [self._vocabulary_head]
        if not _OneDnnPackedLinears.supports(linears):
            log.warning("packed_cpu_weights needs plain float32 weights on a CPU with oneDNN; not packing")
            return _linear
        return _OneDnnPackedLinears(linears)

    def generate(
        self,
        pixel_values: Tensor,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        on_stage: stages.StageSink | None = None,
    ) -> Tensor:
        return self.decode(
            pixel_values, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, on_stage=on_stage
        )

    @torch.inference_mode()
    def decode(
        self,
        pixel_values: Tensor,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        on_step_logits: StepLogitsHook | None = None,
        on_stage: stages.StageSink | None = None,
    ) -> Tensor:
        """`generate`, optionally reporting each step's logits and each stage's seconds."""
        self._check_lengths(pixel_values, max_new_tokens, min_new_tokens)
        started = time.perf_counter()
        image_tokens = self._encode_images(pixel_values)
        encoded = time.perf_counter()
        if on_stage is not None:  # as each stage ends: a sink may mark where the next one starts
            on_stage(stages.IMAGE_ENCODER, encoded - started)
        batch, image_length, _ = image_tokens.shape
        steps = _StepRows.start(batch, pad_from=self._pad_steps_from, device=image_tokens.device)
        cache = self._allocate_cache(steps.width, image_length + max_new_tokens, image_tokens)
        # Filler rows write their tokens below the batch's, and are cut off at the end.
        token_ids = torch.full(
            (steps.width, 1 + max_new_tokens), self._tokens.pad, dtype=torch.long, device=image_tokens.device
        )
        token_ids[:, 0] = self._tokens.bos
        eos_ids = torch.tensor(self._tokens.eos, device=image_tokens.device)
        pad_id = torch.tensor(self._tokens.pad, device=image_tokens.device)

        hidden = self._with_fillers(self._prefill(image_tokens, cache), cache, steps.width)
        prefilled = time.perf_counter()
        if on_stage is not None:
            on_stage(stages.PREFILL, prefilled - encoded)
        for step in range(1, max_new_tokens + 1):
            logits = self._logits(hidden, eos_masked=step <= min_new_tokens, eos_ids=eos_ids)
            next_ids = steps.padded(logits.argmax(dim=-1), pad_id)
            if on_step_logits is not None:
                on_step_logits(steps.rows[steps.live], logits[steps.live])
            token_ids[steps.rows, step] = next_ids
            if step == max_new_tokens:
                break
            if step > min_new_tokens:  # until then EOS is masked out: no need to sync on the device
                kept = steps.finish(next_ids, eos_ids)
                if steps.alive == 0:
                    break
                if kept is not None:
                    next_ids = next_ids[kept]
                    cache.keep_rows(kept)
            hidden = self._decode_step(next_ids, position=step, slot=image_length + step, cache=cache)
        if on_stage is not None:
            on_stage(stages.DECODING_STEPS, time.perf_counter() - prefilled)
        return token_ids[:batch, : step + 1].contiguous()

    @staticmethod
    def _with_fillers(hidden: Tensor, cache: _KVCache, width: int) -> Tensor:
        """The prefilled rows' hidden states, then zeros (in the cache too) for filler rows up to `width`."""
        batch = hidden.shape[0]
        if width == batch:
            return hidden
        cache.clear_rows_from(batch)
        return torch.cat((hidden, hidden.new_zeros((width - batch, *hidden.shape[1:]))))

    def _check_lengths(self, pixel_values: Tensor, max_new_tokens: int, min_new_tokens: int) -> None:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width): {tuple(pixel_values.shape)}"
            )
        if max_new_tokens < 1 or min_new_tokens < 0:
            raise ValueError(
                f"need max_new_tokens >= 1, min_new_tokens >= 0: {max_new_tokens}, {min_new_tokens}"
            )
        # The last token fed back sits at text position max_new_tokens - 1 (BOS is at 0).
        positions = self._position_embeddings.num_embeddings
        if max_new_tokens > positions:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} exceeds the model's {positions} text positions"
            )

    def _encode_images(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.to(self._word_embeddings.weight.device)
        features = self._image_encoder(pixel_values).last_hidden_state
        return cast(Tensor, self._visual_projection(features))

    def _allocate_cache(self, batch: int, slots: int, like: Tensor) -> _KVCache:
        head_dim = self._layers[0].head_dim
        return _KVCache.allocate(
            len(self._layers), (batch, self._heads, slots, head_dim), device=like.device, dtype=like.dtype
        )

    def _embed(self, token_ids: Tensor, position: int) -> Tensor:
        """GitEmbeddings for one token per row at text `position`: (batch,) -> (batch, 1, width)."""
        embedded = F.embedding(token_ids, self._word_embeddings.weight)
        embedded += self._position_embeddings.weight[position]
        return _layer_norm(embedded, self._embedding_norm).unsqueeze(1)

    def _prefill(self, image_tokens: Tensor, cache: _KVCache) -> Tensor:
        """Run [image tokens + BOS] through the decoder, filling the cache's first rows; returns BOS's hidden
        state."""
        batch, image_length, _ = image_tokens.shape
        bos_ids = torch.full((batch,), self._tokens.bos, dtype=torch.long, device=image_tokens.device)
        hidden = torch.cat((image_tokens, self._embed(bos_ids, position=0)), dim=1)
        mask = self._prefill_mask(image_length, image_tokens)
        for layer, keys, values in zip(self._layers, cache.keys, cache.values, strict=True):
            hidden = layer(hidden, keys[:batch], values[:batch], start=0, mask=mask)
        return hidden[:, -1:]

    @staticmethod
    def _prefill_mask(image_length: int, like: Tensor) -> Tensor:
        """Additive mask as `create_causal_mask` builds it: image tokens see all images but not the BOS."""
        mask = torch.zeros((image_length + 1, image_length + 1), dtype=like.dtype, device=like.device)
        mask[:image_length, image_length] = torch.finfo(like.dtype).min
        return mask

    def _decode_step(self, token_ids: Tensor, *, position: int, slot: int, cache: _KVCache) -> Tensor:
        hidden = self._embed(token_ids, position)
        for layer, keys, values in zip(self._layers, cache.keys, cache.values, strict=True):
            hidden = layer(hidden, keys, values, start=slot, mask=None, linear=self._step_linear)
        return hidden

    def _logits(self, hidden: Tensor, *, eos_masked: bool, eos_ids: Tensor) -> Tensor:
        """float32 logits of each row's last token; EOS at -inf while min_new_tokens is not reached."""
        logits = self._step_linear(hidden[:, -1], self._vocabulary_head).float()
        if eos_masked:
            logits[:, eos_ids] = -math.inf
        return logits


@dataclass
class _StepRows:
    """The rows the decoding steps run: each one's batch row (fillers: past the batch), and which of them
    are still captioning. Finished rows stay while `step_rows` asks for more rows than are live."""

    rows: Tensor
    live: Tensor
    alive: int
    pad_from: int

    @classmethod
    def start(cls, batch: int, *, pad_from: int, device: torch.device) -> _StepRows:
        rows = torch.arange(step_rows(batch, pad_from=pad_from), device=device)
        return cls(rows=rows, live=rows < batch, alive=batch, pad_from=pad_from)

    @property
    def width(self) -> int:
        return len(self.rows)

    def padded(self, next_ids: Tensor, pad_id: Tensor) -> Tensor:
        """`next_ids` with padding for the finished and filler rows, which go on as `generate`'s do."""
        return next_ids if self.alive == self.width else torch.where(self.live, next_ids, pad_id)

    def finish(self, next_ids: Tensor, eos_ids: Tensor) -> Tensor | None:
        """Marks the live rows that emitted EOS as finished. Returns the step rows to keep, in order, when
        the next steps are to run fewer rows (every live row, and as many others as `step_rows` asks for);
        else None."""
        finished = torch.isin(next_ids, eos_ids) & self.live
        if not bool(finished.any()):
            return None
        self.live = self.live & ~finished
        self.alive = int(self.live.sum())
        width = step_rows(self.alive, pad_from=self.pad_from)
        if self.alive == 0 or width == self.width:
            return None
        kept = self.live.nonzero().squeeze(1)
        if width > self.alive:
            kept = torch.cat((kept, (~self.live).nonzero().squeeze(1)[: width - self.alive])).sort().values
        self.rows, self.live = self.rows[kept], self.live[kept]
        return kept


def quantize_int8(model: GitForCausalLM) -> GitForCausalLM:
    """Quantize every `nn.Linear` weight of `model` to int8 (per output channel) in place, with torchao.

    Off by default: it changes numerics, so captions drift from the float model's. torchao's weight-only
    kernel dequantizes the weight on each call, so on CPU it saves memory at rest but runs slower
    (docs/performance.md, for both). Needs `pip install torchao`.
    """
    torchao_quantization = importlib.import_module("torchao.quantization")  # optional and untyped
    torchao_quantization.quantize_(model, torchao_quantization.Int8WeightOnlyConfig())
    return model


def build_decoder(
    kind: Literal["hf", "fast"],
    model: GitForCausalLM,
    *,
    packed_cpu_weights: bool = False,
    pad_steps_from: int = 0,
) -> GreedyDecoder:
    """`packed_cpu_weights` and `pad_steps_from` only apply to the fast decoder; see `FastGitDecoder`."""
    if kind == "hf":
        return HfGenerateDecoder(model)
    if kind == "fast":
        return FastGitDecoder(model, packed_cpu_weights=packed_cpu_weights, pad_steps_from=pad_steps_from)
    raise ModelUnavailableError(f"unknown decoder kind {kind!r}; expected 'hf' or 'fast'")
