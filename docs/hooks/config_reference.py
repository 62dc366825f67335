"""MkDocs hook: the config reference page (config.md) is generated from the config schema at
every build (``fedfm.config.reference``), so it cannot drift from the code."""

from __future__ import annotations

import fedfm  # noqa: F401  (registers fedfm's plug-ins, whose keys and names the page lists)
from fedfm.config.reference import reference_markdown


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "config.md":
        return reference_markdown()
    return markdown
