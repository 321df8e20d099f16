"""MkDocs hook: typeset the pages' TeX as MathML at build time, so the site needs no math script.

pymdownx.arithmatex (generic mode) marks ``$...$`` and ``$$...$$`` as
``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``. A
browser-side typesetter would have to be fetched from a CDN or vendored; browsers render MathML
themselves, so this hook converts each marked formula with latex2mathml (the ``docs`` extra). Without
latex2mathml the TeX source is left in place, still readable, and the build says so once.
"""

from __future__ import annotations

import html
import logging
import re

try:
    from latex2mathml.converter import convert as _convert
except ImportError:  # the TeX stays as written
    _convert = None

log = logging.getLogger("mkdocs.hooks.mathml")
_SPAN = re.compile(r'<(span|div) class="arithmatex">\s*\\[(\[](.*?)\\[)\]]\s*</\1>', re.DOTALL)
_warned = False


def _mathml(match: re.Match[str]) -> str:
    tag, tex = match.group(1), html.unescape(match.group(2))
    display = "block" if tag == "div" else "inline"
    try:
        return _convert(tex, display=display)
    except Exception as exc:  # noqa: BLE001 - latex2mathml raises bare exceptions on TeX it cannot parse
        raise ValueError(f"latex2mathml cannot typeset {tex!r}: {exc}") from exc


def on_page_content(html_text: str, page, **kwargs) -> str:
    global _warned
    if 'class="arithmatex"' not in html_text:
        return html_text
    if _convert is None:
        if not _warned:
            log.info("latex2mathml is not installed: formulas are shown as TeX (pip install 'labelsmooth[docs]')")
            _warned = True
        return html_text
    return _SPAN.sub(_mathml, html_text)
