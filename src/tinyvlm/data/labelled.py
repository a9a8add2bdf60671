"""The labelled and the unlabelled training images: LLaVA-MoD's regime in miniature.

The teacher learns from every training image; the student (and its SFT ablation) sees the
answers of a small seeded share of them. The split is by image, so every question about an
image falls on the same side, and it is drawn over the whole training file, so stages that
keep different question types (a curriculum) see the same images. The unlabelled side keeps
its questions without their answers: the teacher's distribution is the only target there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tinyvlm.data.conversation import Conversation

UNANSWERED = ""  # the answer of every turn of the unlabelled split


def image_key(conv: Conversation) -> str:
    return "\n".join(str(i) for i in conv.images) or conv.id


def labelled_images(convs: Sequence[Conversation], fraction: float, seed: int) -> set[str]:
    """The labelled share of the images of `convs`: round(fraction * n) of them, at least
    one, drawn with `seed` from the images in sorted order (the file's order does not
    matter)."""
    keys = sorted({image_key(c) for c in convs})
    if fraction >= 1:
        return set(keys)
    count = min(len(keys), max(1, round(fraction * len(keys))))
    return set(random.Random(f"labelled/{seed}").sample(keys, count))


def split_labelled(convs: Sequence[Conversation], fraction: float, seed: int
                   ) -> tuple[list[Conversation], list[Conversation]]:
    """(labelled, unlabelled) conversations, disjoint by image; the unlabelled side carries
    no answers (`without_answers`)."""
    keep = labelled_images(convs, fraction, seed)
    labelled = [c for c in convs if image_key(c) in keep]
    return labelled, without_answers([c for c in convs if image_key(c) not in keep])


def without_answers(convs: Sequence[Conversation]) -> list[Conversation]:
    """The conversations with every answer removed and each turn marked unlabelled."""
    return [Conversation(c.id, c.images, [(q, UNANSWERED) for q, _ in c.turns],
                         [{**m, "labelled": False} for m in (c.meta or [{}] * len(c.turns))],
                         c.source, c.system)
            for c in convs]


def is_labelled(conv: Conversation) -> bool:
    return not any(m.get("labelled") is False for m in conv.meta)
