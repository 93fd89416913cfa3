"""The shipped packages hold the service and its operator tools, nothing else: every module in them is
reached from the one entry point, `captioner` (captioner.cli), so none is there only for the tests or the
benchmarks. (What may import what is pyproject.toml's import contracts, checked by `lint-imports`.)"""

from __future__ import annotations

import grimp

SHIPPED = ("schemas", "core", "producer_api", "inference_consumer", "captioner")
ENTRY_POINT = "captioner.cli"  # [project.scripts] captioner


def reached_from(graph: grimp.ImportGraph, start: str) -> set[str]:
    """Modules `start` imports, directly or not, at module level or inside a function; importing a
    module imports each package above it."""
    reached: set[str] = set()
    waiting = [start]
    while waiting:
        module = waiting.pop()
        if module in reached:
            continue
        reached.add(module)
        waiting.extend(graph.find_modules_directly_imported_by(module))
        parts = module.split(".")
        waiting.extend(".".join(parts[:end]) for end in range(1, len(parts)))
    return reached


def test_every_shipped_module_serves_the_entry_point() -> None:
    graph = grimp.build_graph(*SHIPPED, cache_dir=None)
    unreached = sorted(graph.modules - reached_from(graph, ENTRY_POINT))
    assert not unreached, f"shipped modules `captioner` never uses (test or bench machinery?): {unreached}"
