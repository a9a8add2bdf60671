"""Connectors map vision features into the language model's embedding space.

Every connector takes a VisionOutput and returns (images, tokens, lm_dim) features, and says
how many tokens it yields per image; other kinds (token pruning, perceptual weights) register
here behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from tinyvlm.config import ConnectorConfig, LanguageConfig, VisionConfig
from tinyvlm.models.layers import init_weights
from tinyvlm.models.vision import VisionOutput


class Connector(nn.Module):
    num_tokens: int

    def forward(self, vision: VisionOutput) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class MLPProjector(Connector):
    """LLaVA-1.5's two-layer MLP: one output token per patch."""

    def __init__(self, config: ConnectorConfig, vision: VisionConfig, language: LanguageConfig):
        super().__init__()
        hidden = config.hidden_dim or language.dim
        self.fc1 = nn.Linear(vision.dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, language.dim)
        self.num_tokens = vision.num_patches
        init_weights(self)

    def forward(self, vision: VisionOutput) -> Tensor:
        return self.fc2(self.act(self.fc1(vision.patches)))


CONNECTORS: dict[str, Callable[[ConnectorConfig, VisionConfig, LanguageConfig], Connector]] = {
    "mlp": MLPProjector,
}


def build_connector(config: ConnectorConfig, vision: VisionConfig,
                    language: LanguageConfig) -> Connector:
    if config.kind not in CONNECTORS:
        raise ValueError(f"unknown connector kind {config.kind!r}; known: {sorted(CONNECTORS)}")
    return CONNECTORS[config.kind](config, vision, language)
