"""Model surgery that changes a model's structure: upcycling dense FFNs into experts, and
pruning a task-routed encoder down to one task's expert pathway."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from tinyvlm.config import MoEConfig
from tinyvlm.models.layers import SwiGLU
from tinyvlm.models.moe import MoE
from tinyvlm.models.vlm import TinyVLM


def upcycle(model: TinyVLM, moe: MoEConfig) -> TinyVLM:
    """Turn the language model's dense FFNs at `moe.layers` into MoE layers whose experts are
    copies of the dense FFN (sparse upcycling), in place. The router starts random; outputs
    equal the dense model's until training moves the experts apart."""
    lang = model.config.language
    if lang.moe is not None:
        raise ValueError("the language model is already sparse")
    if moe.task_routing != "none":
        raise ValueError("upcycling makes token-routed experts; task routing is for encoders")
    moe = copy.deepcopy(moe)
    for layer, experts in moe.experts_at(lang.depth).items():
        block = model.language.blocks[layer]
        assert isinstance(block.ffn, SwiGLU)
        block.ffn = MoE.upcycle(block.ffn, moe, experts, name=f"language.{layer}")
    lang.moe = moe
    return model


def prune_to_task(model: TinyVLM, task: int, keep: Mapping[int, Sequence[int]]) -> TinyVLM:
    """Keep only `task`'s routing and, in each vision MoE block, the experts in keep[block]
    (in place). The result routes as that task without task ids and stores only its pathway:
    M3ViT's single-task inference model."""
    vision = model.config.vision
    if vision.moe is None:
        raise ValueError("the vision encoder has no MoE blocks")
    layers = vision.moe.experts_at(vision.depth)
    missing = sorted(set(layers) - set(keep))
    if missing:
        raise ValueError(f"no experts to keep given for vision MoE blocks {missing}")
    counts = []
    for layer in layers:
        ffn = model.vision.blocks[layer].ffn
        assert isinstance(ffn, MoE)
        ffn.keep_task(task)
        ffn.keep_experts(keep[layer])
        counts.append(ffn.num_experts)
    vision.moe.layer_experts = counts
    if vision.moe.task_routing != "none":
        vision.moe.num_tasks = 1
    return model
