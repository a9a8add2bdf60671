"""Sparse mixture-of-experts FFN: one module for the language model and the vision encoder.

A router scores the experts in fp32, each token goes to its top-k, and every expert runs once
on the tokens that chose it (tokens sorted by expert, contiguous slices, one matmul pair per
expert): no loop over tokens and no dense compute over all experts. Masked tokens (padding)
are never routed and never enter the auxiliary losses. Statistics and losses come back as a
typed `RouterRecord` appended to the forward context, never as extra return values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from tinyvlm.config import MoEConfig
from tinyvlm.models.context import ForwardContext
from tinyvlm.models.layers import SwiGLU

ROUTING_MODES = ("dropless", "capacity")
TASK_ROUTING = ("none", "embedding", "multi_gate")
# Up to this many (token, choice) pairs without gradients (decoding one or two sequences),
# each pair runs through its expert directly; more, and tokens are sorted by expert.
DECODE_CHOICES = 4


@dataclass
class RouterRecord:
    """What one MoE layer did in one forward pass."""

    layer: str  # e.g. "language.3"
    num_experts: int
    # (..., top_k) expert chosen by each token, in the input's leading shape; -1 for tokens
    # that were not routed (masked). Choices dropped for capacity still show their expert.
    choices: Tensor
    gates: Tensor  # same shape, float: the weight of each choice (0 where not routed)
    kept: Tensor | None  # same shape, bool: the choice ran (None: dropless, all ran)
    aux_loss: Tensor  # balance_coef * balance + z_coef * z: the one term the loop adds
    balance_loss: Tensor  # unweighted, detached
    z_loss: Tensor  # unweighted, detached
    tokens: int  # routed tokens

    @property
    def load(self) -> Tensor:
        """(E,) number of choices each expert ran."""
        chosen = self.choices[self.choices >= 0] if self.kept is None else self.choices[self.kept]
        return torch.bincount(chosen.flatten(), minlength=self.num_experts)

    @property
    def dropped(self) -> int:
        return 0 if self.kept is None else int((~self.kept & (self.choices >= 0)).sum())

    @property
    def drop_rate(self) -> float:
        total = int((self.choices >= 0).sum())
        return self.dropped / total if total else 0.0

    @property
    def imbalance(self) -> float:
        """max / mean expert load: 1 is perfectly balanced, num_experts is total collapse."""
        load = self.load.float()
        return float(load.max() / load.mean()) if load.sum() > 0 else 1.0


def router_losses(records: Sequence[object]) -> tuple[Tensor | None, dict[str, float]]:
    """The summed auxiliary loss of every MoE layer in `records`, and the metrics to log
    (means over layers). None when the forward pass had no MoE layer."""
    routers = [r for r in records if isinstance(r, RouterRecord)]
    if not routers:
        return None, {}
    total = torch.stack([r.aux_loss.float() for r in routers]).sum()
    n = len(routers)
    return total, {
        "router_loss": float(total.detach()),
        "balance_loss": sum(float(r.balance_loss) for r in routers) / n,
        "z_loss": sum(float(r.z_loss) for r in routers) / n,
        "load_imbalance": sum(r.imbalance for r in routers) / n,
        "drop_rate": sum(r.drop_rate for r in routers) / n,
    }


def task_expert_mi(probs: Tensor, task_ids: Tensor, num_tasks: int) -> Tensor:
    """Mutual information between a token's task and its router distribution,
    sum_{t,e} p(t,e) log(p(t,e) / (p(t) p(e))), with p(t,e) the mean over tokens of
    [task = t] * probs[e]."""
    joint = torch.zeros(num_tasks, probs.shape[-1], dtype=probs.dtype, device=probs.device)
    joint = joint.index_add(0, task_ids, probs) / max(probs.shape[0], 1)
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    return (joint * (torch.log(joint + 1e-9) - torch.log(outer + 1e-9))).sum()


class Router(nn.Module):
    """Token -> expert logits, in fp32.

    Task-conditioned variants (M3ViT): "embedding" feeds the token concatenated with a learned
    task embedding to one gate; "multi_gate" keeps one gate per task.
    """

    def __init__(self, dim: int, num_experts: int, config: MoEConfig):
        super().__init__()
        if config.task_routing not in TASK_ROUTING:
            raise ValueError(f"moe.task_routing must be one of {TASK_ROUTING}, got "
                             f"{config.task_routing!r}")
        self.mode = config.task_routing
        self.num_tasks = config.num_tasks if self.mode != "none" else 0
        if self.mode != "none" and self.num_tasks < 1:
            raise ValueError("task routing needs moe.num_tasks >= 1")
        gates = self.num_tasks if self.mode == "multi_gate" else 1
        in_dim = dim + (config.task_dim if self.mode == "embedding" else 0)
        self.weight = nn.Parameter(torch.empty(gates, num_experts, in_dim))
        self.task_embed = (nn.Embedding(self.num_tasks, config.task_dim)
                           if self.mode == "embedding" else None)
        nn.init.normal_(self.weight, std=0.02)
        if self.task_embed is not None:
            nn.init.normal_(self.task_embed.weight, std=0.02)

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        x = x.float()
        if self.mode == "none":
            return F.linear(x, self.weight[0].float())
        if task_ids is None:
            if self.num_tasks != 1:
                raise ValueError("this MoE layer routes by task: pass task ids "
                                 "(ForwardContext.task_ids)")
            task_ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.task_embed is not None:
            x = torch.cat([x, self.task_embed(task_ids).float()], dim=-1)
            return F.linear(x, self.weight[0].float())
        # One gate per task: score against every gate (cheap: few experts), keep the token's.
        e = self.weight.shape[1]
        logits = F.linear(x, self.weight.float().flatten(0, 1)).view(-1, self.num_tasks, e)
        return logits.gather(1, task_ids.view(-1, 1, 1).expand(-1, 1, e)).squeeze(1)


def _fused_experts_apply(x: Tensor, gate_up: Tensor, down: Tensor) -> bool:
    """Whether the hand-written backward serves: fp32 without autocast (autocast's casts go
    through autograd's own path; the Function does not support double backward)."""
    return (torch.is_grad_enabled() and x.dtype == gate_up.dtype == down.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type))


class _Experts(torch.autograd.Function):
    """Every expert's SwiGLU over its slice of the expert-sorted tokens, with a backward
    that writes each expert's weight gradients straight into one (E, ...) buffer: autograd's
    own path stacks per-expert gradients (a full copy of both weights) and concatenates the
    gate/up halves per expert, which cost a quarter of a step at 512 tokens."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gate_up: Tensor, down: Tensor, counts: list[int]
                ) -> Tensor:
        hidden = gate_up.shape[1] // 2
        h = x.new_empty(x.shape[0], 2 * hidden)
        y = x.new_empty(x.shape[0], down.shape[1])
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = slice(start, start + n)
                torch.mm(x[rows], gate_up[e].t(), out=h[rows])
                gate, up = h[rows, :hidden], h[rows, hidden:]
                torch.mm(F.silu(gate) * up, down[e].t(), out=y[rows])
                start += n
        ctx.save_for_backward(x, gate_up, down, h)
        ctx.counts = counts
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, gate_up, down, h = ctx.saved_tensors
        want_x, want_w1, want_w2 = ctx.needs_input_grad[:3]
        hidden = gate_up.shape[1] // 2
        dx = torch.empty_like(x) if want_x else None
        # Experts no token chose keep a zero gradient, as autograd gives them.
        d_gate_up = torch.zeros_like(gate_up) if want_w1 else None
        d_down = torch.zeros_like(down) if want_w2 else None
        dy = dy.contiguous()
        start = 0
        for e, n in enumerate(ctx.counts):
            if not n:
                continue
            rows = slice(start, start + n)
            start += n
            gate, up = h[rows, :hidden], h[rows, hidden:]
            act = F.silu(gate)
            dy_e = dy[rows]
            if d_down is not None:
                torch.mm(dy_e.t(), act * up, out=d_down[e])
            d_act = dy_e @ down[e]
            d_up = d_act * act
            d_gate = torch.ops.aten.silu_backward(d_act * up, gate)
            if d_gate_up is not None:
                torch.mm(d_gate.t(), x[rows], out=d_gate_up[e, :hidden])
                torch.mm(d_up.t(), x[rows], out=d_gate_up[e, hidden:])
            if dx is not None:
                torch.mm(d_gate, gate_up[e, :hidden], out=dx[rows])
                dx[rows].addmm_(d_up, gate_up[e, hidden:])
        return dx, d_gate_up, d_down, None


class MoE(nn.Module):
    """E SwiGLU experts (stacked weights), a top-k router, an optional shared expert.

    Weights are stored like transformers' Mixtral experts (gate_up_proj (E, 2I, H) with the
    gate half first, down_proj (E, H, I)), so checkpoints map one to one.
    """

    def __init__(self, dim: int, hidden_dim: int, config: MoEConfig, num_experts: int | None = None,
                 name: str = "moe", residual_depth: int = 1, std: float = 0.02):
        super().__init__()
        if config.routing not in ROUTING_MODES:
            raise ValueError(f"moe.routing must be one of {ROUTING_MODES}, got "
                             f"{config.routing!r}")
        self.config = config
        self.name = name
        self.num_experts = num_experts or config.experts
        self.top_k = min(config.top_k, self.num_experts)
        if self.top_k < 1:
            raise ValueError("moe.top_k must be >= 1")
        self.router = Router(dim, self.num_experts, config)
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * hidden_dim, dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, dim, hidden_dim))
        nn.init.normal_(self.gate_up_proj, std=std)
        # The residual-branch output shrinks with depth, as for dense FFNs (GPT-2 init).
        nn.init.normal_(self.down_proj, std=std / math.sqrt(2 * residual_depth))
        self.shared = (SwiGLU(dim, config.shared_expert_dim)
                       if config.shared_expert_dim > 0 else None)
        self.shared_gate = (nn.Linear(dim, 1, bias=False)
                            if self.shared is not None and config.shared_expert_gate else None)
        if self.shared_gate is not None:
            nn.init.normal_(self.shared_gate.weight, std=std)

    # ---------------------------------------------------------------- routing

    def capacity(self, tokens: int) -> int | None:
        """Slots per expert, or None when dropless."""
        if self.config.routing == "dropless":
            return None
        factor = self.config.capacity_factor
        if not self.training and self.config.eval_capacity_factor is not None:
            factor = self.config.eval_capacity_factor
        return math.ceil(factor * tokens * self.top_k / self.num_experts)

    def _within_capacity(self, top_i: Tensor, capacity: int) -> Tensor:
        """(N, k) bool: the choice gets a slot. First choices are served before second
        choices, and within a rank earlier tokens first."""
        n, k = top_i.shape
        onehot = F.one_hot(top_i.t().reshape(-1), self.num_experts)  # rank-major order
        slot = (onehot.cumsum(0) * onehot).sum(-1) - 1
        return (slot < capacity).view(k, n).t()

    def _experts(self, x: Tensor, top_i: Tensor, gates: Tensor, kept: Tensor | None) -> Tensor:
        """sum_j gates[:, j] * expert_{top_i[:, j]}(x), each expert run once on its tokens."""
        n, k = top_i.shape
        if kept is None and not torch.is_grad_enabled() and n * k <= DECODE_CHOICES:
            return self._experts_few(x, top_i, gates)
        expert_of = top_i.reshape(-1)
        token_of = torch.arange(n, device=x.device).repeat_interleave(k)
        gate_of = gates.reshape(-1)
        if kept is not None:  # dropped choices are left out: they add nothing
            live = kept.reshape(-1).nonzero().squeeze(1)
            expert_of, token_of, gate_of = expert_of[live], token_of[live], gate_of[live]
        order = expert_of.argsort(stable=True)
        counts = torch.bincount(expert_of, minlength=self.num_experts).tolist()
        token_of, gate_of = token_of[order], gate_of[order]
        sorted_x = x.index_select(0, token_of)
        if not any(counts):
            return x.new_zeros(n, x.shape[-1])
        if _fused_experts_apply(sorted_x, self.gate_up_proj, self.down_proj):
            sorted_y = _Experts.apply(sorted_x, self.gate_up_proj, self.down_proj, counts)
        else:
            # One unbind per weight, not weight[e] per expert: indexing a parameter once per
            # expert makes backward allocate and zero-fill a full-size gradient for each.
            gate_up, down = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
            outputs = []
            for e, chunk in enumerate(sorted_x.split(counts)):
                if chunk.shape[0] == 0:
                    continue
                gate, up = F.linear(chunk, gate_up[e]).chunk(2, dim=-1)
                outputs.append(F.linear(F.silu(gate) * up, down[e]))
            sorted_y = torch.cat(outputs)
        # Weight each choice by its gate while still sorted, then sum a token's choices.
        sorted_y = sorted_y * gate_of.to(sorted_y.dtype).unsqueeze(-1)
        return sorted_y.new_zeros(n, x.shape[-1]).index_add(0, token_of, sorted_y)

    def _experts_few(self, x: Tensor, top_i: Tensor, gates: Tensor) -> Tensor:
        """The same sum for a handful of (token, choice) pairs (decoding one or two
        sequences): each pair through its expert's weight views directly, without sorting
        the tokens, whose fixed per-op cost dominates at this size."""
        n = top_i.shape[0]
        choices, weights = top_i.tolist(), gates.to(x.dtype)
        rows = []
        for t in range(n):
            row = x[t : t + 1]
            total = None
            for j, e in enumerate(choices[t]):
                gate, up = F.linear(row, self.gate_up_proj[e]).chunk(2, dim=-1)
                y = F.linear(F.silu(gate) * up, self.down_proj[e]) * weights[t, j]
                total = y if total is None else total + y
            rows.append(total)
        return torch.cat(rows) if rows else x.new_zeros(0, x.shape[-1])

    # ---------------------------------------------------------------- forward

    def forward(self, x: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        ctx = ctx if ctx is not None else ForwardContext()
        lead, dim = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, dim)
        mask = ctx.token_mask
        if mask is not None and tuple(mask.shape) != tuple(lead):
            raise ValueError(f"{self.name}: token_mask {tuple(mask.shape)} does not match "
                             f"the tokens {tuple(lead)}")
        routed = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)
        tokens = flat if routed is None else flat.index_select(0, routed)
        task_ids = None
        if ctx.task_ids is not None:
            per_token = ctx.task_ids.view(-1, *[1] * (len(lead) - 1)).expand(lead).reshape(-1)
            task_ids = per_token if routed is None else per_token[routed]

        router_in = tokens
        if self.training and self.config.jitter > 0:
            noise = torch.empty_like(tokens).uniform_(1 - self.config.jitter,
                                                      1 + self.config.jitter)
            router_in = tokens * noise
        # Routing in fp32 even under autocast: a bf16 softmax over near-equal logits flips
        # choices, and the auxiliary losses need the precision too.
        with torch.autocast(tokens.device.type, enabled=False):
            logits = self.router(router_in, task_ids)  # (N, E) fp32
            probs = logits.softmax(-1)
            top_p, top_i = probs.topk(self.top_k, dim=-1)
            gates = (top_p / top_p.sum(-1, keepdim=True) if self.config.normalize_gates
                     else top_p)
        capacity = self.capacity(tokens.shape[0])
        kept = None if capacity is None else self._within_capacity(top_i, capacity)

        y = self._experts(tokens, top_i, gates, kept)
        if self.shared is not None:
            shared = self.shared(tokens)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(tokens)) * shared
            y = y + shared
        # The experts' dtype (bf16 under autocast), not the residual stream's.
        out = y if routed is None else y.new_zeros(flat.shape[0], dim).index_copy(0, routed, y)

        with torch.autocast(tokens.device.type, enabled=False):
            # Only training adds the auxiliary losses; inference skips their cost.
            balance, z = (self._aux_losses(logits, probs, top_i) if self.training
                          else (logits.new_zeros(()), logits.new_zeros(())))
            aux = self.config.balance_coef * balance + self.config.z_coef * z
            if self.config.task_mi_coef and task_ids is not None and self.training:
                aux = aux - self.config.task_mi_coef * task_expert_mi(probs, task_ids,
                                                                      self.router.num_tasks)
        ctx.records.append(RouterRecord(
            layer=self.name, num_experts=self.num_experts,
            choices=self._spread(top_i.detach(), routed, lead, -1),
            gates=self._spread(gates.detach(), routed, lead, 0.0),
            kept=None if kept is None else self._spread(kept, routed, lead, False),
            aux_loss=aux, balance_loss=balance.detach(), z_loss=z.detach(),
            tokens=tokens.shape[0],
        ))
        return out.view(x.shape)

    def _aux_losses(self, logits: Tensor, probs: Tensor, top_i: Tensor) -> tuple[Tensor, Tensor]:
        if logits.shape[0] == 0:
            zero = logits.sum() * 0.0
            return zero, zero
        # f_e: share of tokens whose choices include e; P_e: mean router probability.
        f = F.one_hot(top_i, self.num_experts).sum(1).float().mean(0)
        balance = self.num_experts * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, dim=-1).square().mean()
        return balance, z

    def _spread(self, values: Tensor, routed: Tensor | None, lead: torch.Size, fill: object
                ) -> Tensor:
        """Per-routed-token values back to the input's token layout, `fill` elsewhere."""
        if routed is None:
            return values.view(*lead, -1)
        full = values.new_full((math.prod(lead), values.shape[-1]), fill)
        full[routed] = values
        return full.view(*lead, -1)

    # ---------------------------------------------------------------- surgery

    @torch.no_grad()
    def keep_experts(self, keep: Sequence[int]) -> None:
        """Drop every expert not in `keep` (M3ViT's single-task pathway); the router scores
        only the kept experts, and top_k shrinks if fewer experts remain."""
        idx = torch.as_tensor(sorted(set(keep)), dtype=torch.long)
        if len(idx) == 0 or int(idx.max()) >= self.num_experts:
            raise ValueError(f"{self.name}: cannot keep experts {list(keep)} of "
                             f"{self.num_experts}")
        self.gate_up_proj = nn.Parameter(self.gate_up_proj[idx].clone())
        self.down_proj = nn.Parameter(self.down_proj[idx].clone())
        self.router.weight = nn.Parameter(self.router.weight[:, idx].clone())
        self.num_experts = len(idx)
        self.top_k = min(self.top_k, self.num_experts)

    @torch.no_grad()
    def keep_task(self, task: int) -> None:
        """Keep only `task`'s routing (its gate or its embedding row): the layer then routes
        as that task without being given task ids."""
        router = self.router
        if router.mode == "none":
            return
        if not 0 <= task < router.num_tasks:
            raise ValueError(f"{self.name}: task {task} out of range 0..{router.num_tasks - 1}")
        if router.mode == "multi_gate":
            router.weight = nn.Parameter(router.weight[task : task + 1].clone())
        else:
            assert router.task_embed is not None
            row = router.task_embed.weight[task : task + 1].clone()
            router.task_embed = nn.Embedding.from_pretrained(row, freeze=False)
        router.num_tasks = 1

    @classmethod
    @torch.no_grad()
    def upcycle(cls, dense: SwiGLU, config: MoEConfig, num_experts: int | None = None,
                name: str = "moe") -> MoE:
        """A sparse layer whose experts all start as copies of `dense`.

        With renormalised gates the output equals the dense FFN's at initialisation whatever
        the router says, since every expert computes the same function.
        """
        if not config.normalize_gates:
            raise ValueError("upcycling needs moe.normalize_gates: true (otherwise the output "
                             "is scaled by the chosen experts' probability mass)")
        hidden, dim = dense.gate.weight.shape
        if config.hidden_dim not in (None, hidden):
            raise ValueError(f"upcycled experts keep the dense width {hidden}, but "
                             f"moe.hidden_dim is {config.hidden_dim}")
        moe = cls(dim, hidden, config, num_experts, name=name)
        gate_up = torch.cat([dense.gate.weight, dense.up.weight], dim=0)
        moe.gate_up_proj.copy_(gate_up.expand(moe.num_experts, -1, -1))
        moe.down_proj.copy_(dense.down.weight.expand(moe.num_experts, -1, -1))
        if moe.shared is not None:
            nn.init.zeros_(moe.shared.down.weight)  # starts silent, so outputs still match
        return moe.to(dense.gate.weight.dtype)
