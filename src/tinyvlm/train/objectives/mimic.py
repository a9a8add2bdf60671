"""Mimic distillation (LLaVA-MoD stage 1, LLaVA-KD's MDist + RDist): the student matches a
frozen teacher's next-token distributions on the response tokens, online or from an offline
top-k cache. The teacher reads its own batch of the same conversations; the two are aligned
position by position on the tokens distilled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tinyvlm.config import DataConfig, MimicConfig, StageConfig
from tinyvlm.data.collate import IGNORE, Batch
from tinyvlm.data.conversation import Conversation, filter_types
from tinyvlm.data.labelled import is_labelled
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM, VLMOutput
from tinyvlm.train.losses import (
    DIVERGENCES,
    KD_MODES,
    RELATION_KINDS,
    align_answers,
    distill_loss,
    distill_loss_topk,
    kd_mask,
    relation_distill_loss,
    uld_loss,
)
from tinyvlm.train.objectives.base import LossOutput, TrainData, stage_label, token_cross_entropy
from tinyvlm.train.objectives.sft import SFT
from tinyvlm.train.stage_data import unlabelled_conversations
from tinyvlm.train.teacher import FrozenModel, Teacher, answer_questions, load_teacher
from tinyvlm.train.teacher_cache import TeacherCache, cache_key

# The teacher's answers to the unlabelled questions, by (teacher, data file, split).
_ANSWERS: dict[tuple[Any, ...], list[Conversation]] = {}


def _stamp(where: Any) -> tuple[float, ...]:
    """When a teacher directory's files last changed: a retrained teacher is another one."""
    if where is None or not Path(where).is_dir():
        return ()
    return tuple(sorted(f.stat().st_mtime for f in Path(where).iterdir() if f.is_file()))


@dataclass
class MimicBatch:
    """The student's batch and, when the teacher reads the conversations differently (another
    tokenizer layout, resolution or tokens per image), the teacher's own batch of them."""

    student: Batch
    teacher: Batch | None = None  # None: the teacher reads the student's batch
    # (B,) False for conversations about unlabelled images (teacher's answers: no CE); None:
    # all labelled
    labelled: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.student.num_tokens

    def to(self, device: torch.device | str) -> MimicBatch:
        return MimicBatch(self.student.to(device),
                          None if self.teacher is None else self.teacher.to(device),
                          None if self.labelled is None else self.labelled.to(device))


def row_flags(convs: Sequence[Conversation]) -> Tensor | None:
    """Which conversations are labelled; None when all are."""
    flags = [is_labelled(c) for c in convs]
    return None if all(flags) else torch.tensor(flags)


@dataclass
class CachedBatch:
    batch: Batch
    values: Tensor  # (N, k) teacher top-k logits at the batch's response positions, in order
    indices: Tensor  # (N, k)

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens

    def to(self, device: torch.device | str) -> CachedBatch:
        return CachedBatch(self.batch.to(device), self.values.to(device),
                           self.indices.to(device))


def visual_features(hidden: Tensor, input_ids: Tensor, image_token_id: int,
                    per_image: int) -> Tensor:
    """(images, per_image, dim): the hidden states at the image placeholders, image by image."""
    feats = hidden[input_ids == image_token_id]
    return feats.view(-1, per_image, hidden.shape[-1])


def aligned(student: Tensor, s_mask: Tensor, teacher: Tensor, t_mask: Tensor) -> tuple[Tensor,
                                                                                       Tensor]:
    """The selected rows of each side, in order: (N, V) and (N, V). The two batches must
    select the same number of positions (the same answers, token for token)."""
    s, t = student[s_mask], teacher.detach()[t_mask]
    if s.shape[0] != t.shape[0]:
        raise InputError(f"teacher and student distil {t.shape[0]} and {s.shape[0]} positions: "
                         "their batches do not hold the same answer tokens")
    return s, t


class Mimic(SFT):
    """CE on the answers plus a divergence to the teacher at the selected positions
    (response tokens by default), optionally RDist on the visual tokens."""

    name = "mimic"

    @classmethod
    def check(cls, stage: StageConfig) -> None:
        where = stage_label(stage, "mimic")
        cfg = stage.mimic
        if cfg is None:
            raise InputError(f"{where}: objective 'mimic' needs a 'mimic' section")
        kinds = [*DIVERGENCES, "uld"]
        checks = [(cfg.kind in kinds, f"mimic.kind must be one of {kinds}"),
                  (cfg.kind != "uld" or (cfg.tokens == "response" and cfg.cache is None
                                         and not cfg.rdist_weight),
                   "mimic.kind 'uld' distils response tokens of a running teacher "
                   "(tokens: response, no cache, no rdist)"),
                  (cfg.tokens in KD_MODES, f"mimic.tokens must be one of {list(KD_MODES)}"),
                  (cfg.rdist_kind in RELATION_KINDS,
                   f"mimic.rdist_kind must be one of {list(RELATION_KINDS)}"),
                  (cfg.temperature > 0, "mimic.temperature must be > 0"),
                  (cfg.teacher_backend in ("auto", "tinyvlm", "transformers"),
                   "mimic.teacher_backend must be auto, tinyvlm or transformers"),
                  (cfg.cache is not None or bool(cfg.teacher),
                   "mimic.teacher (a model directory) is required"),
                  (not (cfg.unlabelled or cfg.only_correct) or (cfg.cache is None
                                                                 and cfg.kind != "uld"),
                   "mimic.unlabelled and mimic.only_correct need a running tinyvlm teacher "
                   "(no cache, not uld)")]
        for ok, message in checks:
            if not ok:
                raise InputError(f"{where}: {message}")
        if cfg.cache is not None and (cfg.tokens != "response" or cfg.kind != "forward_kl"
                                      or cfg.rdist_weight):
            raise InputError(f"{where}: a teacher cache holds response-token top-k logits: "
                             "it serves forward_kl on response tokens, without rdist")

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        if stage is None:
            raise InputError("mimic: objective 'mimic' needs a 'mimic' section")
        self.check(stage)
        assert stage.mimic is not None
        self.cfg: MimicConfig = stage.mimic
        self.image_token_id = model.config.image_token_id
        self.image_tokens = model.image_tokens
        # Kept in a list so that nn.Module does not register the teacher as a submodule: it
        # must stay out of parameters(), the optimizer and checkpoints.
        self._teacher: list[Teacher] = []
        self._shared = True
        if self.cfg.cache is None:
            device = next(model.parameters()).device
            teacher = load_teacher(self.cfg.teacher, self.cfg.teacher_dtype, device,
                                   self.cfg.teacher_backend)
            if self.cfg.kind != "uld":  # ULD compares sorted distributions: any vocabulary
                teacher.check_compatible(model)
            self._teacher.append(teacher)
            self._shared = self.cfg.kind != "uld" and teacher.same_batches(model)

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher[0] if self._teacher else None

    def frozen_models(self) -> list[nn.Module]:
        # A teacher run by transformers stays replicated.
        return [t.model for t in self._teacher if isinstance(t, FrozenModel)]

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> TrainData:
        source = super().data(model, config, stage)
        if self.cfg.cache is not None:
            return self._cached(model, config, stage, source)
        if self.cfg.unlabelled:
            source = replace(source, items=[*source.items,
                                            *self._answered(config, stage)])
        if self._shared:
            return replace(source, collate=lambda convs: MimicBatch(source.collate(convs),
                                                                    None, row_flags(convs)))
        teacher, student = self.teacher, source.collate
        assert teacher is not None

        def collate(convs: Sequence[Any]) -> MimicBatch:
            return MimicBatch(student(convs), teacher.collate(student.fitted(convs)),
                              row_flags(convs))

        return replace(source, collate=collate)

    def _answered(self, config: DataConfig, stage: StageConfig) -> list[Conversation]:
        """The questions about the unlabelled images with the teacher's greedy answers."""
        teacher = self.teacher
        if not isinstance(teacher, FrozenModel):
            raise InputError(f"{stage_label(stage, 'mimic')}: mimic.unlabelled needs a "
                             "tinyvlm teacher to answer the unlabelled questions")
        # Every question once per teacher and split: the stages of a curriculum that keep
        # other question types reuse the answers.
        key = (str(teacher.where), _stamp(teacher.where), config.path,
               stage.train or config.train, config.labelled_fraction, config.labelled_seed)
        if key not in _ANSWERS or teacher.where is None:
            questions = unlabelled_conversations(config, replace(stage, question_types=[]))
            if not questions:
                raise InputError(f"{stage_label(stage, 'mimic')}: mimic.unlabelled needs "
                                 "unlabelled images: set data.labelled_fraction below 1")
            _ANSWERS.clear()  # one split's answers at a time
            _ANSWERS[key] = answer_questions(teacher.model, questions)
        return filter_types(_ANSWERS[key], stage.question_types)

    def _cached(self, model: TinyVLM, config: DataConfig, stage: StageConfig,
                source: TrainData) -> TrainData:
        assert self.cfg.cache is not None
        cache = TeacherCache(self.cfg.cache)
        cache.check(len(source.items), cache_key(model, config, stage))
        items = list(enumerate(source.items))

        def collate(rows: Sequence[tuple[int, Any]]) -> CachedBatch:
            batch = source.collate([conv for _, conv in rows])
            values, indices = cache.rows([i for i, _ in rows])
            assert batch.target_ids is not None
            if values.shape[0] != int((batch.target_ids != IGNORE).sum()):
                raise InputError("the cache's response positions do not match this stage's "
                                 "batches (another tokenizer or max_seq_len?)", cache.dir)
            return CachedBatch(batch, values, indices)

        return TrainData(items, collate, lambda row: row[1].images, source.store)

    def forward(self, model: TinyVLM, batch: MimicBatch | CachedBatch) -> LossOutput:
        b = batch.batch if isinstance(batch, CachedBatch) else batch.student
        assert b.target_ids is not None
        out = model(b.input_ids, b.attention_mask, b.pixel_values, image_rows=b.image_rows)
        assert out.logits is not None
        labelled = batch.labelled if isinstance(batch, MimicBatch) else None
        ce_targets = b.target_ids if labelled is None else b.target_ids.masked_fill(
            ~labelled[:, None], IGNORE)  # the teacher's own answers are no labels
        ce, n = token_cross_entropy(out.logits, ce_targets)
        if labelled is not None:  # micro-batches weigh by every distilled answer token
            n = int((b.target_ids != IGNORE).sum())
        cfg = self.cfg
        mask = kd_mask(b.target_ids, b.attention_mask, b.input_ids, self.image_token_id,
                       cfg.tokens)
        teacher_out = None
        if isinstance(batch, CachedBatch):
            kd, _ = distill_loss_topk(out.logits, batch.values, batch.indices, mask,
                                      cfg.temperature)
        else:
            teacher_batch = batch.teacher if batch.teacher is not None else b
            teacher_out, kd = self._kd(out, mask, b, teacher_batch, labelled)
        loss = cfg.ce_weight * ce + cfg.kd_weight * kd
        metrics = {"ce": float(ce.detach()), "kd": float(kd.detach())}
        if cfg.rdist_weight and teacher_out is not None and b.pixel_values is not None:
            rdist = self._rdist(out, b, teacher_out, batch.teacher or b)
            loss = loss + cfg.rdist_weight * rdist
            metrics["rdist"] = float(rdist.detach())
        # Only the student's records: the teacher's routers (if any) are not trained.
        return LossOutput(loss, n, metrics, out.records)

    def _kd(self, out: VLMOutput, mask: Tensor, b: Batch, teacher_batch: Batch,
            labelled: Tensor | None = None) -> tuple[VLMOutput, Tensor]:
        teacher = self.teacher
        assert teacher is not None and out.logits is not None
        teacher_out = teacher(teacher_batch)
        assert teacher_out.logits is not None and teacher_batch.target_ids is not None
        t_mask = mask if teacher_batch is b else kd_mask(
            teacher_batch.target_ids, teacher_batch.attention_mask, teacher_batch.input_ids,
            teacher.image_token_id, self.cfg.tokens)
        cfg = self.cfg
        if cfg.kind == "uld":
            try:
                s, t = align_answers(out.logits, mask, teacher_out.logits, t_mask)
            except ValueError as e:
                raise InputError(f"uld: {e}") from None
            return teacher_out, uld_loss(s, t, cfg.temperature)
        s, t = aligned(out.logits, mask, teacher_out.logits, t_mask)
        if cfg.only_correct:  # the labelled positions where the teacher's argmax is the label
            assert b.target_ids is not None
            right = t.argmax(-1) == b.target_ids[mask]
            if labelled is not None:  # on its own answers the teacher is right by definition
                right |= ~labelled[:, None].expand_as(mask)[mask]
            s, t = s[right], t[right]
            if not len(s):
                return teacher_out, out.logits.sum() * 0.0
        kw = {"beta": cfg.beta} if cfg.kind == "js" else (
            {"alpha": cfg.alpha} if cfg.kind.startswith("skew") else {})
        kd, _ = distill_loss(s, t, None, cfg.kind, cfg.temperature, **kw)
        return teacher_out, kd

    def _rdist(self, out: VLMOutput, b: Batch, teacher_out: VLMOutput, teacher_batch: Batch
               ) -> Tensor:
        teacher = self.teacher
        assert teacher is not None
        if teacher.image_tokens != self.image_tokens:
            raise InputError(f"rdist compares visual tokens one to one: the teacher has "
                             f"{teacher.image_tokens} per image, the student {self.image_tokens}")
        student_feats = visual_features(out.hidden, b.input_ids, self.image_token_id,
                                        self.image_tokens)
        teacher_feats = visual_features(teacher_out.hidden.float(), teacher_batch.input_ids,
                                        teacher.image_token_id, self.image_tokens)
        rdist, _ = relation_distill_loss(student_feats, teacher_feats, kind=self.cfg.rdist_kind)
        return rdist
