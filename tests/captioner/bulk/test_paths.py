"""Which paths a run captions: files as named, folders' image files in order, paths from stdin."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.bulk.paths import count_paths, input_paths


def album(root: Path) -> Path:
    (root / "b.jpg").write_bytes(b"b")
    (root / "a.PNG").write_bytes(b"a")
    (root / "notes.txt").write_text("not an image")
    (root / "inner").mkdir()
    (root / "inner" / "c.webp").write_bytes(b"c")
    return root


def names(paths: object, root: Path) -> list[str]:
    return [str(Path(path).relative_to(root)) for path in paths]  # type: ignore[attr-defined]


def test_a_folder_gives_its_image_files_sorted_and_subfolders_only_when_recursive(tmp_path: Path) -> None:
    root = album(tmp_path)
    empty = io.StringIO()

    flat = names(input_paths([str(root)], recursive=False, stdin=empty), root)
    deep = names(input_paths([str(root)], recursive=True, stdin=empty), root)

    assert flat == ["a.PNG", "b.jpg"]
    assert deep == ["a.PNG", "b.jpg", "inner/c.webp"]


def test_files_are_taken_as_named_even_without_an_image_suffix_or_when_missing(tmp_path: Path) -> None:
    root = album(tmp_path)
    named = [str(root / "notes.txt"), str(root / "gone.jpg")]

    assert list(input_paths(named, recursive=False, stdin=io.StringIO())) == [Path(name) for name in named]


def test_dash_reads_paths_from_stdin_one_a_line_skipping_blank_lines(tmp_path: Path) -> None:
    root = album(tmp_path)
    stdin = io.StringIO(f"{root / 'b.jpg'}\n\n{root / 'inner'}\r\n")

    found = names(input_paths([str(root / "a.PNG"), "-"], recursive=False, stdin=stdin), root)

    assert found == ["a.PNG", "b.jpg", "inner/c.webp"]


def test_paths_are_read_from_stdin_only_as_they_are_asked_for(tmp_path: Path) -> None:
    class OneLineAtATime(io.StringIO):
        lines_read = 0

        def __next__(self) -> str:
            self.lines_read += 1
            return super().__next__()

    stdin = OneLineAtATime("a.jpg\nb.jpg\nc.jpg\n")
    paths = input_paths(["-"], recursive=False, stdin=stdin)

    assert next(paths) == Path("a.jpg")
    assert stdin.lines_read == 1


def test_the_count_for_the_progress_bar_leaves_out_stdin_and_paths_to_skip(tmp_path: Path) -> None:
    root = album(tmp_path)

    total = count_paths([str(root), "-"], recursive=True, skip=frozenset({str(root / "b.jpg")}))

    assert total == 2


def test_every_format_the_service_accepts_is_taken_from_a_folder(tmp_path: Path) -> None:
    for suffix in [".mpo", ".jpe", ".apng", ".TIF"]:
        (tmp_path / f"photo{suffix}").write_bytes(b"x")

    found = names(input_paths([str(tmp_path)], recursive=False, stdin=io.StringIO()), tmp_path)

    assert found == ["photo.TIF", "photo.apng", "photo.jpe", "photo.mpo"]


@pytest.fixture
def deep_tree(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A folder chain deeper than Python's recursion limit, removed again one level at a time (pytest's
    own clean-up recurses, and would fail on it)."""
    folders = [tmp_path]
    for _ in range(sys.getrecursionlimit() + 100):  # one at a time: mkdir(parents=True) itself recurses
        folders.append(folders[-1] / "d")
        folders[-1].mkdir()
    (folders[-1] / "bottom.jpg").write_bytes(b"x")
    yield tmp_path, folders[-1]
    (folders[-1] / "bottom.jpg").unlink()
    for folder in reversed(folders[1:]):
        folder.rmdir()


def test_a_tree_deeper_than_the_recursion_limit_is_walked(deep_tree: tuple[Path, Path]) -> None:
    top, deepest = deep_tree
    (top / "top.jpg").write_bytes(b"x")

    found = list(input_paths([str(top)], recursive=True, stdin=io.StringIO()))

    assert found == [top / "top.jpg", deepest / "bottom.jpg"]
    assert count_paths([str(top)], recursive=True) == 2
