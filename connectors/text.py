"""Text helpers every sending connector shares (pure)."""

from __future__ import annotations


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` characters (a platform's message
    size), cut at a line break where one lies in the second half of a part;
    the line breaks at a cut are dropped, and a blank remainder sends nothing."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit)
        cut = cut if cut > 0 else limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    if rest.strip():
        parts.append(rest)
    return parts
