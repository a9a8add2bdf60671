"""Connectors condition the language model on what the vision encoder saw.

A connector takes a VisionOutput and returns a VisualConditioning: visual tokens written where
the image tokens stand (`num_tokens` per image; today's MLP projector), and/or per-image
low-rank deltas of named language-model projections (perceptual weights). Each kind registers
in CONNECTORS and reports its own parameters, FLOPs and tokens per image from a config, so
the cost tables need no second registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tinyvlm.config import ConnectorConfig, LanguageConfig, ModelConfig, VisionConfig
from tinyvlm.models.context import VisualConditioning
from tinyvlm.models.layers import init_weights
from tinyvlm.models.vision import VisionOutput


@dataclass(frozen=True)
class ConnectorCost:
    params: int
    flops_per_image: int  # 2 per multiply-accumulate
    tokens_per_image: int  # visual tokens it puts in the language model's sequence
    # FLOPs it adds to every token the language model computes (weight deltas' paths)
    lm_flops_per_token: int = 0


class Connector(nn.Module):
    num_tokens: int  # visual tokens per image in the language model's sequence

    def forward(self, vision: VisionOutput) -> VisualConditioning:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def cost(cls, config: ModelConfig) -> ConnectorCost:  # pragma: no cover - interface
        raise NotImplementedError


class MLPProjector(Connector):
    """LLaVA-1.5's two-layer MLP: one output token per patch."""

    def __init__(self, config: ConnectorConfig, vision: VisionConfig, language: LanguageConfig):
        super().__init__()
        hidden = config.hidden_dim or language.dim
        self.fc1 = nn.Linear(vision.dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, language.dim)
        self.num_tokens = vision.feature_tokens
        # The language model's rotary positions reach only its attention scores, never the
        # values it reads from a visual token; a learned vector per patch puts the patch's place
        # into what is read, so "where is it" is as easy to retrieve as "what colour is it".
        self.position = (nn.Parameter(torch.empty(vision.num_patches, language.dim))
                         if config.position == "learned" else None)
        init_weights(self)
        if self.position is not None:
            nn.init.normal_(self.position, std=0.02)

    def forward(self, vision: VisionOutput) -> VisualConditioning:
        tokens = self.fc2(self.act(self.fc1(vision.features)))
        if self.position is not None:  # a leading [CLS] feature gets no place vector
            lead = tokens.shape[1] - self.position.shape[0]
            tokens = tokens + nn.functional.pad(self.position, (0, 0, lead, 0))
        return VisualConditioning(tokens=tokens)

    @classmethod
    def cost(cls, config: ModelConfig) -> ConnectorCost:
        hidden = config.connector.hidden_dim or config.language.dim
        dv, dl = config.vision.dim, config.language.dim
        tokens = config.vision.feature_tokens
        position = config.vision.num_patches * dl if config.connector.position == "learned" else 0
        return ConnectorCost(dv * hidden + hidden + hidden * dl + dl + position,
                             tokens * 2 * (dv * hidden + hidden * dl), tokens)


CONNECTORS: dict[str, type[Connector]] = {
    "mlp": MLPProjector,
}


def connector_class(kind: str) -> type[Connector]:
    if kind not in CONNECTORS:
        raise ValueError(f"unknown connector kind {kind!r}; known: {sorted(CONNECTORS)}")
    return CONNECTORS[kind]


def build_connector(config: ConnectorConfig, vision: VisionConfig,
                    language: LanguageConfig) -> Connector:
    return connector_class(config.kind)(config, vision, language)  # type: ignore[call-arg]
