"""bench.phase: which phases it runs alone, and how many times."""

from __future__ import annotations

import pytest

from bench.phase import PHASES, parse_args


@pytest.mark.parametrize(
    ("phase", "function"),
    [
        ("saturation", "saturation"),
        ("capacity", "capacity"),
        ("api-cost", "api_cost"),
        ("memory", "memory"),
        ("exactly-once", "exactly_once"),
    ],
)
def test_each_named_phase_can_run_alone(phase: str, function: str) -> None:
    args = parse_args([phase, "--repeat", "3"])

    assert PHASES[args.phase].__name__ == function and args.repeat == 3


@pytest.mark.parametrize(
    "argv", [["idle"], ["capacity", "--repeat", "0"], ["capacity", "--repeat", "11"], []]
)
def test_other_phases_and_repeats_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)

    assert exit_.value.code == 2
