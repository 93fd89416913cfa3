from __future__ import annotations

import re

import pytest

from bench.step_rows import main, step_shapes
from captioner.model_factory import SHAPES


def test_a_step_is_every_text_layer_linear_and_the_vocabulary_projection() -> None:
    base = SHAPES["base"]
    shapes = step_shapes()

    assert sum(calls for _out, _in, calls in shapes.values()) == 6 * base.layers + 1
    assert shapes["vocabulary"] == (base.vocab_size, base.hidden_size, 1)


def test_prints_one_line_a_row_count(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--threads", "1", "--rows", "1,3"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rows")
    assert [line.split()[0] for line in lines[1:]] == ["1", "3"]
    assert all(re.fullmatch(r"\s*\d+( +\d+µs){4} +[\d.]+ +[\d.]+", line) for line in lines[1:])


def test_cold_prints_both_orders(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--threads", "1", "--cold", "2"])

    line = capsys.readouterr().out.strip()
    assert re.fullmatch(
        r"2 rows, one step's linears in order: [\d.]+ ms on each layer's own weights, "
        r"[\d.]+ ms on one layer's weights reused",
        line,
    )
