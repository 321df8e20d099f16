"""Griffe extension: read our docstrings' three Sphinx-isms the way their authors meant them.

The docstrings are Google style, but (1) they head their runnable examples ``Example:``, which Google
style allows and griffe's Google parser does not know (it would render the ``>>>`` lines as prose), and
(2) they cross-reference with Sphinx roles (``:func:`symmetric```), which Markdown shows verbatim, and
(3) module constants are documented in ``#:`` comments, which griffe does not read. This
extension runs once the package is loaded, before any docstring is parsed, and rewrites both: the
heading becomes ``Examples:`` and each role becomes an optional cross-reference, a link when the target
is documented somewhere on the site and plain code otherwise (so the strict build never fails on one);
a constant without a docstring gets its ``#:`` comment as one.
The source files are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`~?([A-Za-z_][\w.]*)(?:\(\))?`")


def _exists(root: griffe.Module, path: str) -> bool:
    head, _, rest = path.partition(".")
    if head != root.name:
        return False
    if not rest:
        return True
    try:
        root[rest]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True


def _target(root: griffe.Module, obj: griffe.Object, name: str) -> str | None:
    # Relative names resolve as Sphinx would: the enclosing class, then the object's module.
    scopes = []
    if obj.is_class:
        scopes.append(obj.path)
    elif obj.parent is not None and obj.parent.is_class:
        scopes.append(obj.parent.path)
    scopes.append(obj.module.path)
    candidates = [name] + [f"{scope}.{name}" for scope in scopes]
    return next((c for c in candidates if _exists(root, c)), None)


def _comment_docstring(obj: griffe.Object) -> griffe.Docstring | None:
    # Module constants are documented Sphinx-style, in "#:" comment lines just above the assignment.
    if not obj.is_attribute or obj.lineno is None:
        return None
    lines = obj.module.lines
    i = obj.lineno - 2
    comment: list[str] = []
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        comment.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    if not comment:
        return None
    like = obj.module.docstring
    return griffe.Docstring(" ".join(comment), lineno=i + 2, parent=obj,
                            parser=like.parser if like else None,
                            parser_options=like.parser_options if like else None)


def _rewrite(root: griffe.Module, obj: griffe.Object) -> None:
    if obj.docstring is None:
        obj.docstring = _comment_docstring(obj)
    doc = obj.docstring
    if doc is None:
        return

    def role(match: re.Match[str]) -> str:
        name = match.group(1)
        target = _target(root, obj, name)
        if target is None:
            return f"`{name}`"
        return f'<autoref identifier="{target}" optional><code>{name}</code></autoref>'

    doc.value = _ROLE.sub(role, _EXAMPLE_HEADING.sub(r"\1Examples:", doc.value))


def _walk(obj: griffe.Object, seen: set[str]) -> Any:
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member, seen)


class SphinxisedGoogle(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg, set()):
            _rewrite(pkg, obj)
