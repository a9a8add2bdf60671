"""Distillation and preference losses: hand-computed values, invariants, and parity with TRL."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tinyvlm.data.collate import IGNORE, shift_targets
from tinyvlm.train.losses import (
    DIVERGENCES,
    distill_loss,
    distill_loss_topk,
    kd_mask,
    preference_loss,
    relation_distill_loss,
    self_similarity,
    sequence_logps,
)

KINDS = list(DIVERGENCES)
KIND_KW: dict[str, dict[str, float]] = {"js": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2},
                                        "skew_reverse_kl": {"alpha": 0.2}}

# ---------------------------------------------------------------------------------------------
# Token selection

PAD, BOS, END, IMG, USER, ASSISTANT = 0, 1, 2, 3, 4, 5
Q1, Q2, A1, A2 = 10, 11, 20, 21


def test_kd_mask_hand_built_example() -> None:
    # [bos, user, img, img, q1, q2, end, assistant, a1, a2, end, pad]
    ids = [BOS, USER, IMG, IMG, Q1, Q2, END, ASSISTANT, A1, A2, END]
    trainable = [False] * 8 + [True] * 3  # the answer a1 a2 end
    targets = shift_targets(ids, trainable)
    # Shifted by one: position 7 (assistant) predicts a1, 8 predicts a2, 9 predicts end.
    assert targets == [IGNORE] * 7 + [A1, A2, END, IGNORE]
    input_ids = torch.tensor([[*ids, PAD]])
    attention = torch.tensor([[1] * 11 + [0]])
    target_ids = torch.tensor([[*targets, IGNORE]])

    def mask(mode: str) -> list[int]:
        return kd_mask(target_ids, attention, input_ids, IMG, mode).int()[0].tolist()

    assert mask("response") == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    # Every real position whose next token is a real text token: not 1 and 2 (next is an
    # image placeholder), not 10 (next is padding), not the padding itself.
    assert mask("text") == [1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert mask("visual") == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    response = kd_mask(target_ids, attention, input_ids, IMG, "response")
    assert target_ids[response].tolist() == [A1, A2, END]
    # The public code's mask, built from the unshifted labels, is one step late: it skips the
    # prediction of a1 and distils the prediction made at the final `end` (over padding).
    unshifted_labels = torch.tensor([[IGNORE] * 8 + [A1, A2, END, IGNORE]])
    assert (unshifted_labels != IGNORE).int()[0].tolist() != mask("response")


@pytest.mark.parametrize("mode", ["response", "text", "visual"])
def test_kd_mask_never_selects_padding(mode: str) -> None:
    ids = [BOS, IMG, IMG, Q1, END, ASSISTANT, A1, END]
    targets = shift_targets(ids, [False] * 6 + [True] * 2)
    # Row 0 right-padded, row 1 left-padded (generation batches), row 2 all padding.
    input_ids = torch.tensor([[*ids, PAD, PAD], [PAD, PAD, *ids], [PAD] * 10])
    attention = torch.tensor([[1] * 8 + [0, 0], [0, 0] + [1] * 8, [0] * 10])
    target_ids = torch.tensor([[*targets, IGNORE, IGNORE], [IGNORE, IGNORE, *targets],
                               [IGNORE] * 10])
    # Padding holding an image-token id or a stray target must not leak in either.
    input_ids[2] = IMG
    target_ids[2, 3] = A1
    selected = kd_mask(target_ids, attention, input_ids, IMG, mode)
    assert not (selected & ~attention.bool()).any()
    assert torch.equal(selected[0, :8], selected[1, 2:])  # same answer, either padding side
    with pytest.raises(ValueError, match="unknown distillation mask"):
        kd_mask(target_ids, attention, input_ids, IMG, "answer")


# ---------------------------------------------------------------------------------------------
# Mimic divergences


def _reference(kind: str, s_logits: Tensor, t_logits: Tensor, temperature: float,
               **kw: float) -> Tensor:
    """Per-position divergence from the textbook formulas, naively, in float64."""
    q = torch.softmax(s_logits.double() / temperature, -1)
    p = torch.softmax(t_logits.double() / temperature, -1)

    def kl(a: Tensor, b: Tensor) -> Tensor:
        return (a * (a.log() - b.log())).sum(-1)

    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "js":
        beta = kw["beta"]
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    alpha = kw["alpha"]
    if kind == "skew_forward_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    return kl(q, (1 - alpha) * p + alpha * q)


@pytest.mark.parametrize("kind", KINDS)
def test_divergences_match_float64_formulas(kind: str) -> None:
    s, t = torch.randn(2, 5, 11) * 3, torch.randn(2, 5, 11) * 3
    mask = torch.rand(2, 5) > 0.3
    loss, n = distill_loss(s, t, mask, kind, temperature=1.5, **KIND_KW.get(kind, {}))
    expected = _reference(kind, s[mask], t[mask], 1.5, **KIND_KW.get(kind, {})).mean() * 1.5**2
    assert n == int(mask.sum())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_kl_is_zero_when_student_equals_teacher(kind: str) -> None:
    logits = (torch.randn(3, 4, 9) * 4).requires_grad_()
    loss, n = distill_loss(logits, logits.detach().clone(), None, kind, temperature=2.0,
                           **KIND_KW.get(kind, {}))
    assert n == 12
    assert abs(float(loss.detach())) < 1e-6
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().max()) < 1e-6


def test_forward_kl_hand_computed_with_temperature_two() -> None:
    # Two positions, three words, T = 2. Position 0: teacher/T = [2, 1, 0], student/T =
    # [0, 1, 2] (the same probabilities reversed), so log p_i - log q_i = [2, 0, -2] and
    # KL = 2 (p_0 - p_2) = 2 (e^2 - 1) / (e^2 + e + 1). Position 1: teacher p = [1/4, 1/4, 1/2],
    # student uniform: KL = 1/2 log(3/4) + 1/2 log(3/2). The loss is their mean times T^2 = 4.
    ln2 = math.log(2.0)
    student = torch.tensor([[[0.0, 2.0, 4.0], [0.0, 0.0, 0.0], [9.0, -9.0, 0.0]]])
    teacher = torch.tensor([[[4.0, 2.0, 0.0], [0.0, 0.0, 2 * ln2], [-9.0, 9.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # the third position must not count
    e = math.e
    kl0 = 2 * (e**2 - 1) / (e**2 + e + 1)
    kl1 = 0.5 * math.log(3 / 4) + 0.5 * math.log(3 / 2)
    loss, n = distill_loss(student, teacher, mask, "forward_kl", temperature=2.0)
    assert n == 2
    assert float(loss) == pytest.approx(4 * (kl0 + kl1) / 2, abs=1e-6)
    unscaled, _ = distill_loss(student / 2, teacher / 2, mask, "forward_kl", temperature=1.0)
    assert float(loss) == pytest.approx(4 * float(unscaled), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_extreme_logits_stay_finite(kind: str) -> None:
    # Probabilities that underflow to exactly 0 in fp32, bf16 inputs, and -inf logits (a
    # masked vocabulary entry on both sides): no NaN in the loss or the gradient.
    student = torch.tensor([[1e4, -1e4, 0.0, -math.inf], [3e4, 0.0, -3e4, -math.inf]])
    teacher = torch.tensor([[-1e4, 1e4, 0.0, -math.inf], [3e4, -3e4, 0.0, -math.inf]])
    student = student.bfloat16().requires_grad_()
    loss, _ = distill_loss(student, teacher.bfloat16(), None, kind, temperature=1.0,
                           **KIND_KW.get(kind, {}))
    loss.backward()
    assert torch.isfinite(loss)
    assert student.grad is not None and torch.isfinite(student.grad).all()
    if kind == "forward_kl":
        # Row 0: the teacher's token has student log-probability -2e4 (bf16 rounds 1e4 to
        # 9984); row 1: both put all their mass on token 0. Mean of the two rows.
        big = float(torch.tensor(1e4).bfloat16())
        assert float(loss.detach()) == pytest.approx(2 * big / 2, rel=1e-6)


def test_distill_loss_rejects_bad_arguments() -> None:
    s = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distill_loss(s, s, None, "kl")
    with pytest.raises(ValueError, match="differ in shape"):
        distill_loss(s, torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(s, s, None, "forward_kl", temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        distill_loss(s, s, None, "js", beta=1.0)
    loss, n = distill_loss(s.requires_grad_(), s, torch.zeros(2, 3, dtype=torch.bool))
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()  # an empty selection still has a graph


@pytest.fixture(scope="module")
def trl_gkd_jsd() -> Callable[..., Tensor]:
    pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental announces itself as unstable
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize(("kind", "beta"), [("js", 0.5), ("js", 0.3), ("forward_kl", 0.0),
                                            ("reverse_kl", 1.0)])
def test_divergences_match_trl_generalized_jsd(trl_gkd_jsd: Callable[..., Tensor], kind: str,
                                               beta: float) -> None:
    # TRL's GKD loss: beta weights the teacher in the mixture, beta = 0 / 1 are the forward /
    # reverse KL; it has no T^2 factor, so ours is divided by T^2.
    s, t = torch.randn(2, 6, 13) * 2, torch.randn(2, 6, 13) * 2
    labels = torch.randint(0, 13, (2, 6)).masked_fill(torch.rand(2, 6) < 0.4, IGNORE)
    kw = {"beta": beta} if kind == "js" else {}
    ours, _ = distill_loss(s, t, labels != IGNORE, kind, temperature=2.0, **kw)
    theirs = trl_gkd_jsd(s, t, labels=labels, beta=beta, temperature=2.0)
    torch.testing.assert_close(ours / 4.0, theirs, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Offline (cached top-k) distillation


def test_cached_top_k_distillation_equals_online_distillation_when_k_equals_vocabulary_size(
) -> None:
    vocab = 17
    student = (torch.randn(2, 6, vocab) * 3).requires_grad_()
    teacher = torch.randn(2, 6, vocab) * 3
    mask = torch.rand(2, 6) > 0.4
    online, n = distill_loss(student, teacher, mask, "forward_kl", temperature=2.0)
    (grad_online,) = torch.autograd.grad(online, student)
    # The cache stores top-k in value order; both layouts: aligned (B, T, k) and rows (N, k).
    values, indices = teacher.topk(vocab, dim=-1)
    for cached in ((values, indices), (values[mask], indices[mask])):
        offline, m = distill_loss_topk(student, *cached, mask, temperature=2.0)
        (grad_offline,) = torch.autograd.grad(offline, student)
        assert m == n
        assert torch.equal(offline, online)
        assert torch.equal(grad_offline, grad_online)


def test_cached_top_k_renormalises_the_teacher() -> None:
    student, teacher = torch.randn(5, 12) * 2, torch.randn(5, 12) * 2
    values, indices = teacher.topk(4, dim=-1)
    loss, n = distill_loss_topk(student, values.half(), indices, None, temperature=1.5)
    # KL(p_topk || q): p restricted to its top 4 and renormalised, q the student's full softmax.
    p = torch.softmax(teacher.double() / 1.5, -1).gather(-1, indices)
    p = p / p.sum(-1, keepdim=True)
    log_q = torch.log_softmax(student.double() / 1.5, -1).gather(-1, indices)
    expected = (p * (p.log() - log_q)).sum(-1).mean() * 1.5**2
    assert n == 5
    # fp16 values, as the cache stores them: agreement to fp16 precision.
    torch.testing.assert_close(loss.double(), expected, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="cached teacher rows"):
        distill_loss_topk(student, values[:3], indices[:3], None)


# ---------------------------------------------------------------------------------------------
# Relation distillation


@pytest.mark.parametrize("kind", ["mse", "l1", "kl", "cosine"])
def test_relation_distillation_compares_across_widths(kind: str) -> None:
    student = torch.randn(2, 5, 8)
    # A width-changing isometry (orthonormal rows) keeps every cosine: same relations.
    basis, _ = torch.linalg.qr(torch.randn(16, 8))
    teacher = student @ basis.T  # (2, 5, 16)
    same, count = relation_distill_loss(student, teacher, kind=kind, temperature=0.5)
    assert count > 0 and abs(float(same)) < 1e-5
    different, _ = relation_distill_loss(student, torch.randn(2, 5, 16), kind=kind)
    assert float(different) > 1e-3


@pytest.mark.parametrize("kind", ["mse", "l1", "kl", "cosine"])
def test_relation_distillation_ignores_masked_tokens(kind: str) -> None:
    student = torch.randn(2, 4, 6, requires_grad=True)
    teacher = torch.randn(2, 4, 10)
    full, count = relation_distill_loss(student, teacher, kind=kind, temperature=0.7)
    # Padding: two garbage tokens appended to each sample, masked out.
    padded_s = torch.cat([student, torch.randn(2, 2, 6) * 50], dim=1)
    padded_t = torch.cat([teacher, torch.randn(2, 2, 10) * 50], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    masked, masked_count = relation_distill_loss(padded_s, padded_t, mask, kind, 0.7)
    torch.testing.assert_close(masked, full)
    assert masked_count == count == {"mse": 32, "l1": 32, "kl": 8, "cosine": 2}[kind]
    masked.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_relation_mse_hand_computed() -> None:
    # Student tokens at 0 and 90 degrees (cosine 0), teacher's at 0 and 60 degrees (cosine
    # 1/2): the two off-diagonal entries differ by 1/2, the diagonal by 0 -> mean (2/4) / 4.
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    teacher = torch.tensor([[[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]]])
    assert self_similarity(teacher)[0, 0, 1] == pytest.approx(0.5)
    loss, count = relation_distill_loss(student, teacher, kind="mse")
    assert count == 4 and float(loss) == pytest.approx(0.125, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Sequence log-probabilities and preference losses


def test_sequence_logps_sums_response_targets() -> None:
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[IGNORE, 3, 5, IGNORE], [1, IGNORE, IGNORE, IGNORE]])
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[0, 1, 3] + logp[0, 2, 5], logp[1, 0, 1]])
    torch.testing.assert_close(sequence_logps(logits, targets), expected)
    torch.testing.assert_close(sequence_logps(logits, targets, average=True),
                               expected / torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize(("kind", "smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.1),
                                                 ("robust", 0.2)])
def test_dpo_loss_is_log_2_when_policy_equals_reference(kind: str, smoothing: float) -> None:
    logps = torch.tensor([-12.0, -3.5, -40.0])
    rejected = torch.tensor([-7.0, -9.0, -1.0])
    out = preference_loss(logps, rejected, logps.clone(), rejected.clone(), kind, beta=0.1,
                          label_smoothing=smoothing)
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2.0)))
    assert out.accuracy == 0.0 and float(out.margins.abs().max()) == 0.0


def _pairs() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    pc, pr, rc, rr = (-torch.rand(6, generator=g) * 30 - 2 for _ in range(4))
    pc[0], pr[0] = rc[0], rr[0]  # a tie: no reward accuracy
    lc, lr = (torch.randint(1, 12, (6,), generator=g) for _ in range(2))
    return pc, pr, rc, rr, lc, lr


def test_kto_pair_hand_computed() -> None:
    # kto_pair is not in TRL 1.16 (it was removed from DPOTrainer): checked by hand instead.
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-14.0, -12.0])
    rc, rr = torch.tensor([-12.0, -19.0]), torch.tensor([-13.0, -13.0])
    beta = 0.5
    # Log-ratios: chosen [2, -1] (mean 0.5), rejected [-1, 1] (mean 0 -> clamp 0).
    sig = torch.sigmoid
    expected = 0.5 * torch.stack([
        (1 - sig(torch.tensor(beta * (2 - 0.0)))) + (1 - sig(torch.tensor(beta * (0.5 + 1)))),
        (1 - sig(torch.tensor(beta * (-1 - 0.0)))) + (1 - sig(torch.tensor(beta * (0.5 - 1)))),
    ])
    out = preference_loss(pc, pr, rc, rr, "kto_pair", beta=beta)
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([1.0, -0.5]))
    assert out.accuracy == 0.5


def test_ipo_without_lengths_is_the_summed_form() -> None:
    out = preference_loss(torch.tensor([-3.0]), torch.tensor([-6.0]), torch.tensor([-4.0]),
                          torch.tensor([-5.0]), "ipo", beta=0.25)
    assert float(out.loss) == pytest.approx((2.0 - 2.0) ** 2)  # h = 2, 1 / (2 beta) = 2
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), "ipo",
                        label_smoothing=0.1)


@pytest.fixture(scope="module")
def trl_dpo(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[float, dict]]:
    """TRL 1.16's DPO loss on given sequence log-probs.

    TRL has no standalone loss function: the loss lives in `DPOTrainer._compute_loss`, which
    runs the policy itself. It is called unbound on a trainer made with `object.__new__`,
    with the attributes its __init__ derives from a real `DPOConfig`, reference log-probs
    passed as precomputed (as `precompute_ref_log_probs=True` does), and a stand-in policy
    that returns the given log-probs as its per-token output. Building a real trainer would
    need a model, tokenizer and dataset, and then the log-probs could not be chosen."""
    pytest.importorskip("trl")
    from trl import DPOConfig, DPOTrainer

    out_dir = str(tmp_path_factory.mktemp("dpo"))

    def run(kind: str, beta: float, smoothing: float, pc: Tensor, pr: Tensor, rc: Tensor,
            rr: Tensor, lc: Tensor, lr: Tensor) -> tuple[float, dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TrainingArguments' own deprecation notices
            args = DPOConfig(output_dir=out_dir, loss_type=[kind], beta=beta,
                             label_smoothing=smoothing, bf16=False, report_to=[],
                             precompute_ref_log_probs=True)
        trainer = object.__new__(DPOTrainer)
        trainer.args = args
        trainer.beta, trainer.label_smoothing = args.beta, args.label_smoothing
        trainer.loss_types = args.loss_type
        trainer.loss_weights = args.loss_weights or [1.0] * len(args.loss_type)
        trainer.ld_alpha, trainer.use_weighting = args.ld_alpha, args.use_weighting
        trainer.f_divergence_type = args.f_divergence_type
        trainer.f_alpha_divergence_coef = args.f_alpha_divergence_coef
        trainer.precompute_ref_logps = args.precompute_ref_log_probs
        trainer.aux_loss_enabled = False
        trainer.model = SimpleNamespace(training=False)  # "eval" metrics
        trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                              gather_for_metrics=lambda x: x)
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        trainer._total_train_tokens, trainer._tp_size = 0, 1
        # Rows [chosen..., rejected...]; column 0 after the prompt token holds the sequence
        # log-prob, the completion mask marks each answer's length (IPO normalises by it).
        lengths = torch.cat([lc, lr])
        b, width = len(pc), int(lengths.max()) + 1
        completion = (torch.arange(width)[None, :] >= 1) & (
            torch.arange(width)[None, :] <= lengths[:, None])
        per_token = torch.zeros(2 * b, width - 1)
        per_token[:, 0] = torch.cat([pc, pr])
        zeros = torch.zeros(2 * b, width - 1)
        outputs = SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                  is_top1=zeros.bool())
        inputs = {"input_ids": torch.zeros(2 * b, width, dtype=torch.long),
                  "attention_mask": torch.ones(2 * b, width, dtype=torch.long),
                  "completion_mask": completion.long(),
                  "ref_chosen_logps": rc, "ref_rejected_logps": rr}
        loss = DPOTrainer._compute_loss(trainer, lambda **_: outputs, inputs, False)
        return float(loss), {k: v[0] for k, v in trainer._metrics["eval"].items()}

    return run


@pytest.mark.parametrize(("kind", "beta", "smoothing"), [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("robust", 0.1, 0.2), ("hinge", 0.1, 0.0),
    ("hinge", 0.05, 0.0), ("ipo", 0.1, 0.0), ("ipo", 1.0, 0.0),
])
def test_preference_losses_match_trl(trl_dpo: Callable[..., tuple[float, dict]], kind: str,
                                     beta: float, smoothing: float) -> None:
    pc, pr, rc, rr, lc, lr = _pairs()
    ours = preference_loss(pc, pr, rc, rr, kind, beta, smoothing, lc, lr)
    for i in range(len(pc)):  # per pair: TRL only returns the batch mean
        one = slice(i, i + 1)
        loss, _ = trl_dpo(kind, beta, smoothing, pc[one], pr[one], rc[one], rr[one], lc[one],
                          lr[one])
        assert float(ours.losses[i]) == pytest.approx(loss, abs=1e-6)
    loss, metrics = trl_dpo(kind, beta, smoothing, pc, pr, rc, rr, lc, lr)
    assert float(ours.loss) == pytest.approx(loss, abs=1e-6)
    assert float(ours.chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
    assert float(ours.rejected_rewards.mean()) == pytest.approx(metrics["rewards/rejected"],
                                                                abs=1e-6)
    assert float(ours.margins.mean()) == pytest.approx(metrics["rewards/margins"], abs=1e-6)
    assert ours.accuracy == pytest.approx(metrics["rewards/accuracies"])


def test_conservative_dpo_matches_trl(trl_dpo: Callable[..., tuple[float, dict]]) -> None:
    # TRL 1.16's "sigmoid" ignores label_smoothing (asserted below, so a change is noticed);
    # its "aot" loss applies the cDPO smoothing to log-ratio differences sorted over the
    # batch, which for a single pair is exactly cDPO.
    pc, pr, rc, rr, lc, lr = _pairs()
    beta, eps = 0.1, 0.15
    ours = preference_loss(pc, pr, rc, rr, "sigmoid", beta, eps)
    plain = preference_loss(pc, pr, rc, rr, "sigmoid", beta, 0.0)
    for i in range(len(pc)):
        one = slice(i, i + 1)
        args = (pc[one], pr[one], rc[one], rr[one], lc[one], lr[one])
        aot, _ = trl_dpo("aot", beta, eps, *args)
        assert float(ours.losses[i]) == pytest.approx(aot, abs=1e-6)
        sigmoid, _ = trl_dpo("sigmoid", beta, eps, *args)
        assert float(plain.losses[i]) == pytest.approx(sigmoid, abs=1e-6)
    h = (pc - rc) - (pr - rr)
    by_hand = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    torch.testing.assert_close(ours.losses, by_hand)
