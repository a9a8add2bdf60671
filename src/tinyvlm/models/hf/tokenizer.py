"""Hugging Face tokenizer directories <-> tinyvlm's Tokenizer.

Reads tokenizer.json (the `tokenizers` backend), the special tokens of
tokenizer_config.json and the chat template (tokenizer_config.json, chat_template.jinja or
a processor's chat_template.json). Writes the same files for a tinyvlm tokenizer; its native
layout becomes a chat template that renders exactly the ids tinyvlm trains on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from tinyvlm.config import ChatFormat
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.io import read_json

# The native layout as a template: <bos><|user|>text<|end|><|assistant|>answer<|end|>...
NATIVE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ user_token }}"
    "{% if m['content'] is string %}{% for piece in m['content'].split(image_token) %}"
    "{% if not loop.first %}{{ image_token }}{% endif %}"
    "{{ piece | trim }}{% endfor %}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image_token }}{% else %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ end_token }}{{ assistant_token }}"
    "{% elif m['role'] == 'assistant' %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
    "{{ end_token }}{% endif %}{% endfor %}"
)


def _token(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value or ""


def read_template(directory: Path, config: dict[str, Any]) -> str:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if not template and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text()
    if not template and (directory / "chat_template.json").is_file():
        template = read_json(directory / "chat_template.json").get("chat_template")
    return template or ""


def load_tokenizer(directory: Path, image_token: str | None = None,
                   template: str | None = None) -> Tokenizer:
    """The tokenizer of an HF directory; `image_token` is added as a special token when the
    vocabulary lacks it (a language model becoming a VLM)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise InputError("tokenizer.json is missing (only fast tokenizers are read)", directory)
    backend = Backend.from_file(str(path))
    cfg_path = directory / "tokenizer_config.json"
    config = read_json(cfg_path) if cfg_path.is_file() else {}
    template = template or read_template(directory, config)
    if not template:
        raise InputError("the tokenizer has no chat template (give one with --chat-template)",
                         directory)
    image = image_token or "<image>"
    if backend.token_to_id(image) is None:
        backend.add_special_tokens([AddedToken(image, special=True, normalized=False)])
    eos = _token(config.get("eos_token"))
    if not eos or backend.token_to_id(eos) is None:
        raise InputError("tokenizer_config.json names no eos_token in the vocabulary",
                         directory)
    pad = _token(config.get("pad_token"))
    bos = _token(config.get("bos_token"))
    unk = _token(config.get("unk_token"))
    end, stop = answer_end(directory, backend, template, eos, bos)
    def known(token: str) -> str:
        return token if token and backend.token_to_id(token) is not None else ""

    chat = ChatFormat(bos=known(bos), pad=known(pad) or eos, unk=known(unk), image=image,
                      user="", assistant="", end=end, template=template, eos=eos, stop=stop)
    return Tokenizer.create(backend, chat)


def answer_end(directory: Path, backend: Backend, template: str, eos: str, bos: str
               ) -> tuple[str, list[str]]:
    """(the token that ends an answer, the other tokens that end generation). The candidates
    are the tokenizer's eos and generation_config.json's eos ids; the end is the one the
    template writes after an assistant message (Llama 3: <|eot_id|>, not <|end_of_text|>)."""
    from tinyvlm.data import chat_template

    candidates = [eos]
    gen = directory / "generation_config.json"
    if gen.is_file():
        ids = read_json(gen).get("eos_token_id")
        for i in ids if isinstance(ids, list) else [ids] if ids is not None else []:
            token = backend.id_to_token(int(i))
            if token is not None and token not in candidates:
                candidates.append(token)
    messages = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    if chat_template.uses_content_parts(template):
        messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                    for m in messages]
    try:
        text = chat_template.render(template, messages, False,
                                    {"bos_token": bos, "eos_token": eos})
    except InputError:
        text = ""
    after = text[text.rfind("pong") + 4:] if "pong" in text else ""
    found = sorted((after.find(t), t) for t in candidates if t and t in after)
    end = found[0][1] if found else eos
    return end, [t for t in candidates if t != end]


def tokenizer_files(tokenizer: Tokenizer) -> dict[str, Any]:
    """tokenizer_config.json for a tinyvlm tokenizer (the backend is written as is)."""
    chat = tokenizer.chat
    template = chat.template or (
        NATIVE_TEMPLATE.replace("{{ user_token }}", chat.user)
        .replace("{{ assistant_token }}", chat.assistant)
        .replace("{{ end_token }}", chat.end).replace("image_token", repr(chat.image)))
    specials = {"bos_token": chat.bos, "eos_token": chat.eos or chat.end, "pad_token": chat.pad,
                "unk_token": chat.unk}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
            "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False,
            **{k: v for k, v in specials.items() if v},
            "extra_special_tokens": {"image_token": chat.image}}
