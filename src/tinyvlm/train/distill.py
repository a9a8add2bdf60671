"""Mimic distillation (LLaVA-MoD stage 1, LLaVA-KD's MDist + RDist): the student matches a
frozen teacher's next-token distributions, online or from an offline top-k cache."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data.collate import IGNORE, Batch
from tinyvlm.errors import InputError
from tinyvlm.io import atomic_path, read_json, write_json
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.losses import (
    DIVERGENCES,
    KD_MODES,
    RELATION_KINDS,
    distill_loss,
    distill_loss_topk,
    kd_mask,
    relation_distill_loss,
)
from tinyvlm.train.objectives import OBJECTIVES, SFT, DataSource, LossOutput, token_cross_entropy
from tinyvlm.train.teacher import FrozenTeacher, Teacher

CACHE_VERSION = 1


def cache_key(student: TinyVLM, data: DataConfig, stage: StageConfig) -> dict[str, Any]:
    """What decides the cached positions: the training file and filter, the tokenizer and
    the sequence length."""
    assert student.tokenizer is not None
    vocab = sorted(student.tokenizer.backend.get_vocab().items())
    return {"train_file": Path(stage.train or data.train).name,
            "question_types": list(stage.question_types),
            "max_len": data.max_seq_len or student.config.language.max_seq_len,
            "image_tokens": student.image_tokens,
            "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]}


@dataclass
class CachedBatch:
    batch: Batch
    values: Tensor  # (N, k) teacher top-k logits at the batch's response positions, in order
    indices: Tensor  # (N, k)

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens


def _visual_features(hidden: Tensor, input_ids: Tensor, image_token_id: int,
                     per_image: int) -> Tensor:
    """(images, per_image, dim): the hidden states at the image placeholders, image by image."""
    feats = hidden[input_ids == image_token_id]
    return feats.view(-1, per_image, hidden.shape[-1])


class Mimic(SFT):
    """CE on the answers plus a divergence to the teacher at the selected positions
    (response tokens by default), optionally RDist on the visual tokens."""

    name = "mimic"

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        cfg = stage.distill if stage is not None else None
        where = f"stage '{stage.name}'" if stage is not None else "mimic"
        if cfg is None:
            raise InputError(f"{where}: objective 'mimic' needs a 'distill' section")
        checks = [(cfg.kind in DIVERGENCES, f"distill.kind must be one of {list(DIVERGENCES)}"),
                  (cfg.tokens in KD_MODES, f"distill.tokens must be one of {list(KD_MODES)}"),
                  (cfg.rdist_kind in RELATION_KINDS,
                   f"distill.rdist_kind must be one of {list(RELATION_KINDS)}"),
                  (cfg.temperature > 0, "distill.temperature must be > 0")]
        for ok, message in checks:
            if not ok:
                raise InputError(f"{where}: {message}")
        if cfg.cache is not None and (cfg.tokens != "response" or cfg.kind != "forward_kl"
                                      or cfg.rdist_weight):
            raise InputError(f"{where}: a teacher cache holds response-token top-k logits: "
                             "it serves forward_kl on response tokens, without rdist")
        self.cfg = cfg
        self.image_token_id = model.config.image_token_id
        self.image_tokens = model.image_tokens
        # Kept in a list so that nn.Module does not register the teacher as a submodule: it
        # must stay out of parameters(), the optimizer and checkpoints.
        self._teacher: list[Teacher] = []
        if cfg.cache is None:
            if not cfg.teacher:
                raise InputError(f"{where}: distill.teacher (a model directory) is required")
            teacher = FrozenTeacher.from_pretrained(cfg.teacher, cfg.teacher_dtype)
            teacher.check_compatible(model)
            self._teacher.append(teacher)

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher[0] if self._teacher else None

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> DataSource:
        source = super().data(model, config, stage)
        if self.cfg.cache is None:
            return source
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

        return DataSource(items, collate)

    def forward(self, model: TinyVLM, batch: Batch | CachedBatch) -> LossOutput:
        cached = batch if isinstance(batch, CachedBatch) else None
        b = cached.batch if cached is not None else batch
        assert isinstance(b, Batch) and b.target_ids is not None
        out = model(b.input_ids, b.attention_mask, b.pixel_values)
        assert out.logits is not None
        ce, n = token_cross_entropy(out.logits, b.target_ids)
        cfg = self.cfg
        mask = kd_mask(b.target_ids, b.attention_mask, b.input_ids, self.image_token_id,
                       cfg.tokens)
        teacher_out = None
        if cached is not None:
            kd, _ = distill_loss_topk(out.logits, cached.values, cached.indices, mask,
                                      cfg.temperature)
        else:
            assert self.teacher is not None
            teacher_out = self.teacher(b)
            kw = {"beta": cfg.beta} if cfg.kind == "js" else (
                {"alpha": cfg.alpha} if cfg.kind.startswith("skew") else {})
            kd, _ = distill_loss(out.logits, teacher_out.logits, mask, cfg.kind,
                                 cfg.temperature, **kw)
        loss = cfg.ce_weight * ce + cfg.kd_weight * kd
        metrics = {"ce": float(ce.detach()), "kd": float(kd.detach())}
        if cfg.rdist_weight and teacher_out is not None and b.pixel_values is not None:
            student_feats = _visual_features(out.hidden, b.input_ids, self.image_token_id,
                                             self.image_tokens)
            teacher_feats = _visual_features(teacher_out.hidden.float(), b.input_ids,
                                             self.image_token_id, self.image_tokens)
            rdist, _ = relation_distill_loss(student_feats, teacher_feats, kind=cfg.rdist_kind)
            loss = loss + cfg.rdist_weight * rdist
            metrics["rdist"] = float(rdist.detach())
        # Only the student's records: the teacher's routers (if any) are not trained.
        return LossOutput(loss, n, metrics, out.records)


OBJECTIVES["mimic"] = Mimic


# ----------------------------------------------------------------------------- offline cache


class TeacherCache:
    """The teacher's top-k logits (fp16 values, int32 vocabulary indices) at every response
    position of a training file, in shards written atomically: `tinyvlm distill
    cache-teacher` resumes at the first missing shard."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        meta_path = self.dir / "cache.json"
        if not meta_path.is_file():
            raise InputError("not a teacher cache (cache.json is missing)", self.dir)
        self.meta = read_json(meta_path)
        if self.meta.get("format_version") != CACHE_VERSION:
            raise InputError(f"unsupported cache format {self.meta.get('format_version')!r}",
                             meta_path)
        self._values: list[Tensor] = []
        self._indices: list[Tensor] = []
        self._offsets: list[int] = []

    def check(self, n_items: int, key: dict[str, Any]) -> None:
        """The cache was made for this data, tokenizer and sequence length, and is complete."""
        for name, value in key.items():
            if self.meta.get(name) != value:
                raise InputError(f"the cache was made with {name} {self.meta.get(name)!r}, "
                                 f"this stage has {value!r}", self.dir)
        if self.meta["items"] != n_items:
            raise InputError(f"the cache covers {self.meta['items']} conversations, the stage's "
                             f"data has {n_items}", self.dir)
        missing = [s for s in range(self.meta["shards"]) if not self.shard_path(s).is_file()]
        if missing:
            raise InputError(f"the cache is incomplete (shards {missing[:3]} missing); run "
                             "`tinyvlm distill cache-teacher` again to finish it", self.dir)

    def shard_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}.safetensors"

    def _load(self) -> None:
        offsets = [0]
        for s in range(self.meta["shards"]):
            data = load_file(str(self.shard_path(s)))
            self._values.append(data["values"])
            self._indices.append(data["indices"])
            counts = data["counts"].tolist()
            for c in counts:
                offsets.append(offsets[-1] + c)
        self._offsets = offsets
        self._all_values = torch.cat(self._values)
        self._all_indices = torch.cat(self._indices)

    def rows(self, items: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(N, k) values (fp32) and indices (int64) of these items' response positions."""
        if not self._offsets:
            self._load()
        spans = [torch.arange(self._offsets[i], self._offsets[i + 1]) for i in items]
        idx = torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)
        return self._all_values[idx].float(), self._all_indices[idx].long()


@torch.no_grad()
def cache_teacher(teacher_dir: str | Path, student: TinyVLM, data: DataConfig,
                  stage: StageConfig, out_dir: str | Path, top_k: int = 64,
                  shard_size: int = 512, batch_size: int = 32, dtype: str = "fp32",
                  values_dtype: str = "fp16", progress: bool = True) -> Path:
    """Write the teacher's top-k logits for every response position of the stage's data.

    The student (its tokenizer and image-token layout) defines the batches, so the cached
    positions are exactly those the mimic objective distils. Values are stored in fp16 by
    default (half the disk; about 3 significant digits), fp32 on request."""
    stored = {"fp16": torch.float16, "fp32": torch.float32}
    if values_dtype not in stored:
        raise InputError(f"values dtype must be fp16 or fp32, got {values_dtype!r}")
    teacher = FrozenTeacher.from_pretrained(teacher_dir, dtype)
    teacher.check_compatible(student)
    source = SFT(student).data(student, data, stage)
    out = Path(out_dir)
    k = min(top_k, teacher.vocab_size)
    shards = math.ceil(len(source.items) / shard_size)
    meta = {"format_version": CACHE_VERSION, "teacher": str(teacher_dir), "top_k": k,
            "items": len(source.items), "shard_size": shard_size, "shards": shards,
            "values_dtype": values_dtype, **cache_key(student, data, stage)}
    meta_path = out / "cache.json"
    if meta_path.is_file() and read_json(meta_path) != meta:
        raise InputError("a different cache is already there (other teacher, data or top-k); "
                         "choose another --out", out)
    write_json(meta_path, meta)
    cache = TeacherCache(out)
    todo = [s for s in range(shards) if not cache.shard_path(s).is_file()]
    bar = tqdm(total=len(source.items), initial=(shards - len(todo)) * shard_size,
               desc="teacher top-k", unit="conv", disable=not progress, dynamic_ncols=True)
    for s in todo:
        items = source.items[s * shard_size : (s + 1) * shard_size]
        values, indices, counts = [], [], []
        for start in range(0, len(items), batch_size):
            batch = source.collate(items[start : start + batch_size])
            assert batch.target_ids is not None
            logits = teacher(batch).logits
            assert logits is not None
            mask = batch.target_ids != IGNORE
            top = logits[mask].topk(k, dim=-1)
            values.append(top.values.to(stored[values_dtype]))
            indices.append(top.indices.int())
            counts.extend(mask.sum(1).tolist())
            bar.update(batch.input_ids.shape[0])
        with atomic_path(cache.shard_path(s)) as tmp:
            save_file({"values": torch.cat(values).contiguous(),
                       "indices": torch.cat(indices).contiguous(),
                       "counts": torch.tensor(counts, dtype=torch.int64)}, str(tmp))
    bar.close()
    return out
