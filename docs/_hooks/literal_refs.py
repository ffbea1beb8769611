"""mkdocs hook: a cross-reference written `[`Name`]`, as transformers' docstrings do, renders as literal brackets.

mkdocs-autorefs only links `[`Name`][]` (resolved in the docstring's scope, `scoped_crossrefs`) or
`[`Name`][full.path]`, and strict builds fail on those it cannot resolve. This hook makes strict builds fail on the
bracketed form too, naming the page and the fix.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("mkdocs.hooks.literal_refs")
LITERAL_REF = re.compile(r"\[<code>([\w.]+)</code>\]")


def on_page_content(html: str, page, **kwargs) -> str:
    for name in sorted(set(LITERAL_REF.findall(html))):
        log.warning(f"{page.file.src_path}: literal cross-reference [`{name}`]: write [`{name}`][] to link it")
    return html
