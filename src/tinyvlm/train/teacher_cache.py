"""The offline teacher cache: a teacher's top-k logits at every response position of a
training file, written once (`tinyvlm distill cache-teacher`) and read by the mimic objective
instead of running the teacher."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tinyvlm.config import DataConfig, StageConfig
from tinyvlm.data.collate import IGNORE
from tinyvlm.errors import InputError
from tinyvlm.io import atomic_path, read_json, write_json
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.progress import Progress
from tinyvlm.train.runtime import Runtime
from tinyvlm.train.stage_data import sft_collator, stage_conversations
from tinyvlm.train.teacher import FrozenModel

CACHE_VERSION = 1


def cache_key(student: TinyVLM, data: DataConfig, stage: StageConfig) -> dict[str, Any]:
    """What decides the cached positions: the training file and filter, the tokenizer and
    the sequence length."""
    assert student.tokenizer is not None
    vocab = sorted(student.tokenizer.backend.get_vocab().items())
    return {"train_file": Path(stage.train or data.train).name,
            "question_types": list(stage.question_types),
            "labelled": ([data.labelled_fraction, data.labelled_seed]
                         if stage.images == "labelled" else "all"),
            "max_len": data.max_seq_len or student.config.language.max_seq_len,
            "image_tokens": student.image_tokens,
            "vocab_sha256": hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]}


# ----------------------------------------------------------------------------- offline cache


def shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard:05d}.safetensors"


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
        return shard_path(self.dir, shard)

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
                  values_dtype: str = "fp16", progress: bool = True,
                  runtime: Runtime | None = None) -> Path:
    """Write the teacher's top-k logits for every response position of the stage's data.
    Under torchrun each process writes every world-th missing shard and the main process
    checks the whole cache once all are written.

    The student (its tokenizer and image-token layout) defines the positions, so the cached
    rows are exactly those the mimic objective distils; the teacher reads its own batches of
    the same conversations. Values are stored in fp16 by default (half the disk; about 3
    significant digits), fp32 on request."""
    stored = {"fp16": torch.float16, "fp32": torch.float32}
    for name, value in (("top_k", top_k), ("shard_size", shard_size), ("batch_size", batch_size)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if values_dtype not in stored:
        raise InputError(f"values dtype must be fp16 or fp32, got {values_dtype!r}")
    runtime = runtime or Runtime()
    teacher = FrozenModel.from_pretrained(teacher_dir, dtype, runtime.device)
    teacher.check_compatible(student)
    _, items = stage_conversations(data, stage)
    collate = sft_collator(student, data)
    out = Path(out_dir)
    k = min(top_k, teacher.vocab_size)
    shards = math.ceil(len(items) / shard_size)
    meta = {"format_version": CACHE_VERSION, "teacher": str(teacher_dir), "top_k": k,
            "items": len(items), "shard_size": shard_size, "shards": shards,
            "values_dtype": values_dtype, **cache_key(student, data, stage)}
    meta_path = out / "cache.json"
    if meta_path.is_file() and read_json(meta_path) != meta:
        raise InputError("a different cache is already there (other teacher, data or top-k); "
                         "choose another --out", out)
    # Every process lists the missing shards before any of them writes one: listed after,
    # a fast process's new shard would shift a slow one's share.
    missing = [s for s in range(shards) if not shard_path(out, s).is_file()]
    if runtime.is_main:
        write_json(meta_path, meta)
    runtime.barrier()
    cache = TeacherCache(out)
    todo = list(runtime.shard(missing))
    mine = sum(len(items[s * shard_size : (s + 1) * shard_size]) for s in todo)
    bar = Progress(mine, "teacher top-k" + (" (this process's shards)" if runtime.world_size
                                           > 1 else ""), "conv", enabled=progress
                   and runtime.is_main)
    shared = teacher.same_batches(student)
    for s in todo:
        shard = items[s * shard_size : (s + 1) * shard_size]
        values, indices, counts = [], [], []
        for start in range(0, len(shard), batch_size):
            convs = shard[start : start + batch_size]
            batch = collate(convs) if shared else teacher.collate(collate.fitted(convs))
            top, per_row = _top_k(teacher, batch, k)
            values.append(top.values.to(stored[values_dtype]))
            indices.append(top.indices.int())
            counts.extend(per_row)
            bar.update(len(convs))
        with atomic_path(cache.shard_path(s)) as tmp:
            save_file({"values": torch.cat(values).contiguous(),
                       "indices": torch.cat(indices).contiguous(),
                       "counts": torch.tensor(counts, dtype=torch.int64)}, str(tmp))
    bar.close()
    runtime.barrier()  # every process's shards are written
    if runtime.is_main:
        TeacherCache(out).check(len(items), cache_key(student, data, stage))
    return out


def _top_k(teacher: FrozenModel, batch: Any, k: int) -> tuple[Any, list[int]]:
    """The teacher's top-k logits at the batch's response positions, and their count per row
    (the same positions the student's batch of these conversations has)."""
    assert batch.target_ids is not None
    logits = teacher(batch).logits
    assert logits is not None
    mask = (batch.target_ids != IGNORE).to(logits.device)
    return logits[mask].topk(k, dim=-1), mask.sum(1).tolist()
