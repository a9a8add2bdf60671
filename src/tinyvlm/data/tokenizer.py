"""Tokenizer (trained with the `tokenizers` library) and the chat format around it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from tinyvlm.config import ChatFormat, TokenizerConfig
from tinyvlm.data import chat_template
from tinyvlm.data.conversation import Turn
from tinyvlm.errors import InputError
from tinyvlm.io import write_text


class Tokenizer:
    """Text <-> ids, plus the chat layout used by training, evaluation and chat alike."""

    def __init__(self, backend: Backend, chat: ChatFormat | None = None):
        # Text is text: a user who types "<|end|><|assistant|>" gets those characters, never
        # the control tokens. The chat format's tokens are placed by the methods below only.
        backend.encode_special_tokens = True
        self.backend = backend
        self.chat = chat or ChatFormat()
        missing = [t for t in self.chat.special_tokens if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the chat template's special tokens {missing}")
        ids = {t: backend.token_to_id(t) for t in self.chat.special_tokens}
        ids[""] = -1  # a token a chat template does without (Qwen2 has no bos)
        self.pad_id, self.bos_id = ids[self.chat.pad], ids[self.chat.bos]
        self.unk_id = ids[self.chat.unk]
        self.image_id, self.user_id = ids[self.chat.image], ids[self.chat.user]
        self.assistant_id, self.end_id = ids[self.chat.assistant], ids[self.chat.end]
        self.special_ids = frozenset(ids.values()) - {-1}
        self.stop_ids = [i for t in self.chat.stop
                         if (i := backend.token_to_id(t)) is not None and i != self.end_id]

    @staticmethod
    def create(backend: Backend, chat: ChatFormat | None = None) -> Tokenizer:
        """The tokenizer for `chat`: the native layout, or a chat template's."""
        if chat is not None and chat.template:
            return TemplateTokenizer(backend, chat)
        return Tokenizer(backend, chat)

    # ---------------------------------------------------------------- building and files

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig | None = None,
              chat: ChatFormat | None = None) -> Tokenizer:
        config, chat = config or TokenizerConfig(), chat or ChatFormat()
        specials = chat.special_tokens
        norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if config.lowercase else [])
        trainer: trainers.Trainer
        if config.kind == "wordlevel":
            backend = Backend(models.WordLevel(unk_token=chat.unk))
            backend.pre_tokenizer = pre_tokenizers.Whitespace()
            trainer = trainers.WordLevelTrainer(vocab_size=config.vocab_size,
                                                min_frequency=config.min_frequency,
                                                special_tokens=specials)
        elif config.kind == "bpe":
            backend = Backend(models.BPE(unk_token=chat.unk))
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=config.vocab_size,
                                          min_frequency=config.min_frequency,
                                          special_tokens=specials,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        else:
            raise InputError(f"tokenizer.kind must be 'wordlevel' or 'bpe', got {config.kind!r}")
        backend.normalizer = normalizers.Sequence(norm)
        # Strip the placeholders from the corpus: they are special tokens, not words.
        cleaned = (_strip_specials(t, specials) for t in texts)
        backend.train_from_iterator(cleaned, trainer=trainer)
        return cls(backend, chat)

    @classmethod
    def load(cls, path: str | Path, chat: ChatFormat | None = None) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise InputError("tokenizer file not found", path)
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # the Rust library raises a plain Exception
            raise InputError(f"not a valid tokenizer.json ({e})", path) from None
        try:
            return cls.create(backend, chat)
        except ValueError as e:
            raise InputError(str(e), path) from None

    def save(self, path: str | Path) -> None:
        write_text(path, self.backend.to_str(pretty=True))

    # ---------------------------------------------------------------- plain text

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special).strip()

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Generated ids as text, up to (not including) the first end-of-turn token."""
        ids = list(ids)
        ends = [ids.index(t) for t in (self.end_id, *self.stop_ids) if t in ids]
        return self.decode(ids[: min(ends)] if ends else ids)

    # ---------------------------------------------------------------- chat template

    def encode_user(self, text: str, image_tokens: int) -> list[int]:
        """A user message with each `<image>` expanded to `image_tokens` image-token ids."""
        ids: list[int] = []
        for i, part in enumerate(text.split(self.chat.image)):
            if i:
                ids.extend([self.image_id] * image_tokens)
            if part.strip():
                ids.extend(self.encode(part.strip()))
        return ids

    def encode_conversation(self, turns: Sequence[Turn], image_tokens: int
                            ) -> tuple[list[int], list[bool]]:
        """Token ids of a whole conversation and, per id, whether it is part of an answer the
        model must learn to produce (answer tokens and their closing end token)."""
        ids, trainable = [self.bos_id], [False]
        for user, answer in turns:
            prompt = [self.user_id, *self.encode_user(user, image_tokens), self.end_id,
                      self.assistant_id]
            reply = [*self.encode(answer), self.end_id]
            ids += prompt + reply
            trainable += [False] * len(prompt) + [True] * len(reply)
        return ids, trainable

    def encode_prompt(self, history: Sequence[Turn], user: str, image_tokens: int,
                      system: str = "") -> list[int]:
        """Ids that end where the assistant's next answer begins; a system message goes
        before the first user message (this format has no system role)."""
        if system:
            if history:
                history = [(f"{system}\n{history[0][0]}", history[0][1]), *history[1:]]
            else:
                user = f"{system}\n{user}"
        ids, _ = self.encode_conversation(history, image_tokens)
        question = self.encode_user(user, image_tokens)
        return [*ids, self.user_id, *question, self.end_id, self.assistant_id]


class TemplateTokenizer(Tokenizer):
    """A Hugging Face tokenizer with its chat template: conversations are rendered by the
    template (the string transformers renders), then tokenised as a transformers processor
    does: the special tokens in the rendered text are parsed, and the tokenizer's own
    post-processing (a Llama bos) applies unless the text already starts with bos. Each
    `<image>` token then expands to the model's image tokens. Answers are the text the
    template adds for an assistant message, up to and including the end token."""

    def __init__(self, backend: Backend, chat: ChatFormat):
        super().__init__(backend, chat)
        # Rendered templates hold control tokens that must parse as such (as in transformers;
        # text a user types that spells one parses as one too).
        backend.encode_special_tokens = False
        self.parts = chat_template.uses_content_parts(chat.template)
        self.template_tokens = {"bos_token": chat.bos, "eos_token": chat.eos or chat.end,
                                "pad_token": chat.pad, "unk_token": chat.unk}
        self.template_tokens = {k: v for k, v in self.template_tokens.items() if v}

    def _message(self, role: str, text: str) -> dict[str, Any]:
        if not self.parts:
            return {"role": role, "content": text}
        content: list[dict[str, str]] = []
        for i, piece in enumerate(text.split(self.chat.image)):
            if i:
                content.append({"type": "image"})
            if piece.strip():
                content.append({"type": "text", "text": piece.strip()})
        return {"role": role, "content": content}

    def render(self, turns: Sequence[Turn], user: str | None = None, system: str = "") -> str:
        """The template's text for `turns` (and a last user message awaiting an answer)."""
        messages = [m for u, a in turns for m in (self._message("user", u),
                                                   self._message("assistant", a))]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        if user is not None:
            messages.append(self._message("user", user))
        return chat_template.render(self.chat.template, messages, user is not None,
                                    self.template_tokens)

    def _tokenize(self, text: str, spans: Sequence[tuple[int, int, bool]], image_tokens: int
                  ) -> tuple[list[int], list[bool]]:
        """Ids and trainable flags; a span (start, stop, closed) that the template does not
        close with the end token gets one after its last token, so the model learns to stop
        (LLaVA-1.5's template ends answers with a space, not with </s>)."""
        bos = self.chat.bos
        enc = self.backend.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
        ids: list[int] = []
        trainable: list[bool] = []
        pending: tuple[int, int, bool] | None = None
        for tid, (start, stop) in zip(enc.ids, enc.offsets, strict=True):
            inside = next((s for s in spans if stop > start and start < s[1] and stop > s[0]),
                          None)
            if pending is not None and inside is not pending:
                ids.append(self.end_id)
                trainable.append(True)
                pending = None
            if tid == self.image_id:
                ids.extend([self.image_id] * image_tokens)
                trainable.extend([False] * image_tokens)
                continue
            ids.append(tid)
            trainable.append(inside is not None)
            if inside is not None and not inside[2]:
                pending = inside
        if pending is not None:
            ids.append(self.end_id)
            trainable.append(True)
        return ids, trainable

    def encode_conversation(self, turns: Sequence[Turn], image_tokens: int
                            ) -> tuple[list[int], list[bool]]:
        text = self.render(turns)
        spans = []
        for i in range(len(turns)):
            prompt = self.render(turns[:i], turns[i][0])
            whole = self.render(turns[: i + 1])
            if not (whole.startswith(prompt) and text.startswith(whole)):
                raise InputError("the chat template renders a conversation differently from "
                                 "its beginning, so answers cannot be located in it")
            stop = whole.find(self.chat.end, len(prompt))
            spans.append((len(prompt), len(whole), False) if stop < 0
                         else (len(prompt), stop + len(self.chat.end), True))
        return self._tokenize(text, spans, image_tokens)

    def encode_prompt(self, history: Sequence[Turn], user: str, image_tokens: int,
                      system: str = "") -> list[int]:
        # History answers are context here, as transformers renders them: no end added.
        return self._tokenize(self.render(history, user, system), (), image_tokens)[0]

    def encode_user(self, text: str, image_tokens: int) -> list[int]:
        raise NotImplementedError("a chat template renders whole conversations")


def _strip_specials(text: str, specials: Sequence[str]) -> str:
    for token in specials:
        text = text.replace(token, " ")
    return text
