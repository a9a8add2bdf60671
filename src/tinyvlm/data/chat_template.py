"""Jinja chat templates rendered as transformers renders them.

The same environment (trim_blocks, lstrip_blocks, loop controls, a sandbox), the same helpers
(`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML) and the same
variables (`messages`, `add_generation_prompt` and the tokenizer's special tokens), so a
template gives the string transformers' `apply_chat_template` gives for the same messages.
Templates are untrusted code: the sandbox is the immutable one.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from tinyvlm.errors import InputError


@lru_cache(maxsize=16)
def compile_template(source: str) -> Any:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers'
        # assistant masks; rendering it is rendering its body.
        tags = {"generation"}  # noqa: RUF012 - jinja's own attribute

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body
                                          ).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"the chat template does not parse (line {e.lineno}: {e.message})"
                         ) from None


def render(source: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
           special_tokens: dict[str, str]) -> str:
    """The template's text for `messages`; special_tokens are bos_token, eos_token, ... as
    the tokenizer's special-tokens map names them."""
    import jinja2

    try:
        return compile_template(source).render(messages=messages, tools=None, documents=None,
                                               add_generation_prompt=add_generation_prompt,
                                               **special_tokens)
    except jinja2.TemplateError as e:
        raise InputError(f"the chat template failed: {e}") from None


def uses_content_parts(source: str) -> bool:
    """Whether a template reads typed content parts ({"type": "image"} / {"type": "text"},
    as VLM templates do) rather than plain string content."""
    return "'image'" in source or '"image"' in source
