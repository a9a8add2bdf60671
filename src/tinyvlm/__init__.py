"""tinyvlm: small vision-language models that stay good."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so that `tinyvlm --help` does not wait for torch.
_EXPORTS = {
    "TinyVLM": "tinyvlm.models.vlm",
    "Tokenizer": "tinyvlm.data.tokenizer",
    "ModelConfig": "tinyvlm.config",
    "Recipe": "tinyvlm.config",
    "StageConfig": "tinyvlm.config",
    "load_recipe": "tinyvlm.config",
    "InputError": "tinyvlm.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tinyvlm' has no attribute {name!r}")
