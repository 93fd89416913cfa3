"""MkDocs hooks: the record contract (schemas/README.md) as the page contract.md, and links to the
repository's own files.

The pages also read on GitHub, so they link the repository's files as GitHub resolves them
(`../core/settings.py`, `../schemas/README.md#headers`). The site holds docs/ alone, so here:
- a link to schemas/README.md becomes a link to contract.md, its anchor kept (mkdocs validates it);
- a link into docs/ from the contract becomes a link between pages (mkdocs validates it);
- a link to any other file of the repository must name a file or folder that exists, or the build fails,
  and becomes its text: the site has no copy of the source tree to link to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CONTRACT_PAGE = "contract.md"
CONTRACT_SOURCE = REPO / "schemas" / "README.md"
# [text](target), not an image; the text may hold one level of brackets.
LINK = re.compile(r"(?<!!)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def on_files(files: Files, *, config: Any) -> Files:
    files.append(File.generated(config, CONTRACT_PAGE, content=CONTRACT_SOURCE.read_text()))
    return files


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Files) -> str:
    src_uri: str = page.file.src_uri
    source = CONTRACT_SOURCE if src_uri == CONTRACT_PAGE else DOCS / src_uri
    page_dir = PurePosixPath(src_uri).parent
    # A link may span lines; fenced code is left as it is.
    out: list[str] = []
    prose: list[str] = []
    in_fence = False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            if not in_fence:
                out.append(_rewrite("".join(prose), source, page_dir, src_uri))
                prose = []
            in_fence = not in_fence
            out.append(line)
        elif in_fence:
            out.append(line)
        else:
            prose.append(line)
    out.append(_rewrite("".join(prose), source, page_dir, src_uri))
    return "".join(out)


def _rewrite(prose: str, source: Path, page_dir: PurePosixPath, src_uri: str) -> str:
    def replace(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        fragment = f"#{anchor}" if anchor else ""
        resolved = Path(os.path.normpath(source.parent / path))
        if resolved == CONTRACT_SOURCE:
            return f"[{text}]({_relative(PurePosixPath(CONTRACT_PAGE), page_dir)}{fragment})"
        if resolved.is_relative_to(DOCS):
            docs_path = PurePosixPath(resolved.relative_to(DOCS).as_posix())
            return f"[{text}]({_relative(docs_path, page_dir)}{fragment})"
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            raise PluginError(f"{src_uri}: the link {target!r} names no file of the repository")
        return text

    return LINK.sub(replace, prose)


def _relative(target: PurePosixPath, page_dir: PurePosixPath) -> str:
    ups = len(page_dir.parts)
    return "../" * ups + target.as_posix()
