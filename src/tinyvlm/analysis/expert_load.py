"""Expert telemetry: how many routed choices each expert of each MoE layer takes, split by
image vs text tokens and by the capability a question tests, as JSON and as a heatmap."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tinyvlm.data.collate import SFTCollator
from tinyvlm.data.conversation import Conversation
from tinyvlm.data.images import ImageStore
from tinyvlm.io import atomic_path, write_json
from tinyvlm.models.moe import MoE, RouterRecord
from tinyvlm.models.vlm import TinyVLM


def _add(table: dict[str, list[int]], key: str, counts: torch.Tensor) -> None:
    row = table.setdefault(key, [0] * counts.numel())
    for e, c in enumerate(counts.tolist()):
        row[e] += c


@torch.no_grad()
def expert_load(model: TinyVLM, conversations: Sequence[Conversation], batch_size: int = 64
                ) -> dict[str, Any]:
    """Choices per layer x expert over teacher-forced conversations (question and answer).

    Language layers split their tokens into image and text positions; vision layers see only
    image patches. A conversation's tokens also count for every capability of its last turn.
    """
    assert model.tokenizer is not None
    model.eval()
    collate = SFTCollator(model.tokenizer, ImageStore.for_model(model.config.vision),
                          model.image_tokens, model.config.language.max_seq_len)
    by_kind: dict[str, dict[str, list[int]]] = {}
    by_cap: dict[str, dict[str, list[int]]] = {}
    for start in range(0, len(conversations), batch_size):
        convs = conversations[start : start + batch_size]
        batch = collate(convs)
        out = model(batch.input_ids, batch.attention_mask, batch.pixel_values,
                    image_rows=batch.image_rows)
        is_image = batch.input_ids == model.config.image_token_id
        caps = [list((c.meta[-1] if c.meta else {}).get("capabilities", [])) for c in convs]
        for rec in out.records:
            if not isinstance(rec, RouterRecord):
                continue
            valid = rec.choices >= 0 if rec.kept is None else rec.kept
            per_row = rec.choices.shape[0]
            if rec.layer.startswith("language"):
                kinds = {"image": is_image, "text": ~is_image}
            else:
                kinds = {"image": torch.ones(rec.choices.shape[:-1], dtype=torch.bool)}
            table = by_kind.setdefault(rec.layer, {})
            for kind, sel in kinds.items():
                chosen = rec.choices[valid & sel.unsqueeze(-1)]
                _add(table, kind, torch.bincount(chosen, minlength=rec.num_experts))
            cap_table = by_cap.setdefault(rec.layer, {})
            # Vision rows are images; with one image per conversation they align with rows.
            if per_row != len(convs):
                continue
            for i, row_caps in enumerate(caps):
                counts = torch.bincount(rec.choices[i][valid[i]], minlength=rec.num_experts)
                for cap in row_caps:
                    _add(cap_table, cap, counts)
    layers = sorted(by_kind, key=lambda name: (name.split(".")[0], int(name.split(".")[1])))
    return {"layers": layers, "by_kind": {k: by_kind[k] for k in layers},
            "by_capability": {k: by_cap.get(k, {}) for k in layers}}


def plot_expert_load(load: dict[str, Any], path: str | Path, dpi: int = 120) -> Path:
    """One heatmap per token kind and per capability: rows are layers, columns experts,
    colour the share of the layer's choices (so 1/E everywhere is perfect balance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = load["layers"]
    panels: list[tuple[str, dict[str, list[int]]]] = []
    kinds = sorted({k for t in load["by_kind"].values() for k in t})
    caps = sorted({c for t in load["by_capability"].values() for c in t})
    panels += [(f"{k} tokens", {lay: load["by_kind"][lay].get(k, []) for lay in layers})
               for k in kinds]
    panels += [(c, {lay: load["by_capability"][lay].get(c, []) for lay in layers}) for c in caps]
    width = max((len(v) for t in load["by_kind"].values() for v in t.values()), default=1)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 1.6 * len(panels), 0.5 + 0.4 *
                                                       max(len(layers), 2)), squeeze=False)
    image = None
    for ax, (title, rows) in zip(axes[0], panels, strict=True):
        grid = torch.full((len(layers), width), float("nan"))
        for i, lay in enumerate(layers):
            counts = torch.tensor(rows[lay], dtype=torch.float)
            if counts.numel() and counts.sum() > 0:
                grid[i, : counts.numel()] = counts / counts.sum()
        image = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_xticks(range(width))
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers if ax is axes[0][0] else [], fontsize=7)
        ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of choices")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def write_expert_load(model: TinyVLM, conversations: Sequence[Conversation],
                      out_dir: str | Path) -> dict[str, Any] | None:
    """expert_load.json and expert_load.png in out_dir; None for a model without MoE, or
    whose encoder routes by task (its load is reported per task by `tinyvlm tasks eval`)."""
    vision_moe = model.config.vision.moe
    if vision_moe is not None and vision_moe.task_routing != "none":
        return None
    if not any(isinstance(m, MoE) for m in model.modules()):
        return None
    load = expert_load(model, conversations)
    out_dir = Path(out_dir)
    write_json(out_dir / "expert_load.json", load)
    plot_expert_load(load, out_dir / "expert_load.png")
    return load
