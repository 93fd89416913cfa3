"""Which paths a run captions: files as named, folders' image files in order, paths from stdin."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from captioner.bulk.files import ImageFile, read_image
from captioner.bulk.paths import InputPath, count_paths, input_paths
from captioner.bulk.results import Result


def album(root: Path) -> Path:
    (root / "b.jpg").write_bytes(b"b")
    (root / "a.PNG").write_bytes(b"a")
    (root / "notes.txt").write_text("not an image")
    (root / "inner").mkdir()
    (root / "inner" / "c.webp").write_bytes(b"c")
    return root


def names(found: Iterable[InputPath], root: Path) -> list[str]:
    return [str(item.path.relative_to(root)) for item in found]


def test_a_folder_gives_its_image_files_sorted_and_subfolders_only_when_recursive(tmp_path: Path) -> None:
    root = album(tmp_path)
    empty = io.BytesIO()

    flat = names(input_paths([str(root)], recursive=False, stdin=empty), root)
    deep = names(input_paths([str(root)], recursive=True, stdin=empty), root)

    assert flat == ["a.PNG", "b.jpg"]
    assert deep == ["a.PNG", "b.jpg", "inner/c.webp"]


def test_files_are_taken_as_named_even_without_an_image_suffix_or_when_missing(tmp_path: Path) -> None:
    root = album(tmp_path)
    named = [str(root / "notes.txt"), str(root / "gone.jpg")]

    found = list(input_paths(named, recursive=False, stdin=io.BytesIO()))

    assert found == [InputPath(Path(name)) for name in named]


def test_dash_reads_paths_from_stdin_one_a_line_skipping_blank_lines(tmp_path: Path) -> None:
    root = album(tmp_path)
    stdin = io.BytesIO(f"{root / 'b.jpg'}\n\n{root / 'inner'}\r\n".encode())

    found = names(input_paths([str(root / "a.PNG"), "-"], recursive=False, stdin=stdin), root)

    assert found == ["a.PNG", "b.jpg", "inner/c.webp"]


def test_paths_are_read_from_stdin_only_as_they_are_asked_for(tmp_path: Path) -> None:
    class OneLineAtATime(io.BytesIO):
        lines_read = 0

        def __next__(self) -> bytes:
            self.lines_read += 1
            return super().__next__()

    stdin = OneLineAtATime(b"a.jpg\nb.jpg\nc.jpg\n")
    paths = input_paths(["-"], recursive=False, stdin=stdin)

    assert next(paths) == InputPath(Path("a.jpg"))
    assert stdin.lines_read == 1


def test_the_count_for_the_progress_bar_leaves_out_stdin_and_paths_to_skip(tmp_path: Path) -> None:
    root = album(tmp_path)

    total = count_paths([str(root), "-"], recursive=True, skip=frozenset({bytes(root / "b.jpg")}))

    assert total == 2


def test_every_format_the_service_accepts_is_taken_from_a_folder(tmp_path: Path) -> None:
    for suffix in [".mpo", ".jpe", ".apng", ".TIF"]:
        (tmp_path / f"photo{suffix}").write_bytes(b"x")

    found = names(input_paths([str(tmp_path)], recursive=False, stdin=io.BytesIO()), tmp_path)

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

    found = list(input_paths([str(top)], recursive=True, stdin=io.BytesIO()))

    assert [item.path for item in found] == [top / "top.jpg", deepest / "bottom.jpg"]
    assert count_paths([str(top)], recursive=True) == 2


def test_a_path_on_stdin_is_taken_as_bytes_whatever_its_encoding(tmp_path: Path) -> None:
    name = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    name.write_bytes(b"x")

    [found] = input_paths(["-"], recursive=False, stdin=io.BytesIO(bytes(name) + b"\n"))

    assert bytes(found.path) == bytes(tmp_path) + b"/caf\xe9.jpg"


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """album/ with a photo, a symlink to it, a symlink to a file outside and a symlink back up to the
    album (a loop); outside/ beside it."""
    album, outside = tmp_path / "album", tmp_path / "outside"
    album.mkdir()
    outside.mkdir()
    (album / "photo.jpg").write_bytes(b"photo")
    (outside / "secret.jpg").write_bytes(b"secret")
    (outside / "more.jpg").write_bytes(b"more")
    (album / "same.jpg").symlink_to(album / "photo.jpg")
    (album / "stolen.jpg").symlink_to(outside / "secret.jpg")
    (album / "out").symlink_to(outside, target_is_directory=True)
    (album / "loop").symlink_to(album, target_is_directory=True)
    return album


def read_all(found: Iterable[InputPath]) -> dict[str, ImageFile | Result]:
    return {item.path.name: read_image(item.path, max_bytes=100, within=item.within) for item in found}


def test_a_walk_takes_no_file_out_of_the_folder_and_no_symlinked_subfolder(linked: Path) -> None:
    read = read_all(input_paths([str(linked)], recursive=True, stdin=io.BytesIO()))

    assert set(read) == {"photo.jpg", "same.jpg", "stolen.jpg"}
    assert isinstance(read["same.jpg"], ImageFile) and read["same.jpg"].data == b"photo"
    assert isinstance(read["stolen.jpg"], Result) and read["stolen.jpg"].error == "outside_folder"


def test_follow_symlinks_follows_them_out_and_walks_a_loop_once(linked: Path) -> None:
    found = list(input_paths([str(linked)], recursive=True, stdin=io.BytesIO(), follow_symlinks=True))
    read = read_all(found)

    assert sorted(read) == ["more.jpg", "photo.jpg", "same.jpg", "secret.jpg", "stolen.jpg"]
    assert len(found) == 5  # the loop back to the album is not walked again
    assert all(isinstance(outcome, ImageFile) for outcome in read.values())
    assert count_paths([str(linked)], recursive=True, follow_symlinks=True) == 5


def test_a_symlink_named_by_the_user_is_followed(linked: Path) -> None:
    named = linked / "stolen.jpg"

    [found] = input_paths([str(named)], recursive=False, stdin=io.BytesIO())

    read = read_image(found.path, max_bytes=100, within=found.within)
    assert isinstance(read, ImageFile) and read.data == b"secret"


def test_a_file_swapped_for_a_symlink_out_after_the_walk_is_not_read(linked: Path) -> None:
    [photo] = [item for item in input_paths([str(linked)], recursive=False, stdin=io.BytesIO())
               if item.path.name == "photo.jpg"]  # fmt: skip
    photo.path.unlink()
    photo.path.symlink_to(linked.parent / "outside" / "secret.jpg")

    read = read_image(photo.path, max_bytes=100, within=photo.within)

    assert isinstance(read, Result) and read.error == "outside_folder"


def test_a_file_swapped_out_and_back_around_the_open_is_not_read(
    linked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the check on the open descriptor is for: the name points out only while it is opened."""
    photo = linked / "photo.jpg"
    [walked] = [item for item in input_paths([str(linked)], recursive=False, stdin=io.BytesIO())
                if item.path == photo]  # fmt: skip
    real_open = os.open

    def swapping_open(path: str | bytes | os.PathLike[str], flags: int, *args: int) -> int:
        if Path(os.fsdecode(path)) != photo:
            return real_open(path, flags, *args)
        photo.unlink()
        photo.symlink_to(linked.parent / "outside" / "secret.jpg")
        descriptor = real_open(path, flags, *args)
        photo.unlink()
        photo.write_bytes(b"photo")
        return descriptor

    monkeypatch.setattr(os, "open", swapping_open)

    read = read_image(walked.path, max_bytes=100, within=walked.within)

    assert isinstance(read, Result) and read.error == "outside_folder"
