"""Prompt templates per benchmark, read from YAML data files (src/tinyvlm/prompts/).

A template is a list of `parts`, each a format string over the item's fields (question, hint,
options, images, ...), joined by `join` (default a newline). A part that names a field the
item lacks or has empty is left out, so one template serves rows with and without a hint.
`{options}` renders each (letter, text) pair with `option`; `{images}` is one `<image>` per
image. A directory given with --templates overrides the built-in files by name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyvlm.data.conversation import IMAGE
from tinyvlm.errors import InputError
from tinyvlm.schema import load_yaml

BUILTIN = Path(__file__).resolve().parent.parent / "prompts"
_KEYS = {"parts", "join", "option", "max_new_tokens"}


@dataclass(frozen=True)
class Template:
    name: str
    parts: tuple[str, ...]
    join: str = "\n"
    option: str = "{letter}. {text}"
    max_new_tokens: int = 8
    source: str = ""

    def render(self, fields: dict[str, Any]) -> str:
        values = dict(fields)
        options = values.get("options") or []
        values["options"] = "\n".join(self.option.format(letter=k, text=v) for k, v in options)
        values["images"] = "\n".join([IMAGE] * int(values.get("images") or 0))
        kept = []
        for part in self.parts:
            names = [f for _, f, _, _ in string.Formatter().parse(part) if f]
            if all(values.get(n) not in (None, "") for n in names):
                kept.append(part.format_map(values))
        return self.join.join(kept)


def load_template(name: str, override_dir: str | Path | None = None) -> Template:
    """The template `name` from `override_dir` if it has `name`.yaml, else the built-in one."""
    path = BUILTIN / f"{name}.yaml"
    if override_dir is not None and (Path(override_dir) / f"{name}.yaml").is_file():
        path = Path(override_dir) / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"no prompt template for benchmark '{name}'", path)
    raw = load_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("parts"), list) or not all(
            isinstance(p, str) for p in raw["parts"]):
        raise InputError("a template needs 'parts': a list of strings", path)
    for part in raw["parts"]:
        try:
            list(string.Formatter().parse(part))
        except ValueError as e:
            raise InputError(f"bad format string {part!r} ({e})", path) from None
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise InputError(f"unknown template keys {unknown} (known: {sorted(_KEYS)})", path)
    try:
        template = Template(name, tuple(raw["parts"]), str(raw.get("join", "\n")),
                            str(raw.get("option", "{letter}. {text}")),
                            int(raw.get("max_new_tokens", 8)), str(path))
    except (TypeError, ValueError) as e:
        raise InputError(f"bad template value ({e})", path) from None
    if template.max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {template.max_new_tokens}", path)
    return template
