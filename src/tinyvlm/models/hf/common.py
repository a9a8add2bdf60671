"""What every Hugging Face family module shares: reading a checkpoint directory (config.json,
single or sharded safetensors), key prefixes, and one clear error for what cannot map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from tinyvlm.errors import InputError
from tinyvlm.io import read_json


class Unsupported(InputError):
    """A checkpoint (or a tinyvlm model) that the other side cannot express exactly."""


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise InputError("not a model directory: config.json is missing", directory)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError("config.json is not a JSON object", path)
    return raw


def weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = read_json(index).get("weight_map", {})
        files = sorted({directory / name for name in shards.values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        found = "pytorch_model.bin (pickle)" if (directory / "pytorch_model.bin").exists() \
            else "no *.safetensors"
        raise InputError(f"{found}: only safetensors checkpoints are read (re-save with "
                         "save_pretrained(..., safe_serialization=True))", directory)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise InputError(f"weight shards missing: {missing[:3]}", directory)
    return files


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint, by its name, in fp32 (the families map fp32)."""
    out: dict[str, Tensor] = {}
    for f in weight_files(directory):
        try:
            with safe_open(str(f), framework="pt") as reader:
                for key in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                    out[key] = reader.get_tensor(key).float()
        except Exception as e:  # safetensors raises its own types
            raise InputError(f"cannot read weights ({e})", f) from None
    return out


def strip_prefix(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """The tensors under the first of `prefixes` that any key has, the prefix removed."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {}


class Weights:
    """A checkpoint's tensors for one module; take() records what was used, so keys left
    over (a part the family does not map) are an error rather than silently dropped."""

    def __init__(self, state: dict[str, Tensor], where: Path | str):
        self.state, self.where, self.used = state, where, set()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise InputError(f"weight {key!r} is missing", self.where)
        self.used.add(key)
        return self.state[key]

    def get(self, key: str) -> Tensor | None:
        return self.take(key) if key in self.state else None

    def ignore(self, *prefixes: str) -> None:
        self.used |= {k for k in self.state if k.startswith(prefixes)}

    def check_used(self, what: str) -> None:
        left = sorted(set(self.state) - self.used)
        if left:
            raise Unsupported(f"{what}: {len(left)} weights have no place in the model "
                              f"({', '.join(left[:3])})", self.where)


def require(ok: bool, message: str, where: Path | str | None = None) -> None:
    if not ok:
        raise Unsupported(message, where)


def contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def zeros_like_bias(weight: Tensor) -> Tensor:
    return torch.zeros(weight.shape[0], dtype=weight.dtype)


def import_experts(w: Weights, router: str, expert: str, names: tuple[str, str, str],
                   dst: str, out: dict[str, Tensor]) -> None:
    """A sparse FFN's router and experts into tinyvlm's MoE: `expert` formats with the
    expert index `e` and each of `names` (the gate, up and down projections' keys)."""
    logits = w.take(router)
    out[dst + "ffn.router.weight"] = logits[None]
    gate, up, down = names
    out[dst + "ffn.gate_up_proj"] = torch.stack([
        torch.cat([w.take(expert.format(e=e, name=gate)), w.take(expert.format(e=e, name=up))])
        for e in range(logits.shape[0])])
    out[dst + "ffn.down_proj"] = torch.stack(
        [w.take(expert.format(e=e, name=down)) for e in range(logits.shape[0])])


def export_experts(state: dict[str, Tensor], src: str, router: str, expert: str,
                   names: tuple[str, str, str], out: dict[str, Tensor]) -> None:
    """The inverse of import_experts."""
    out[router] = state[src + "ffn.router.weight"][0]
    for e, (gate_up, down) in enumerate(zip(state[src + "ffn.gate_up_proj"],
                                            state[src + "ffn.down_proj"], strict=True)):
        for name, value in zip(names, (*gate_up.chunk(2), down), strict=True):
            out[expert.format(e=e, name=name)] = value
