"""Answer normalisation shared by scoring, baselines and preference-pair ranking."""

from __future__ import annotations

_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, drop trailing '.', '!', '?' and surrounding quotes.

    Repeated until nothing changes, so '"Yes."', '"yes".' and ' Yes! ' all become 'yes'.
    Only a matching pair of quotes is removed: a lone apostrophe is part of the answer.
    """
    text = " ".join(text.lower().split())
    while True:
        before = text
        text = text.rstrip(".!? ").strip()
        if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text
