"""MkDocs hook: include a generated block of another file, so that its numbers are never copied by hand.

A page line ``<!-- include-block: PATH NAME -->`` (PATH relative to the repository root) is replaced
by the text between the lines ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` of PATH: the markers
that ``python -m labelsmooth.study.findings DIR --into FILE`` writes around the study's findings.
pymdownx.snippets can include whole files or line ranges, but line numbers move whenever the
surrounding prose changes; the markers do not. A missing file or marker fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

_DIRECTIVE = re.compile(r"^<!-- include-block: (\S+) (\S+) -->$", re.MULTILINE)


def _block(root: Path, path: str, name: str, page: str) -> str:
    source = root / path
    if not source.is_file():
        raise PluginError(f"{page}: include-block names {path}, which does not exist")
    text = source.read_text(encoding="utf-8")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise PluginError(f"{page}: {path} has no block between {start!r} and {end!r}")
    return text[i + len(start):j].strip("\n")


def on_page_markdown(markdown: str, page, config, **kwargs) -> str:
    root = Path(config.config_file_path).resolve().parent
    return _DIRECTIVE.sub(lambda m: _block(root, m.group(1), m.group(2), page.file.src_uri), markdown)
