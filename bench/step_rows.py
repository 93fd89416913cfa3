"""What a decoding step's matrix products cost by the number of rows they run, on this CPU.

    python -m bench.step_rows [--threads 2] [--rows 1,8,11,13,15,16,17]
    MKL_ENABLE_INSTRUCTIONS=AVX2 python -m bench.step_rows    # MKL's AVX2 kernels on an AVX-512 CPU
    python -m bench.step_rows --cold 16    # one whole step, every layer on its own weights, in order

One GIT-base decoding step, in float32 as the fast decoder runs it: each of the six text layers' linears
(query, key, value and attention output at 768 x 768, the MLP's 768 -> 3072 and 3072 -> 768) on one token a
row, and the vocabulary projection (768 -> 30522), with random weights. Each product is timed alone, best
of 5; the step is their sum. It shows where padding a step to 16 rows (CAPTIONER_PAD_DECODING_STEPS_FROM)
pays: where MKL's kernel for fewer than 16 rows is slower than the one for 16.

`--cold ROWS` runs one step's linears as the decoder does, each layer on its own weights (~264 MB in all,
more than the caches hold), against the same calls on one layer's weights again and again (which stay in
cache, as in the ceiling's replay of each distinct kernel): what cache-cold weights cost a step.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence

from captioner.model_factory import SHAPES
from inference_consumer.model import configure_torch_threads

REPEATS = 5
DEFAULT_ROWS = (1, 8, 10, 11, 12, 13, 15, 16, 17)


def step_shapes() -> dict[str, tuple[int, int, int]]:
    """Each of a GIT-base decoding step's linears: (out features, in features, calls a step)."""
    base = SHAPES["base"]
    width, inner = base.hidden_size, base.intermediate_size
    return {
        "768x768": (width, width, 4 * base.layers),
        "768->3072": (inner, width, base.layers),
        "3072->768": (width, inner, base.layers),
        "vocabulary": (base.vocab_size, width, 1),
    }


def best_seconds(call: Callable[[], object], *, calls: int) -> float:
    call()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def step_micros(rows: int, shapes: dict[str, tuple[int, int, int]]) -> dict[str, float]:
    """Microseconds of one call of each linear on `rows` rows."""
    import torch
    import torch.nn.functional as F

    micros = {}
    with torch.inference_mode():
        for name, (out_features, in_features, _calls) in shapes.items():
            weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
            hidden = torch.randn(rows, 1, in_features)
            repeat = max(1, 2_000_000 // (out_features * in_features))
            run = functools.partial(F.linear, hidden, weight, bias)
            micros[name] = 1e6 * best_seconds(run, calls=repeat)
    return micros


def step_in_order_ms(rows: int, *, distinct_layers: bool) -> float:
    """Best milliseconds of one step's linears in the decoder's order, each layer on its own weights or
    every layer on the first layer's."""
    import torch
    import torch.nn.functional as F

    base = SHAPES["base"]
    width, inner = base.hidden_size, base.intermediate_size

    def layer_weights() -> list[tuple[torch.Tensor, torch.Tensor]]:
        shapes = [(width, width)] * 4 + [(inner, width), (width, inner)]
        return [
            (torch.randn(out_features, in_features), torch.randn(out_features))
            for out_features, in_features in shapes
        ]

    first = layer_weights()
    layers = [first] + [layer_weights() if distinct_layers else first for _ in range(base.layers - 1)]
    head = (torch.randn(base.vocab_size, width), torch.randn(base.vocab_size))
    hidden = torch.randn(rows, 1, width)

    def step() -> None:
        for weights in layers:
            for weight, bias in weights[:4]:
                F.linear(hidden, weight, bias)
            F.linear(F.linear(hidden, *weights[4]), *weights[5])
        F.linear(hidden, *head)

    with torch.inference_mode():
        return 1000 * best_seconds(step, calls=1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default=",".join(map(str, DEFAULT_ROWS)))
    parser.add_argument("--cold", type=int, metavar="ROWS", help="one step in order, cold and hot weights")
    args = parser.parse_args(argv)
    configure_torch_threads(args.threads)
    if args.cold:
        cold = step_in_order_ms(args.cold, distinct_layers=True)
        hot = step_in_order_ms(args.cold, distinct_layers=False)
        print(
            f"{args.cold} rows, one step's linears in order: {cold:.1f} ms on each layer's own weights, "
            f"{hot:.1f} ms on one layer's weights reused"
        )
        return
    shapes = step_shapes()
    print("rows " + " ".join(f"{name:>11}" for name in shapes) + "   step ms  ms/row")
    for rows in (int(value) for value in args.rows.split(",")):
        micros = step_micros(rows, shapes)
        step_ms = sum(micros[name] * calls for name, (_o, _i, calls) in shapes.items()) / 1000
        cells = " ".join(f"{micros[name]:>9.0f}µs" for name in shapes)
        print(f"{rows:>4} {cells} {step_ms:>9.1f} {step_ms / rows:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
