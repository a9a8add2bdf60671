"""Conversations and the `<image>` placeholder rules, in one place.

A conversation is a list of (user, assistant) turns plus its images, in the order their
`<image>` placeholders appear. Every rule about placeholders lives here: reading an `image`
field, adding the placeholders a record leaves out, and moving the placeholders of turns that
are dropped (a filtered curriculum, a history too long for the context, a probe asked on its
own) so that every image keeps its place in the sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinyvlm.config import ChatFormat

IMAGE = ChatFormat.image  # "<image>": the chat format's placeholder, spelled once
IMAGE_PLACEHOLDER = IMAGE  # the earlier name

Turn = tuple[str, str]  # (user message, assistant answer)


@dataclass
class Conversation:
    """One LLaVA record: images and alternating user/assistant turns."""

    id: str
    images: list[Any]  # paths (bytes or PIL images for requests made in memory)
    turns: list[Turn]
    meta: list[dict[str, Any]] = field(default_factory=list)  # one entry per turn, if given
    source: str = ""  # "file:record" for error messages
    # A system message: a chat template renders it as its own; the native format puts it
    # before the first user message.
    system: str = ""

    @property
    def question(self) -> str:
        return self.turns[-1][0]

    @property
    def answer(self) -> str:
        return self.turns[-1][1]


def image_field(value: Any) -> list[str] | None:
    """An `image` field (a path, a list of paths, or null) as a list; None when malformed."""
    names = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def count_images(texts: Sequence[str]) -> int:
    return sum(t.count(IMAGE) for t in texts)


def prepend_images(text: str, count: int) -> str:
    """`text` after `count` placeholders, one per line."""
    return (IMAGE + "\n") * count + text


def place_images(users: Sequence[str], images: int, missing: str = "each") -> list[str]:
    """The user messages with placeholders for `images` images.

    When no message has a placeholder, they are added before the first message: one per
    image with missing="each" (prompts typed at a terminal, TRL / RLAIF-V pairs), or only for
    a single image with missing="single" (LLaVA's loader: several images need explicit
    placeholders). Raises ValueError when the counts then differ."""
    users = list(users)
    placeholders = count_images(users)
    if images and placeholders == 0 and users and (missing == "each" or images == 1):
        users[0] = prepend_images(users[0], images)
        placeholders = images
    if placeholders != images:
        raise ValueError(f"{placeholders} {IMAGE} placeholders for {images} images")
    return users


def drop_oldest(history: Sequence[Turn], prompt: str,
                fits: Callable[[list[Turn], str], bool]) -> tuple[list[Turn], str]:
    """Drop the oldest turns until `fits(history, prompt)`; the placeholders of a dropped turn
    move to the next one (or the prompt). ValueError when even the prompt alone does not fit."""
    history = list(history)
    while not fits(history, prompt):
        if not history:
            raise ValueError("too long for the model's max_seq_len, even without history")
        images = history[0][0].count(IMAGE)
        history = history[1:]
        if history:
            history[0] = (prepend_images(history[0][0], images), history[0][1])
        else:
            prompt = prepend_images(prompt, images)
    return history, prompt


def keep_turns(conv: Conversation, types: set[str]) -> Conversation | None:
    """The conversation with only the turns whose meta type is in `types` (None if none is
    left); image placeholders of dropped turns move to the first kept turn."""
    if not conv.meta:
        return None
    kept = [i for i, m in enumerate(conv.meta) if m.get("type") in types]
    if not kept:
        return None
    images = count_images([conv.turns[i][0] for i in range(len(conv.turns)) if i not in kept])
    turns = [conv.turns[i] for i in kept]
    turns[0] = (prepend_images(turns[0][0], images), turns[0][1])
    return Conversation(conv.id, conv.images, turns, [conv.meta[i] for i in kept], conv.source)


def filter_types(convs: Sequence[Conversation], types: Sequence[str]) -> list[Conversation]:
    """Only the turns of `types` (a curriculum's question types; empty: everything)."""
    if not types:
        return list(convs)
    wanted = set(types)
    return [c for c in (keep_turns(c, wanted) for c in convs) if c is not None]


def standalone(history: Sequence[Turn], question: str) -> str:
    """A question asked without its history: the history's placeholders move into it."""
    return prepend_images(question, count_images([u for u, _ in history]))
