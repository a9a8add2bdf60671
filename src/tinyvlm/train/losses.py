"""Pure distillation and preference losses: no models, no batches, only tensors.

Conventions shared by every function here:
- Logits are aligned with `target_ids` as the collator builds them: position t predicts the
  token at t+1, so masks and targets are never shifted again.
- Everything is computed in fp32 from log-probabilities (log_softmax), so probabilities that
  underflow to 0 contribute 0, never 0 * log 0 = NaN.
- Token-level losses return (mean over selected units, number of units): the loop weights
  micro-batches by that count, so accumulation is token-weighted.
- The teacher (or reference) side is a target: it is detached and never receives gradient.

Longer than the house's ~400 lines on purpose: every loss the objectives use (divergences,
token masks, relation distillation, the DPO family) shares the conventions above, stated once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tinyvlm.data.collate import IGNORE

# The most negative finite fp32: -inf log-probabilities (a logit of -inf, e.g. a masked
# vocabulary entry) are clamped to it so differences stay finite and gradients stay non-NaN.
_LOG_FLOOR = torch.finfo(torch.float32).min


def _finite(logp: Tensor) -> Tensor:
    return logp.float().clamp(min=_LOG_FLOOR)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) over the last dimension, from log-probabilities."""
    logp, logq = _finite(logp), _finite(logq)
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mix(logp: Tensor, logq: Tensor, weight: float) -> Tensor:
    """log(weight * p + (1 - weight) * q), without leaving log space."""
    if weight <= 0.0:
        return logq
    if weight >= 1.0:
        return logp
    return torch.logaddexp(_finite(logp) + math.log(weight),
                           _finite(logq) + math.log1p(-weight))


# ---------------------------------------------------------------------------------------------
# Divergences between next-token distributions. Arguments are log-probabilities (..., V) of
# the student (q) and the teacher (p); each returns one value per position (...).


def forward_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """KL(p || q) = sum p (log p - log q): mass-covering, the LLaVA-MoD default."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """KL(q || p) = sum q (log q - log p): mode-seeking."""
    return _kl(student_logp, teacher_logp)


def jensen_shannon(student_logp: Tensor, teacher_logp: Tensor, beta: float = 0.5) -> Tensor:
    """Generalised JSD: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.

    beta = 0.5 is the symmetric Jensen-Shannon divergence; the convention (beta weights the
    teacher) is the one of GKD and of TRL's `generalized_jsd_loss`."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jensen_shannon needs 0 < beta < 1, got {beta}")
    log_m = _log_mix(teacher_logp, student_logp, beta)
    return beta * _kl(teacher_logp, log_m) + (1.0 - beta) * _kl(student_logp, log_m)


def total_variation(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """TV(p, q) = 1/2 sum |p - q|, bounded by 1."""
    return 0.5 * (_finite(teacher_logp).exp() - _finite(student_logp).exp()).abs().sum(-1)


def skew_forward_kl(student_logp: Tensor, teacher_logp: Tensor, alpha: float = 0.1) -> Tensor:
    """DistiLLM's skew KL: KL(p || alpha p + (1 - alpha) q). The mixture keeps the ratio
    bounded by 1/alpha where the student gives a teacher token almost no mass."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew_forward_kl needs 0 <= alpha < 1, got {alpha}")
    return _kl(teacher_logp, _log_mix(teacher_logp, student_logp, alpha))


def skew_reverse_kl(student_logp: Tensor, teacher_logp: Tensor, alpha: float = 0.1) -> Tensor:
    """DistiLLM's skew reverse KL: KL(q || (1 - alpha) p + alpha q)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew_reverse_kl needs 0 <= alpha < 1, got {alpha}")
    return _kl(student_logp, _log_mix(teacher_logp, student_logp, 1.0 - alpha))


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "js": jensen_shannon,
    "tv": total_variation,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
}


def _select(values: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T, D) and a (B, T) mask -> (N, D) rows of the selected positions."""
    if mask is None:
        return values.reshape(-1, values.shape[-1])
    if values.shape[:-1] != mask.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match values of shape "
                         f"{tuple(values.shape)}")
    return values[mask.bool()]


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                 kind: str = "forward_kl", temperature: float = 1.0,
                 **kw: float) -> tuple[Tensor, int]:
    """Mean divergence between teacher and student next-token distributions.

    student_logits, teacher_logits: (B, T, V) (or (N, V) with mask=None); mask: (B, T),
    True at the positions to distil (see `kd_mask`). Both sides are softmaxed at
    `temperature` and the mean is multiplied by T^2, so gradient magnitudes stay comparable
    across temperatures (Hinton et al.). kw: `beta` for "js", `alpha` for the skew kinds.
    Returns (loss, number of selected positions)."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown distillation loss {kind!r}; known: {', '.join(DIVERGENCES)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    _check_temperature(temperature)
    student = _select(student_logits, mask)
    teacher = _select(teacher_logits.detach(), mask)
    n = student.shape[0]
    if n == 0:
        # A zero that still depends on the student, so backward() works on empty batches.
        return student_logits.sum() * 0.0, 0
    s_logp = F.log_softmax(student.float() / temperature, dim=-1)
    t_logp = F.log_softmax(teacher.float() / temperature, dim=-1)
    loss = DIVERGENCES[kind](s_logp, t_logp, **kw).mean() * temperature**2
    return loss, n


def distill_loss_topk(student_logits: Tensor, teacher_values: Tensor, teacher_indices: Tensor,
                      mask: Tensor | None = None,
                      temperature: float = 1.0) -> tuple[Tensor, int]:
    """Forward KL against a sparse teacher: its top-k logits (values, vocabulary indices), as
    an offline cache stores them.

    The teacher's distribution is renormalised over its k entries: softmax(values / T) over
    the k values equals p_i / sum_topk p_j, and the same holds if the cache stores
    log-probabilities instead of logits. The student keeps its full softmax over the
    vocabulary (its log-probabilities are gathered at the k indices), so the loss is the
    proper KL(p_topk || q), and mass the student puts outside the top-k is still penalised.
    With k = V this is exactly the dense forward KL.

    teacher_values, teacher_indices: (B, T, k) aligned with the logits, or (N, k) for the N
    selected positions in order. Returns (loss, number of selected positions)."""
    _check_temperature(temperature)
    student = _select(student_logits, mask)
    n = student.shape[0]
    if teacher_values.shape != teacher_indices.shape:
        raise ValueError(f"top-k values {tuple(teacher_values.shape)} and indices "
                         f"{tuple(teacher_indices.shape)} differ in shape")
    if mask is not None and teacher_values.shape[:-1] == mask.shape:
        values, indices = _select(teacher_values, mask), _select(teacher_indices, mask)
    else:
        values, indices = _select(teacher_values, None), _select(teacher_indices, None)
    if values.shape[0] != n:
        raise ValueError(f"{values.shape[0]} cached teacher rows for {n} selected positions")
    if n == 0:
        return student_logits.sum() * 0.0, 0
    # Vocabulary order: with k = V the computation is then the dense one, operation for
    # operation, and bit-identical.
    indices, order = indices.long().sort(dim=-1)
    values = values.detach().gather(-1, order)
    t_logp = F.log_softmax(values.float() / temperature, dim=-1)
    s_logp = F.log_softmax(student.float() / temperature, dim=-1).gather(-1, indices)
    loss = forward_kl(s_logp, t_logp).mean() * temperature**2
    return loss, n


# ---------------------------------------------------------------------------------------------
# Token selection

def uld_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
             ) -> Tensor:
    """Universal Logit Distillation (Boizard et al., 2024) for (N, Vs) and (N, Vt) logits of
    aligned positions, whatever the two vocabularies: the L1 distance between the two
    probability vectors sorted in decreasing order (the shorter padded with zeros), which is
    the Wasserstein-1 distance under a cost that ignores token identity; mean over positions.

    Its limit is in that design: it matches the shape of the distribution (how peaked it is,
    how mass spreads over the runners-up), not which token gets the mass; the CE term teaches
    the tokens."""
    _check_temperature(temperature)
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError("uld_loss needs as many teacher positions as student positions")
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    s = (student_logits.float() / temperature).softmax(-1).sort(-1, descending=True).values
    t = (teacher_logits.detach().float() / temperature).softmax(-1).sort(-1,
                                                                      descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s = F.pad(s, (0, width - s.shape[-1]))
    t = F.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(-1).mean()


def answer_runs(mask: Tensor) -> list[list[Tensor]]:
    """Per row, the position indices of each run of selected positions (one run per answer,
    in order)."""
    runs: list[list[Tensor]] = []
    for row in mask:
        idx = row.nonzero().squeeze(1)
        if idx.numel() == 0:
            runs.append([])
            continue
        breaks = (idx[1:] - idx[:-1] != 1).nonzero().squeeze(1) + 1
        runs.append(list(torch.tensor_split(idx, breaks.tolist())))
    return runs


def align_answers(student: Tensor, s_mask: Tensor, teacher: Tensor, t_mask: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """ULD's alignment: the j-th answer of a row on each side, truncated to the shorter of
    the two tokenisations (each side tokenised the same text its own way). (N, Vs), (N, Vt)."""
    s_rows, t_rows = answer_runs(s_mask), answer_runs(t_mask)
    s_out, t_out = [], []
    for b, (s_runs, t_runs) in enumerate(zip(s_rows, t_rows, strict=True)):
        if len(s_runs) != len(t_runs):
            raise ValueError(f"row {b}: the student's batch holds {len(s_runs)} answers, the "
                             f"teacher's {len(t_runs)}")
        for s_idx, t_idx in zip(s_runs, t_runs, strict=True):
            n = min(len(s_idx), len(t_idx))
            s_out.append(student[b, s_idx[:n]])
            t_out.append(teacher[b, t_idx[:n]])
    if not s_out:
        return student.new_zeros(0, student.shape[-1]), teacher.new_zeros(0, teacher.shape[-1])
    return torch.cat(s_out), torch.cat(t_out)


KD_MODES = ("response", "text", "visual")


def kd_mask(target_ids: Tensor, attention_mask: Tensor, input_ids: Tensor,
            image_token_id: int, mode: str = "response") -> Tensor:
    """The (B, T) positions to distil. All inputs are (B, T); target_ids are already shifted.

    - "response": positions whose target (the next token) is a response token. The mask comes
      from the shifted targets because the logits at t are the distribution over token t+1:
      a mask from the unshifted labels would distil the positions one step late, i.e. the
      last prompt token's prediction would be skipped and the prediction after the final
      response token (over padding or the next turn) would be distilled.
    - "text": every real position whose next token is a real text token (not an image
      placeholder, not padding): the whole conversation, LLaVA-KD's text side of MDist.
    - "visual": positions holding image placeholders, where the LLM's outputs on visual
      tokens live (LLaVA-KD's visual side of MDist, and RDist's inputs).
    Padding is never selected."""
    if mode not in KD_MODES:
        raise ValueError(f"unknown distillation mask {mode!r}; known: {', '.join(KD_MODES)}")
    real = attention_mask.bool()
    if mode == "response":
        return (target_ids != IGNORE) & real
    if mode == "visual":
        return (input_ids == image_token_id) & real
    next_is_text = real[:, 1:] & (input_ids[:, 1:] != image_token_id)
    # The last position has no next token in the batch.
    return real & torch.cat([next_is_text, torch.zeros_like(real[:, :1])], dim=1)


# ---------------------------------------------------------------------------------------------
# Relation distillation (LLaVA-KD's RDist)

RELATION_KINDS = ("mse", "l1", "kl", "cosine")


def self_similarity(features: Tensor) -> Tensor:
    """Cosine self-similarity (B, N, N) of (B, N, D) token features. It depends only on the
    relations between tokens, not on D, so students and teachers of different widths compare."""
    unit = F.normalize(features.float(), dim=-1, eps=1e-8)
    return unit @ unit.transpose(-1, -2)


def relation_distill_loss(student_features: Tensor, teacher_features: Tensor,
                          mask: Tensor | None = None, kind: str = "mse",
                          temperature: float = 1.0) -> tuple[Tensor, int]:
    """Match the student's visual-token self-similarity matrix to the teacher's.

    student_features (B, N, Ds), teacher_features (B, N, Dt): hidden states or logits at the
    visual positions; mask (B, N): True for real visual tokens (padded ones take no part).
    kind: "mse" / "l1" (mean over valid pairs), "kl" (forward KL between the row softmaxes of
    S / temperature, teacher as target, mean over valid rows, times temperature^2), or
    "cosine" (1 - cosine similarity of the two matrices, mean over samples).
    Returns (loss, number of units averaged: pairs, rows or samples)."""
    if kind not in RELATION_KINDS:
        raise ValueError(f"unknown relation loss {kind!r}; known: {', '.join(RELATION_KINDS)}")
    if student_features.shape[:2] != teacher_features.shape[:2]:
        raise ValueError(f"student features {tuple(student_features.shape)} and teacher "
                         f"features {tuple(teacher_features.shape)} differ in tokens")
    _check_temperature(temperature)
    s = self_similarity(student_features)
    t = self_similarity(teacher_features.detach())
    b, n = s.shape[:2]
    valid = (torch.ones(b, n, dtype=torch.bool, device=s.device) if mask is None
             else mask.bool())
    pairs = valid[:, :, None] & valid[:, None, :]
    zero = student_features.sum() * 0.0
    if kind in ("mse", "l1"):
        count = int(pairs.sum())
        if count == 0:
            return zero, 0
        diff = s[pairs] - t[pairs]
        return (diff.square() if kind == "mse" else diff.abs()).mean(), count
    if kind == "kl":
        rows, cols = valid, pairs[valid]  # (R, N): each valid row's valid columns
        count = int(rows.sum())
        if count == 0:
            return zero, 0
        s_logp = F.log_softmax((s[rows] / temperature).masked_fill(~cols, -math.inf), dim=-1)
        t_logp = F.log_softmax((t[rows] / temperature).masked_fill(~cols, -math.inf), dim=-1)
        return forward_kl(s_logp, t_logp).mean() * temperature**2, count
    keep = valid.any(dim=1)  # "cosine": samples with at least one visual token
    count = int(keep.sum())
    if count == 0:
        return zero, 0
    s_flat = s.masked_fill(~pairs, 0.0)[keep].flatten(1)
    t_flat = t.masked_fill(~pairs, 0.0)[keep].flatten(1)
    return (1.0 - F.cosine_similarity(s_flat, t_flat, dim=-1, eps=1e-8)).mean(), count


# ---------------------------------------------------------------------------------------------
# Preference losses (DPO family)


def sequence_logps(logits: Tensor, target_ids: Tensor, average: bool = False) -> Tensor:
    """Per-sequence log-probability (B,) of the targets: the sum of log p(target_t) over the
    positions with a target (targets already shifted). average=True divides by their number
    (the length-normalised form IPO uses)."""
    b, t, v = logits.shape
    token_nll = F.cross_entropy(logits.float().reshape(b * t, v), target_ids.reshape(b * t),
                                ignore_index=IGNORE, reduction="none").view(b, t)
    total = -token_nll.sum(dim=1)  # ignored positions contribute exactly 0
    if average:
        return total / (target_ids != IGNORE).sum(dim=1).clamp(min=1)
    return total


def _sigmoid(chosen: Tensor, rejected: Tensor, beta: float, eps: float, *_: Tensor | None
             ) -> Tensor:
    h = chosen - rejected
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _robust(chosen: Tensor, rejected: Tensor, beta: float, eps: float, *_: Tensor | None
            ) -> Tensor:
    h = chosen - rejected
    return ((-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h))
            / (1.0 - 2.0 * eps))


def _hinge(chosen: Tensor, rejected: Tensor, beta: float, *_: object) -> Tensor:
    return torch.relu(1.0 - beta * (chosen - rejected))


def _ipo(chosen: Tensor, rejected: Tensor, beta: float, eps: float,
         chosen_lengths: Tensor | None, rejected_lengths: Tensor | None) -> Tensor:
    h = chosen - rejected
    if chosen_lengths is not None and rejected_lengths is not None:
        h = (chosen / chosen_lengths.float().clamp(min=1.0)
             - rejected / rejected_lengths.float().clamp(min=1.0))
    return (h - 1.0 / (2.0 * beta)).square()


def _kto_pair(chosen: Tensor, rejected: Tensor, beta: float, *_: object) -> Tensor:
    z_chosen = chosen.detach().mean().clamp(min=0.0)
    z_rejected = rejected.detach().mean().clamp(min=0.0)
    return 0.5 * ((1.0 - torch.sigmoid(beta * (chosen - z_rejected)))
                  + (1.0 - torch.sigmoid(beta * (z_chosen - rejected))))


# Kind -> (chosen log-ratios, rejected log-ratios, beta, label smoothing, chosen lengths,
# rejected lengths) -> one loss per pair; see preference_loss for each formula.
_PREFERENCE: dict[str, Callable[..., Tensor]] = {
    "sigmoid": _sigmoid, "robust": _robust, "ipo": _ipo, "hinge": _hinge, "kto_pair": _kto_pair,
}
PREFERENCE_LOSSES = tuple(_PREFERENCE)


@dataclass
class PreferenceOutput:
    losses: Tensor  # (B,) one loss per pair
    chosen_rewards: Tensor  # (B,) beta * (log pi - log pi_ref) of the chosen answer, detached
    rejected_rewards: Tensor  # (B,) the same for the rejected answer

    @property
    def loss(self) -> Tensor:
        return self.losses.mean()

    @property
    def margins(self) -> Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        """Fraction of pairs where the implicit reward ranks the chosen answer strictly higher."""
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())

    def metrics(self) -> dict[str, float]:
        return {
            "rewards_chosen": float(self.chosen_rewards.mean()),
            "rewards_rejected": float(self.rejected_rewards.mean()),
            "reward_margin": float(self.margins.mean()),
            "reward_accuracy": self.accuracy,
        }


def preference_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
                    kind: str = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
                    chosen_lengths: Tensor | None = None,
                    rejected_lengths: Tensor | None = None) -> PreferenceOutput:
    """DPO-family losses on (B,) sequence log-probs (summed over response tokens).

    With h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) and eps = label_smoothing:
    - "sigmoid": DPO, -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h); eps > 0 is
      conservative DPO (cDPO, labels flipped with probability eps).
    - "robust": rDPO, the unbiased form
      (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps).
    - "ipo": (h - 1 / (2 beta))^2. Given chosen/rejected_lengths (response token counts),
      each log-ratio is first divided by its length, as TRL and the IPO authors do; without
      them h is the summed form of the paper's equation.
    - "hinge": relu(1 - beta h) (SLiC).
    - "kto_pair": KTO on pairs: 1/2 [(1 - sig(beta (rho_c - z_r))) + (1 - sig(beta (z_c - rho_r)))]
      with rho the log-ratios and z_c, z_r the batch means of the chosen/rejected log-ratios
      clamped at 0: each side's reference point comes from the other side. z is detached (the
      KTO paper does not backpropagate through its reference point); the values equal the
      kto_pair loss that older TRL versions had.
    Rewards are beta * (log pi - log ref), detached, for logging."""
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; known: {', '.join(PREFERENCE_LOSSES)}")
    if not beta > 0.0:
        raise ValueError(f"beta must be positive, got {beta}")
    if label_smoothing and kind not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to the sigmoid and robust losses, not {kind!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    chosen = policy_chosen_logps.float() - reference_chosen_logps.detach().float()
    rejected = policy_rejected_logps.float() - reference_rejected_logps.detach().float()
    if kind == "ipo" and (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo needs both chosen_lengths and rejected_lengths, or neither")
    losses = _PREFERENCE[kind](chosen, rejected, beta, label_smoothing,
                               chosen_lengths, rejected_lengths)
    return PreferenceOutput(losses, beta * chosen.detach(), beta * rejected.detach())


__all__ = [
    "DIVERGENCES",
    "KD_MODES",
    "PREFERENCE_LOSSES",
    "RELATION_KINDS",
    "PreferenceOutput",
    "distill_loss",
    "distill_loss_topk",
    "forward_kl",
    "jensen_shannon",
    "kd_mask",
    "preference_loss",
    "relation_distill_loss",
    "reverse_kl",
    "self_similarity",
    "sequence_logps",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
]
