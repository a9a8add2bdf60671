"""Cheaper perception: perceptual weights (VLoRA) instead of visual tokens, and [CLS]-guided
visual-token pruning before the language model. Both are connectors (models/connectors.py's
contract): VLoRA returns only low-rank deltas of the LM's projections (no visual tokens in
the sequence), pruning returns fewer visual tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvlm.config import (
    ConnectorConfig,
    LanguageConfig,
    ModelConfig,
    PruneConfig,
    VisionConfig,
    VLoRAConfig,
)
from tinyvlm.models.connectors import CONNECTORS, Connector, ConnectorCost, MLPProjector
from tinyvlm.models.context import LowRankDelta, VisualConditioning
from tinyvlm.models.layers import attention, init_weights
from tinyvlm.models.vision import VisionOutput

# A VLoRA type -> the projection it modifies (models/language.py's delta names).
TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "m": "ffn"}


def delta_shape(kind: str, lang: LanguageConfig) -> tuple[int, int]:
    """(d_in, d_out) of the projection a type modifies; k and v are sized for grouped-query
    attention (kv_heads * head_dim outputs), which a d x d delta would not fit."""
    q, kv = lang.heads * lang.head_dim, lang.kv_heads * lang.head_dim
    return {"q": (lang.dim, q), "k": (lang.dim, kv), "v": (lang.dim, kv), "o": (q, lang.dim),
            "m": (lang.dim, lang.dim)}[kind]


def vlora_layers(cfg: VLoRAConfig, depth: int) -> list[int]:
    return [layer for layer in range(depth) if (layer + 1) % cfg.every == 0]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        b, t, d = x.shape

        def split(h: Tensor) -> Tensor:
            return h.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        out = attention(split(self.q(x)), split(self.k(memory)), split(self.v(memory)))
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class GeneratorBlock(nn.Module):
    """Pre-norm decoder block: queries attend to each other, then to the image, then FFN."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.self_attn, self.cross_attn = _Attention(dim, heads), _Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, q: Tensor, image: Tensor) -> Tensor:
        h = self.norm1(q)
        q = q + self.self_attn(h, h)
        q = q + self.cross_attn(self.norm2(q), image)
        return q + self.fc2(F.gelu(self.fc1(self.norm3(q))))


class WeightGenerator(nn.Module):
    """Learned queries (one per modified layer) -> blocks -> a head emitting d_in * rank."""

    def __init__(self, cfg: VLoRAConfig, layers: int, out_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, layers, cfg.dim))
        self.blocks = nn.ModuleList(GeneratorBlock(cfg.dim, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        q = self.queries.expand(image.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, image)
        return self.head(self.norm(q))  # (images, layers, d_in * rank)


class VLoRAConnector(Connector):
    """VLoRA: zero visual tokens; each image gives every modified projection a low-rank
    delta scale * x @ A_image @ B, applied as a parallel path for the whole generation."""

    def __init__(self, config: ConnectorConfig, vision: VisionConfig, language: LanguageConfig):
        super().__init__()
        cfg = config.vlora or VLoRAConfig()
        self.cfg, self.num_tokens = cfg, 0
        self.layers = vlora_layers(cfg, language.depth)
        self.shapes = {t: delta_shape(t, language) for t in cfg.types}
        self.proj = nn.Linear(vision.dim, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(1, vision.feature_tokens, cfg.dim))
        self.generators = nn.ModuleDict({t: WeightGenerator(cfg, len(self.layers),
                                                            self.shapes[t][0] * cfg.rank)
                                         for t in cfg.types})
        init_weights(self)
        nn.init.normal_(self.pos, std=0.02)
        for g in self.generators.values():
            assert isinstance(g, WeightGenerator)
            nn.init.normal_(g.queries, std=0.02)
        # B starts at zero: before training the deltas vanish and the LM is the text-only LM.
        self.b = nn.ParameterDict({t: nn.Parameter(torch.zeros(len(self.layers), cfg.rank,
                                                               self.shapes[t][1]))
                                   for t in cfg.types})
        self.scale = (cfg.alpha if cfg.alpha is not None else cfg.rank) / cfg.rank

    def forward(self, vision: VisionOutput) -> VisualConditioning:
        image = self.proj(vision.features) + self.pos
        deltas = {}
        for t in self.cfg.types:
            d_in, _ = self.shapes[t]
            a = self.generators[t](image).view(image.shape[0], len(self.layers), d_in,
                                               self.cfg.rank)
            for j, layer in enumerate(self.layers):
                deltas[f"language.{layer}.{TARGETS[t]}"] = LowRankDelta(
                    a[:, j], self.b[t][j], self.scale)
        return VisualConditioning(tokens=None, deltas=deltas)

    @classmethod
    def cost(cls, config: ModelConfig) -> ConnectorCost:
        cfg = config.connector.vlora or VLoRAConfig()
        v, lang = config.vision, config.language
        layers = len(vlora_layers(cfg, lang.depth))
        d, p = cfg.dim, v.feature_tokens
        hidden = int(d * cfg.mlp_ratio)
        block = 2 * (4 * d * d + 4 * d) + 3 * 2 * d + 2 * d * hidden + hidden + d
        params = v.dim * d + d + p * d
        flops = 2 * p * v.dim * d
        lm_extra = 0
        for t in cfg.types:
            d_in, d_out = delta_shape(t, lang)
            params += (layers * d + cfg.depth * block + 2 * d + d * d_in * cfg.rank
                       + d_in * cfg.rank + layers * cfg.rank * d_out)
            # Per block: self-attention among the queries, cross-attention (k/v over the
            # image's p features), the FFN; then the head.
            attn_self = 2 * layers * 4 * d * d + 2 * 2 * layers * layers * d
            attn_cross = 2 * (2 * layers * d * d + 2 * p * d * d) + 2 * 2 * layers * p * d
            ffn = 2 * layers * 2 * d * hidden
            flops += cfg.depth * (attn_self + attn_cross + ffn) + 2 * layers * d * d_in * cfg.rank
            lm_extra += layers * 2 * cfg.rank * (d_in + d_out)
        return ConnectorCost(params, flops, 0, lm_extra)


@contextmanager
def merged(model: nn.Module, conditioning: VisualConditioning) -> Iterator[dict[str, object]]:
    """For one image: the attention deltas merged into the weights (W + scale * (A B)^T) for
    the duration; the original weights are restored exactly afterwards. Yields the deltas
    that cannot merge (the FFN map, which runs beside a nonlinear FFN), still to apply."""
    language = getattr(model, "language", model)
    saved: list[tuple[nn.Linear, Tensor]] = []
    rest = {}
    try:
        with torch.no_grad():
            for name, delta in conditioning.deltas.items():
                _, layer, proj = name.split(".")
                if delta.a.shape[0] != 1:
                    raise ValueError("merging needs a single image")
                if proj == "ffn":
                    rest[name] = delta
                    continue
                linear = getattr(language.blocks[int(layer)].attn, proj)
                saved.append((linear, linear.weight.detach().clone()))
                b = delta.b if delta.b.dim() == 2 else delta.b[0]
                linear.weight += delta.scale * (delta.a[0] @ b).t().to(linear.weight.dtype)
        yield rest
    finally:
        with torch.no_grad():
            for linear, weight in saved:
                linear.weight.copy_(weight)


class PruneProjector(MLPProjector):
    """LLaVA's MLP projector on the patches with the highest [CLS] attention (heads averaged,
    summed over `prune.layers`), kept in their original order; with `merge`, the dropped
    patches averaged into one more token. Its weights are the MLP projector's, so a trained
    mlp model prunes without training."""

    def __init__(self, config: ConnectorConfig, vision: VisionConfig, language: LanguageConfig):
        super().__init__(config, vision, language)
        self.cfg: PruneConfig = config.prune or PruneConfig()
        self.keep = self.cfg.count(vision.num_patches)
        self.layers = sorted({i % vision.depth for i in self.cfg.layers or [vision.feature_layer]})
        self.num_tokens = self.keep + int(self.cfg.merge)

    def select(self, vision: VisionOutput) -> Tensor:
        """(images, keep): indices of the kept patches, ascending."""
        missing = [i for i in self.layers if i not in vision.cls_attention]
        if missing:
            raise ValueError(f"prune: no [CLS] attention of ViT layers {missing} (they must "
                             "lie at or before vision.feature_layer)")
        scores = sum(vision.cls_attention[i].float().mean(1) for i in self.layers)
        assert isinstance(scores, Tensor)
        return scores.topk(self.keep, dim=-1).indices.sort(-1).values

    def counts(self, vision: VisionOutput) -> Tensor | None:
        """(images,) patches each image keeps with `mass` (None without): the fewest top
        patches whose [CLS] attention reaches that share of the total, at most `keep`."""
        if self.cfg.mass <= 0:
            return None
        scores = sum(vision.cls_attention[i].float().mean(1) for i in self.layers)
        assert isinstance(scores, Tensor)
        top = scores.sort(-1, descending=True).values
        share = top.cumsum(-1) / top.sum(-1, keepdim=True)
        needed = (share < self.cfg.mass).sum(-1) + 1
        return needed.clamp(1, self.keep)

    def forward(self, vision: VisionOutput) -> VisualConditioning:
        patches = vision.patches
        idx = self.select(vision)
        counts = self.counts(vision)
        token_mask = None
        if counts is not None:
            # The top `counts` of the kept patches, still in their original order.
            scores = sum(vision.cls_attention[i].float().mean(1) for i in self.layers)
            assert isinstance(scores, Tensor)
            rank = scores.gather(1, idx).argsort(-1, descending=True).argsort(-1)
            token_mask = rank < counts[:, None]
            if self.cfg.merge:
                token_mask = torch.cat([token_mask, token_mask.new_ones(len(counts), 1)], 1)
        kept = patches.gather(1, idx[..., None].expand(-1, -1, patches.shape[-1]))
        if self.cfg.merge:
            dropped = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
            dropped.scatter_(1, idx, False)
            n = dropped.sum(1, keepdim=True).clamp(min=1).to(patches.dtype)
            mean = (patches * dropped[..., None]).sum(1) / n
            kept = torch.cat([kept, mean[:, None]], dim=1)
        tokens = self.fc2(self.act(self.fc1(kept)))
        if self.position is not None:  # each kept patch keeps its own place
            place = self.position[idx]
            if self.cfg.merge:
                w = dropped[..., None].to(place.dtype)
                rest = (self.position[None] * w).sum(1) / w.sum(1).clamp(min=1)
                place = torch.cat([place, rest[:, None]], dim=1)
            tokens = tokens + place.to(tokens.dtype)
        return VisualConditioning(tokens=tokens, token_mask=token_mask)

    @classmethod
    def cost(cls, config: ModelConfig) -> ConnectorCost:
        full = MLPProjector.cost(config)
        cfg = config.connector.prune or PruneConfig()
        tokens = cfg.count(config.vision.num_patches) + int(cfg.merge)
        per_token = full.flops_per_image // max(full.tokens_per_image, 1)
        return ConnectorCost(full.params, tokens * per_token, tokens)


# Registered beside the MLP projector (importing models.vlm or analysis.cost brings them in).
CONNECTORS.update(vlora=VLoRAConnector, prune=PruneProjector)
