"""Preference distillation (LLaVA-MoD stage 2): building chosen/rejected pairs, reading and
writing them as JSONL, and the `preference` objective (a DPO-family loss against a frozen
reference: the teacher, or the student as the stage starts).

A pair record has the layout TRL and RLAIF-V use, plus provenance:
``{"id", "prompt", "image", "chosen", "rejected", "source", "meta", "history"}``. `prompt` is
the last user message (with `<image>` where the image goes), `history` the earlier
[user, assistant] turns, `image` a path, a list of paths or null, `source` how the pair was
ranked: "ground_truth", "teacher" or "pope".
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from tinyvlm.config import DataConfig, PreferenceConfig, StageConfig
from tinyvlm.data.collate import IGNORE, Batch, PromptCollator, pad, shift_targets
from tinyvlm.data.formats import IMAGE_PLACEHOLDER, Conversation, ImageStore
from tinyvlm.data.tokenizer import Tokenizer, Turn
from tinyvlm.errors import InputError
from tinyvlm.eval.metrics import normalize_answer
from tinyvlm.io import read_jsonl_numbered, write_jsonl
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.losses import PREFERENCE_LOSSES, preference_loss, sequence_logps
from tinyvlm.train.objectives import (
    OBJECTIVES,
    DataSource,
    LossOutput,
    Objective,
    token_cross_entropy,
)
from tinyvlm.train.teacher import DTYPES, FrozenTeacher, Teacher

SOURCES = ("ground_truth", "teacher", "pope")
REFERENCES = ("teacher", "initial")
YES_NO = {"yes": "no", "no": "yes"}


# ----------------------------------------------------------------------------- sequences


def trim_history(history: Sequence[Turn], prompt: str,
                 fits: Callable[[list[Turn], str], bool]) -> tuple[list[Turn], str]:
    """Drop the oldest turns until `fits(history, prompt)`; image placeholders of a dropped
    turn move to the next one, so every image keeps its place in the sequence."""
    history = list(history)
    while not fits(history, prompt):
        if not history:
            raise InputError("too long for the model's max_seq_len, even without history")
        images = history[0][0].count(IMAGE_PLACEHOLDER)
        history = history[1:]
        lead = (IMAGE_PLACEHOLDER + "\n") * images
        if history:
            history[0] = (lead + history[0][0], history[0][1])
        else:
            prompt = lead + prompt
    return history, prompt


def encode_answer(tokenizer: Tokenizer, turns: Sequence[Turn], image_tokens: int
                  ) -> tuple[list[int], list[int]]:
    """Ids of a conversation and its shifted targets, set on the last answer only: earlier
    answers are context, not what the pair compares."""
    ids, trainable = tokenizer.encode_conversation(turns, image_tokens)
    prefix = len(tokenizer.encode_prompt(turns[:-1], turns[-1][0], image_tokens))
    return ids, shift_targets(ids, [False] * prefix + trainable[prefix:])


def _images(record: dict[str, Any]) -> list[Path]:
    image = record.get("image")
    return [] if image is None else [Path(image)] if isinstance(image, str) \
        else [Path(p) for p in image]


@dataclass
class PreferenceBatch:
    """Chosen rows 0..B-1 and rejected rows B..2B-1 of one batch, so the policy (and the
    reference) read both answers in a single forward pass."""

    batch: Batch
    chosen_lengths: Tensor  # (B,) response tokens (answer + end token) of each chosen answer
    rejected_lengths: Tensor  # (B,)

    @property
    def pairs(self) -> int:
        return int(self.chosen_lengths.shape[0])

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens


class PreferenceCollator:
    """Pair records -> a PreferenceBatch; targets only on the answers, right-padded. History
    too long for max_len is trimmed from the front, the same way for both answers."""

    def __init__(self, tokenizer: Tokenizer, images: ImageStore, image_tokens: int,
                 max_len: int):
        self.tokenizer, self.images = tokenizer, images
        self.image_tokens, self.max_len = image_tokens, max_len

    def _length(self, turns: list[Turn]) -> int:
        return len(self.tokenizer.encode_conversation(turns, self.image_tokens)[0])

    def encode(self, record: dict[str, Any]) -> tuple[list[int], list[int], list[int],
                                                      list[int]]:
        answers = (record["chosen"], record["rejected"])
        try:
            history, prompt = trim_history(
                [tuple(t) for t in record.get("history", [])], record["prompt"],
                lambda h, p: all(self._length([*h, (p, a)]) <= self.max_len for a in answers))
        except InputError as e:
            raise InputError(f"pair {record['id']}: {e}") from None
        c_ids, c_tgt = encode_answer(self.tokenizer, [*history, (prompt, answers[0])],
                                     self.image_tokens)
        r_ids, r_tgt = encode_answer(self.tokenizer, [*history, (prompt, answers[1])],
                                     self.image_tokens)
        return c_ids, c_tgt, r_ids, r_tgt

    def __call__(self, records: Sequence[dict[str, Any]]) -> PreferenceBatch:
        encoded = [self.encode(r) for r in records]
        ids = [e[0] for e in encoded] + [e[2] for e in encoded]
        targets = [e[1] for e in encoded] + [e[3] for e in encoded]
        lengths = torch.tensor([sum(t != IGNORE for t in row) for row in targets])
        paths = [p for r in records for p in _images(r)]
        batch = Batch(input_ids=pad(ids, self.tokenizer.pad_id),
                      attention_mask=pad([[1] * len(r) for r in ids], 0),
                      target_ids=pad(targets, IGNORE),
                      pixel_values=self.images.pixels(paths + paths))
        b = len(records)
        return PreferenceBatch(batch, lengths[:b], lengths[b:])


# ----------------------------------------------------------------------------- pair building


@dataclass
class _Prompt:
    id: str
    history: list[Turn]
    question: str
    answer: str  # the ground truth; "" where there is none
    images: list[Path]
    meta: dict[str, Any]

    def conversation(self) -> Conversation:
        return Conversation(self.id, self.images, [*self.history, (self.question, self.answer)])


def _prompts(conversations: Sequence[Conversation], all_turns: bool) -> list[_Prompt]:
    out = []
    for conv in conversations:
        last = len(conv.turns) - 1
        for i in range(last + 1) if all_turns else [last]:
            history, (question, answer) = list(conv.turns[:i]), conv.turns[i]
            n_images = sum(u.count(IMAGE_PLACEHOLDER) for u, _ in conv.turns[: i + 1])
            meta = dict(conv.meta[i]) if conv.meta else {}
            out.append(_Prompt(conv.id if last == 0 else f"{conv.id}#{i}", history, question,
                               answer, conv.images[:n_images], meta))
    return out


def _record(p: _Prompt, chosen: str, rejected: str, source: str,
            meta: dict[str, Any]) -> dict[str, Any]:
    images = [str(Path(x).resolve()) for x in p.images]
    return {"id": p.id, "prompt": p.question,
            "image": None if not images else images[0] if len(images) == 1 else images,
            "chosen": chosen, "rejected": rejected, "source": source,
            "meta": {**p.meta, **meta}, "history": [[u, a] for u, a in p.history]}


def _most_frequent(texts: Sequence[str]) -> str:
    """The most frequent answer by normalised form (ties: the first seen), as first written."""
    counts = Counter(normalize_answer(t) for t in texts)
    best = max(counts.values())
    return next(t for t in texts if counts[normalize_answer(t)] == best)


@torch.no_grad()
def teacher_scores(teacher: Teacher, tokenizer: Tokenizer, image_tokens: int,
                   items: Sequence[tuple[list[Turn], list[Path]]],
                   store: ImageStore) -> list[float]:
    """The teacher's length-normalised log-likelihood (mean log-prob per answer token, the
    end token included) of each conversation's last answer; items are (turns, images)."""
    encoded = [encode_answer(tokenizer, turns, image_tokens) for turns, _ in items]
    ids = [e[0] for e in encoded]
    batch = Batch(input_ids=pad(ids, tokenizer.pad_id),
                  attention_mask=pad([[1] * len(r) for r in ids], 0),
                  target_ids=pad([e[1] for e in encoded], IGNORE),
                  pixel_values=store.pixels([p for _, paths in items for p in paths]))
    logits = teacher(batch.to(next(teacher.model.parameters()).device)).logits
    assert logits is not None and batch.target_ids is not None
    targets = batch.target_ids.to(logits.device)
    return sequence_logps(logits, targets, average=True).tolist()


@torch.no_grad()
def build_pairs(student: TinyVLM, conversations: Sequence[Conversation], n_samples: int = 4,
                temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                teacher: Teacher | None = None, batch_size: int = 16,
                max_new_tokens: int = 16, all_turns: bool = False,
                use_ground_truth: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Sample `n_samples` answers per prompt from the student and rank them into pairs.

    A prompt is a conversation's last user turn with the earlier turns as history (every turn
    with `all_turns`). Where a ground truth exists (a non-empty answer, and
    `use_ground_truth`): chosen = the ground truth, rejected = the most frequent wrong sample
    (normalize_answer decides right and wrong); no pair when every sample is right. Without
    one: the teacher scores each distinct sample by its length-normalised log-likelihood;
    chosen = the best, rejected = the worst; no pair when the scores tie. Sampling is seeded
    by `seed` (for the same inputs and batch_size, the same pairs); batch_size counts prompts,
    each run with its n_samples answers in one generate call."""
    if n_samples < 1:
        raise InputError(f"the number of samples must be at least 1, got {n_samples}")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise InputError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if batch_size < 1 or max_new_tokens < 1:
        raise InputError("batch size and max new tokens must be at least 1")
    tok = student.tokenizer
    if tok is None:
        raise InputError("the student model has no tokenizer")
    prompts = _prompts(conversations, all_turns)
    has_truth = [use_ground_truth and normalize_answer(p.answer) != "" for p in prompts]
    if not all(has_truth) and teacher is None:
        missing = sum(not t for t in has_truth)
        raise InputError(f"{missing} prompts have no ground-truth answer: ranking them needs a "
                         "teacher model")
    if teacher is not None:
        teacher.check_compatible(student)
    image_tokens, max_len = student.image_tokens, student.config.language.max_seq_len
    store = ImageStore(student.config.vision.image_size)
    collate = PromptCollator(tok, store, image_tokens)
    for p in prompts:  # room for the answer: trim the oldest turns of long histories
        try:
            p.history, p.question = trim_history(
                p.history, p.question,
                lambda h, q: len(tok.encode_prompt(h, q, image_tokens)) + max_new_tokens
                <= max_len)
        except InputError as e:
            raise InputError(f"prompt {p.id}: {e}") from None
    device = next(student.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = student.training
    student.eval()
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(prompts), desc="preference pairs", unit="prompt",
               disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            convs = [p.conversation() for p in chunk for _ in range(n_samples)]
            batch = collate(convs).to(device)
            new = student.generate(batch.input_ids, batch.attention_mask, batch.pixel_values,
                                   max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, generator=generator)
            texts = [tok.decode_answer(row) for row in new.tolist()]
            ranked: list[tuple[_Prompt, list[str]]] = []
            for k, p in enumerate(chunk):
                samples = texts[k * n_samples : (k + 1) * n_samples]
                if has_truth[start + k]:
                    truth = normalize_answer(p.answer)
                    wrong = [s for s in samples if normalize_answer(s) != truth]
                    if wrong:
                        records.append(_record(p, p.answer, _most_frequent(wrong),
                                               "ground_truth", {"samples": samples}))
                else:
                    ranked.append((p, samples))
            if ranked:
                records += _rank_by_teacher(ranked, teacher, tok, image_tokens, store)
            bar.update(len(chunk))
            bar.set_postfix(pairs=len(records))
    finally:
        bar.close()
        student.train(was_training)
    return records


def _rank_by_teacher(ranked: list[tuple[_Prompt, list[str]]], teacher: Teacher | None,
                     tok: Tokenizer, image_tokens: int, store: ImageStore
                     ) -> list[dict[str, Any]]:
    assert teacher is not None
    distinct = []
    for _, samples in ranked:
        seen: dict[str, str] = {}
        for s in samples:
            seen.setdefault(normalize_answer(s), s)
        distinct.append(list(seen.values()))
    items = [([*p.history, (p.question, s)], p.images)
             for (p, _), options in zip(ranked, distinct, strict=True) for s in options]
    scores = teacher_scores(teacher, tok, image_tokens, items, store)
    out, at = [], 0
    for (p, samples), options in zip(ranked, distinct, strict=True):
        mine = scores[at : at + len(options)]
        at += len(options)
        best = max(range(len(options)), key=mine.__getitem__)
        worst = min(range(len(options)), key=mine.__getitem__)
        if mine[best] > mine[worst]:
            out.append(_record(p, options[best], options[worst], "teacher",
                               {"samples": samples, "scored": options, "scores": mine}))
    return out


def _is_probe(answer: str, meta: dict[str, Any]) -> bool:
    """A yes/no existence question: typed as one (POPE, ShapesWorld's exist/exist_rel) or,
    for records without meta, any yes/no question."""
    if normalize_answer(answer) not in YES_NO:
        return False
    if not meta:
        return True
    return meta.get("type") == "pope" or "pope" in meta or \
        "EXIST" in (meta.get("capabilities") or [])


def pope_pairs(conversations: Sequence[Conversation]) -> list[dict[str, Any]]:
    """Hallucination pairs from yes/no existence probes: chosen = the correct answer, rejected
    = the opposite one. Needs no sampling, so one pair per probe. The question stands alone
    (no history; the image placeholder moves into it): an object is there or not whatever
    was asked before."""
    records = []
    for p in _prompts(conversations, all_turns=True):
        if not _is_probe(p.answer, p.meta):
            continue
        images = sum(u.count(IMAGE_PLACEHOLDER) for u, _ in p.history)
        p.question = (IMAGE_PLACEHOLDER + "\n") * images + p.question
        p.history = []
        label = normalize_answer(p.answer)
        records.append(_record(p, label, YES_NO[label], "pope", {"label": label}))
    return records


def load_probes(path: str | Path, image_root: str | Path | None = None) -> list[Conversation]:
    """POPE probes as conversations: the official layout (JSONL rows {question_id, image,
    text, label}) or LLaVA conversation records (.json, or .jsonl with `conversations`).
    Image paths are relative to `image_root` (default: the file's directory)."""
    from tinyvlm.data.formats import load_llava

    path = Path(path)
    rows = read_jsonl_numbered(path) if path.suffix == ".jsonl" else []
    if not rows or "conversations" in rows[0][1]:
        return load_llava(path, image_root)
    root = Path(image_root) if image_root is not None else path.parent
    out = []
    for line, row in rows:
        if not (isinstance(row, dict) and isinstance(row.get("text"), str)
                and isinstance(row.get("image"), str)
                and normalize_answer(str(row.get("label", ""))) in YES_NO):
            raise InputError("a POPE row needs 'image', 'text' and a yes/no 'label'", path, line)
        qid = row.get("question_id", line)
        out.append(Conversation(f"{path.stem}-{qid}", [root / row["image"]],
                                [(f"{IMAGE_PLACEHOLDER}\n{row['text']}", str(row["label"]))],
                                [{"type": "pope", "capabilities": ["EXIST"],
                                  "pope": path.stem.removeprefix("pope_")}],
                                f"{path}:{line}"))
    return out


# ----------------------------------------------------------------------------- files


def write_pairs(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write pair records as JSONL, atomically; image paths relative to the file's directory,
    so the file moves together with its images."""
    path = Path(path)
    base = path.resolve().parent

    def portable(record: dict[str, Any]) -> dict[str, Any]:
        paths = _images(record)
        if not paths:
            return record
        rel = [os.path.relpath(p.resolve(), base) for p in paths]
        return {**record, "image": rel[0] if isinstance(record["image"], str) else rel}

    write_jsonl(path, (portable(r) for r in records))
    return path


def _check_record(row: Any, path: Path, line: int, root: Path) -> dict[str, Any]:
    def bad(message: str) -> InputError:
        return InputError(f"bad preference pair: {message}", path, line)

    if not isinstance(row, dict):
        raise bad("not a JSON object")
    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise bad(f"'{key}' must be a string")
    history = row.get("history") or []
    if not (isinstance(history, list) and all(
            isinstance(t, list | tuple) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in history)):
        raise bad("'history' must be a list of [user, assistant] pairs")
    image = row.get("image")
    names = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("'image' must be a path, a list of paths or null")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise bad("'meta' must be an object")
    users = [u for u, _ in history] + [row["prompt"]]
    history, prompt = [[u, a] for u, a in history], row["prompt"]
    placeholders = sum(u.count(IMAGE_PLACEHOLDER) for u in users)
    if names and placeholders == 0:  # TRL / RLAIF-V prompts leave the placeholder out
        if history:
            history[0][0] = f"{IMAGE_PLACEHOLDER}\n{history[0][0]}"
        else:
            prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
        placeholders = len(names)
    if placeholders != len(names):
        raise bad(f"{placeholders} <image> placeholders for {len(names)} images")
    paths = [os.path.normpath(root / n) for n in names]
    return {"id": str(row.get("id", line)), "prompt": prompt,
            "image": None if not paths else paths[0] if isinstance(image, str) else paths,
            "chosen": row["chosen"], "rejected": row["rejected"],
            "source": str(row.get("source", "")), "meta": meta, "history": history}


def load_pairs(path: str | Path, image_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Read pair records (ours, or TRL / RLAIF-V style {prompt, image, chosen, rejected});
    relative image paths are resolved against `image_root` (default: the file's directory).
    A bad record is an InputError naming file:line."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.resolve().parent
    return [_check_record(row, path, line, root) for line, row in read_jsonl_numbered(path)]


# ----------------------------------------------------------------------------- objective


def initial_reference(model: TinyVLM, dtype: str = "fp32") -> FrozenTeacher:
    """A frozen copy of `model` as it is now: the reference of plain DPO."""
    frozen = TinyVLM(copy.deepcopy(model.config), model.tokenizer)
    frozen.load_state_dict(model.state_dict())
    return FrozenTeacher(frozen.to(next(model.parameters()).device), dtype)


class Preference(Objective):
    """DPO-family loss on chosen/rejected pairs, the reference frozen (teacher or initial
    student); optionally plus cross-entropy on the chosen answers."""

    name = "preference"

    def __init__(self, model: TinyVLM, stage: StageConfig | None = None):
        super().__init__(model, stage)
        cfg = (stage.preference if stage is not None else None) or PreferenceConfig()
        where = f"stage '{stage.name}'" if stage is not None else "preference"
        checks = [
            (cfg.loss in PREFERENCE_LOSSES,
             f"preference.loss must be one of {list(PREFERENCE_LOSSES)}, got '{cfg.loss}'"),
            (cfg.beta > 0, "preference.beta must be > 0"),
            (0.0 <= cfg.label_smoothing < 0.5, "preference.label_smoothing must lie in [0, 0.5)"),
            (not cfg.label_smoothing or cfg.loss in ("sigmoid", "robust"),
             "preference.label_smoothing applies to the sigmoid and robust losses only"),
            (cfg.reference in REFERENCES,
             f"preference.reference must be one of {list(REFERENCES)}, got '{cfg.reference}'"),
            (cfg.teacher_dtype in DTYPES,
             f"preference.teacher_dtype must be one of {list(DTYPES)}"),
            (cfg.sft_weight >= 0, "preference.sft_weight must be >= 0"),
            (cfg.reference != "teacher" or bool(cfg.teacher),
             "preference.teacher (a model directory) is required with reference 'teacher' "
             "(or set reference: initial)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"{where}: {message}")
        self.cfg = cfg
        # In a list, so nn.Module does not register the reference: it stays out of
        # parameters(), the optimizer and checkpoints.
        self._reference: list[FrozenTeacher] = []
        if cfg.reference == "teacher":
            teacher = FrozenTeacher.from_pretrained(cfg.teacher, cfg.teacher_dtype)
            teacher.check_compatible(model)
            self._reference.append(teacher)
        else:
            self._reference.append(initial_reference(model, cfg.teacher_dtype))

    @property
    def reference(self) -> FrozenTeacher:
        return self._reference[0]

    def data(self, model: TinyVLM, config: DataConfig, stage: StageConfig) -> DataSource:
        assert model.tokenizer is not None
        name = self.cfg.pairs or stage.train
        if not name:
            raise InputError(f"stage '{stage.name}': objective 'preference' needs a pairs file "
                             "(preference.pairs or the stage's train)")
        path = Path(config.path) / name
        items = load_pairs(path)
        if stage.question_types:
            wanted = set(stage.question_types)
            items = [r for r in items if r["meta"].get("type") in wanted]
        if not items:
            raise InputError(f"stage '{stage.name}': no preference pairs", path)
        max_len = config.max_seq_len or model.config.language.max_seq_len
        collate = PreferenceCollator(model.tokenizer, ImageStore(model.config.vision.image_size),
                                     model.image_tokens, max_len)
        return DataSource(items, collate)

    def forward(self, model: TinyVLM, batch: PreferenceBatch) -> LossOutput:
        b, n = batch.batch, batch.pairs
        assert b.target_ids is not None
        out = model(b.input_ids, b.attention_mask, b.pixel_values)
        assert out.logits is not None
        policy = sequence_logps(out.logits, b.target_ids)
        ref_logits = self.reference(b).logits  # no_grad inside the frozen wrapper
        assert ref_logits is not None
        reference = sequence_logps(ref_logits, b.target_ids).detach()
        cfg = self.cfg
        lengths = ({"chosen_lengths": batch.chosen_lengths,
                    "rejected_lengths": batch.rejected_lengths} if cfg.loss == "ipo" else {})
        pref = preference_loss(policy[:n], policy[n:], reference[:n], reference[n:],
                               cfg.loss, cfg.beta, cfg.label_smoothing, **lengths)
        loss = pref.loss
        metrics = {"preference": float(pref.loss.detach()), **pref.metrics(),
                   "logps_chosen": float(policy[:n].detach().mean()),
                   "logps_rejected": float(policy[n:].detach().mean())}
        if cfg.sft_weight:
            ce, _ = token_cross_entropy(out.logits[:n], b.target_ids[:n])
            loss = loss + cfg.sft_weight * ce
            metrics["ce"] = float(ce.detach())
        # Only the student's records: the loop adds its MoE auxiliary losses once.
        return LossOutput(loss, n, metrics, out.records)


OBJECTIVES["preference"] = Preference

__all__ = [
    "REFERENCES",
    "SOURCES",
    "Preference",
    "PreferenceBatch",
    "PreferenceCollator",
    "build_pairs",
    "encode_answer",
    "initial_reference",
    "load_pairs",
    "load_probes",
    "pope_pairs",
    "teacher_scores",
    "trim_history",
    "write_pairs",
]
