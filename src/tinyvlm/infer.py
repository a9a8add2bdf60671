"""The inference engine: requests in, texts out.

A request is a conversation whose last user turn is the question (earlier turns are history),
or chat messages; images may be paths, bytes or PIL images. The engine tokenizes with the
model's chat format, groups prompts into left-padded batches (sorted by length, so padding
stays short, unless sampling must see them in order), generates with the KV cache and returns
each prompt's answer. A per-batch callback lets callers cache results as they come; a per-text
callback streams each row's text as it grows; stop strings end a row early. The evaluation
harness, preference-pair sampling and `tinyvlm generate` all go through `Engine.generate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tinyvlm.cpu_share import CpuShare, share_restored
from tinyvlm.data.collate import Batch
from tinyvlm.data.conversation import IMAGE, Conversation, Turn, place_images
from tinyvlm.data.images import ImageStore
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.progress import Progress


@dataclass
class Prompt:
    """A tokenized prompt: ids ending where the answer begins, and its images."""

    ids: list[int]
    images: list[Any]
    extra: Any = None  # what else the model's engine reads (a rendered chat template)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # a row ends at the first of these in its text (cut off)

    def __post_init__(self) -> None:
        problems = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "max_new_tokens must be >= 1", self.max_new_tokens),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             "temperature must be a finite number >= 0", self.temperature),
            (math.isfinite(self.top_p) and 0 < self.top_p <= 1, "top_p must lie in (0, 1]",
             self.top_p),
        ]
        for ok, rule, value in problems:
            if not ok:
                raise InputError(f"{rule}, got {value!r}")


OnBatch = Callable[[list[int], list[str], float], None]  # (prompt indices, texts, seconds)
OnText = Callable[[int, str], None]  # (prompt index, the text so far)


def conversation_from_messages(messages: Sequence[Mapping[str, Any]],
                               images: Sequence[Any] = ()) -> Conversation:
    """Chat messages ({role, content}) as a conversation ending with the user's question.

    content is a string or a list of parts: {"type": "text", "text": ...} and
    {"type": "image"} (the next of `images`; `<image>` stands where it stood). A system message
    is put before the first user message. Missing placeholders go before the first message,
    one per image."""
    system, turns, user = "", [], None
    for i, m in enumerate(messages):
        role, text = m.get("role"), _message_text(m.get("content"), i)
        if role == "system":
            system = f"{system}{text}\n"
        elif role == "user" and user is None:
            user = text
        elif role == "assistant" and user is not None:
            turns.append((user, text))
            user = None
        else:
            raise InputError(f"message {i}: expected alternating user and assistant messages "
                             "ending with a user message")
    if user is None:
        raise InputError("the last message must be the user's")
    users = [u for u, _ in turns] + [user]
    try:
        users = place_images(users, len(images))
    except ValueError as e:
        raise InputError(str(e)) from None
    return Conversation("request", list(images),
                        [(u, a) for u, (_, a) in zip(users, turns, strict=False)]
                        + [(users[-1], "")], system=system.removesuffix("\n"))


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"message {index}: content must be a string or a list of parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            parts.append(str(part.get("text", "")))
        elif kind in ("image", "image_url"):
            parts.append(IMAGE)
        else:
            raise InputError(f"message {index}: unknown content part {part!r}")
    return "\n".join(parts)


class Engine:
    """Batched generation for one model."""

    def __init__(self, model: TinyVLM, batch_size: int = 16):
        if model.tokenizer is None:
            raise InputError("the model has no tokenizer")
        if batch_size < 1:
            raise InputError(f"the batch size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, model.tokenizer, batch_size
        self.images = ImageStore.for_model(model.config.vision)
        self._share: CpuShare | None = None  # threads follow the cores others leave free

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_seq_len(self) -> int:
        return self.model.config.language.max_seq_len

    def encode(self, history: Sequence[Turn], question: str, images: Sequence[Any],
               system: str = "") -> Prompt:
        return Prompt(self.tokenizer.encode_prompt(history, question, self.model.image_tokens,
                                                   system), list(images))

    def encode_conversation(self, conv: Conversation) -> Prompt:
        return self.encode(conv.turns[:-1], conv.question, conv.images, conv.system)

    def batch(self, prompts: Sequence[Prompt]) -> Batch:
        """A left-padded generation batch of `prompts`, in their order."""
        return Batch.from_rows([p.ids for p in prompts], self.tokenizer.pad_id, side="left",
                               pixel_values=self.images.pixels([i for p in prompts
                                                                for i in p.images]),
                               images_per_row=[len(p.images) for p in prompts])

    def prepare(self, prompts: Sequence[Prompt]) -> Any:
        """The model's inputs for a batch of prompts (images loaded), on its device."""
        return self.batch(prompts).to(self.device)

    def tokens(self, batch: Any, sampling: Sampling, generator: torch.Generator | None,
               on_step: Callable[[torch.Tensor], Any] | None) -> list[list[int]]:
        """Each prompt's new tokens (padded after its end token). prepare and tokens are
        the model's own steps, which an adapter for another kind of model replaces."""
        return self.model.generate(
            batch.input_ids, batch.attention_mask, batch.pixel_values,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, generator=generator, image_rows=batch.image_rows,
            on_step=on_step).tolist()

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling = Sampling(),
                 generator: torch.Generator | None = None, sort_by_length: bool = True,
                 on_batch: OnBatch | None = None, on_text: OnText | None = None,
                 progress: bool = False, cancel: Callable[[int], bool] | None = None,
                 counts: list[int] | None = None) -> list[str]:
        """Answers for `prompts`, in their order.

        sort_by_length groups prompts of similar length (the results do not depend on it for
        greedy decoding); sampling with a seeded `generator` keeps the given order so that the
        same inputs draw the same samples. cancel(i) true ends prompt i's row at the next
        step (a client that went away); `counts`, when given, receives each prompt's number
        of generated tokens (its end token included)."""
        order = (sorted(range(len(prompts)), key=lambda i: (len(prompts[i].ids), i))
                 if sort_by_length else list(range(len(prompts))))
        answers: list[str] = [""] * len(prompts)
        self.model.eval()
        bar = Progress(len(order), "generate", "q", enabled=progress, leave=False)
        share = getattr(self, "_share", None)  # engines built without __init__ have none
        if share is None:
            share = self._share = CpuShare(enabled=self.device.type == "cpu")
        with share_restored(share):  # the thread count it started with, whatever happens
            for start in range(0, len(order), self.batch_size):
                share.tick()
                chunk = order[start : start + self.batch_size]
                texts, seconds, made = self._run(
                    [prompts[i] for i in chunk], sampling, generator,
                    None if on_text is None else
                    lambda row, text, chunk=chunk: on_text(chunk[row], text),
                    None if cancel is None else lambda row, chunk=chunk: cancel(chunk[row]))
                if counts is not None:
                    counts.extend([0] * (len(prompts) - len(counts)))
                    for i, n in zip(chunk, made, strict=True):
                        counts[i] = n
                for i, text in zip(chunk, texts, strict=True):
                    answers[i] = text
                if on_batch is not None:
                    on_batch(chunk, texts, seconds)
                bar.update(len(chunk))
        bar.close()
        return answers

    def check_length(self, prompt: Prompt, max_new_tokens: int) -> None:
        limit = self.max_seq_len
        if len(prompt.ids) + max_new_tokens > limit:
            raise InputError(f"a prompt of {len(prompt.ids)} tokens and {max_new_tokens} new "
                             f"tokens exceed the model's max_seq_len {limit}")

    def _run(self, prompts: Sequence[Prompt], sampling: Sampling,
             generator: torch.Generator | None,
             on_text: Callable[[int, str], None] | None,
             cancel: Callable[[int], bool] | None = None
             ) -> tuple[list[str], float, list[int]]:
        """One batch: its texts, the seconds generation took (images loaded before) and the
        tokens each row generated."""
        for p in prompts:
            self.check_length(p, sampling.max_new_tokens)
        tok = self.tokenizer
        stream = _Stream(tok, len(prompts), sampling.stop, on_text, cancel) \
            if sampling.stop or on_text is not None or cancel is not None else None
        inputs = self.prepare(prompts)
        tick = time.perf_counter()
        with torch.inference_mode():
            new = self.tokens(inputs, sampling, generator,
                              None if stream is None else stream.step)
        seconds = time.perf_counter() - tick
        texts = [tok.decode_answer(row) for row in new]
        made = [_generated(row, tok) for row in new]
        return (texts if not sampling.stop else [_cut(t, sampling.stop) for t in texts]), \
            seconds, made


class _Stream:
    """Decodes each row after every step: streams its text and finds stop strings."""

    def __init__(self, tokenizer: Any, rows: int, stop: Sequence[str],
                 on_text: Callable[[int, str], None] | None,
                 cancel: Callable[[int], bool] | None = None):
        self.tokenizer, self.stop, self.on_text = tokenizer, tuple(stop), on_text
        self.cancel = cancel
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows
        self.ends = {tokenizer.end_id, *getattr(tokenizer, "stop_ids", ()),
                     *getattr(tokenizer, "end_ids", ())}

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        for row, token in enumerate(tokens.tolist()):
            if self.done[row]:
                continue
            if self.cancel is not None and self.cancel(row):
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            if token in self.ends:
                self.done[row] = True
                continue
            text = self.tokenizer.decode_answer(self.tokens[row])
            if self.on_text is not None:
                self.on_text(row, _cut(text, self.stop))
            if any(s in text for s in self.stop):
                self.done[row] = True
        return torch.tensor(self.done)


def _generated(row: Sequence[int], tokenizer: Any) -> int:
    """Tokens a row generated: up to and including its first end token."""
    ends = {tokenizer.end_id, *getattr(tokenizer, "stop_ids", ()),
            *getattr(tokenizer, "end_ids", ())}
    for i, token in enumerate(row):
        if token in ends:
            return i + 1
    return len(row)


def _cut(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the first occurrence of any stop string."""
    ends = [i for s in stop if s and (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def answer(model: TinyVLM, prompt: str, images: Sequence[Any] = (),
           sampling: Sampling = Sampling(), seed: int = 0) -> str:
    """One answer to one prompt about `images` (placeholders added in front when the prompt
    has none): what `tinyvlm generate` prints."""
    try:
        (prompt,) = place_images([prompt], len(images))
    except ValueError as e:
        raise InputError(f"the prompt has {e}") from None
    engine = Engine(model, batch_size=1)
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    conv = Conversation("prompt", list(images), [(prompt, "")])
    return engine.generate([engine.encode_conversation(conv)], sampling, generator)[0]
