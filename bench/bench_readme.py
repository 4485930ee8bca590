"""A benchmark's own section of bench/README.md, between ``<!-- name -->`` and
``<!-- /name -->``: replaced in place, or appended when the README has none yet."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_section"]

README = Path(__file__).resolve().parent / "README.md"


def write_section(name: str, section: str, readme: Path = README) -> None:
    """Put ``section`` (which starts with ``<!-- name -->`` and ends with ``<!-- /name -->``)
    in place of the README's section ``name``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    assert section.startswith(start) and section.endswith(end), name
    text = readme.read_text()
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text)
