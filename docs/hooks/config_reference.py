"""MkDocs hooks: the config reference page (config.md) is generated from the config schema at
every build (``fedfm.config.reference``), so it cannot drift from the code; the Sphinx roles of
the docstrings (``:class:`~fedfm.X```) that the API reference shows become plain code."""

from __future__ import annotations

import re

import fedfm  # noqa: F401  (registers fedfm's plug-ins, whose keys and names the page lists)
from fedfm.config.reference import reference_markdown

_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):<code>~?([^<]+)</code>")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "config.md":
        return reference_markdown()
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    return _ROLE.sub(r"<code>\1</code>", html)
