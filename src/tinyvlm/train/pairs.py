"""Building preference pairs (LLaVA-MoD stage 2's data): the student samples answers through
the inference engine, and ground truth or a frozen teacher ranks them; yes/no existence probes
give hallucination pairs without sampling. Records are written by data.pairs."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyvlm.data.answers import normalize_answer
from tinyvlm.data.conversation import (
    IMAGE,
    Conversation,
    Turn,
    count_images,
    drop_oldest,
    standalone,
)
from tinyvlm.data.llava import load_llava
from tinyvlm.data.pope import read_questions, split_name
from tinyvlm.errors import InputError
from tinyvlm.infer import Engine, Sampling
from tinyvlm.io import read_jsonl_numbered
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.progress import Progress
from tinyvlm.train.losses import sequence_logps
from tinyvlm.train.teacher import FrozenModel

YES_NO = {"yes": "no", "no": "yes"}


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
            n_images = count_images([u for u, _ in conv.turns[: i + 1]])
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
def teacher_scores(teacher: FrozenModel, items: Sequence[tuple[list[Turn], list[Path]]]
                   ) -> list[float]:
    """The teacher's length-normalised log-likelihood (mean log-prob per answer token, the
    end token included) of each conversation's last answer, read in the teacher's own
    batch; items are (turns, images)."""
    batch = teacher.answer_batch(items)
    logits = teacher(batch).logits
    assert logits is not None and batch.target_ids is not None
    return sequence_logps(logits, batch.target_ids.to(logits.device), average=True).tolist()


def _check_settings(n_samples: int, temperature: float, top_p: float, batch_size: int,
                    max_new_tokens: int) -> None:
    if n_samples < 1:
        raise InputError(f"the number of samples must be at least 1, got {n_samples}")
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise InputError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if batch_size < 1 or max_new_tokens < 1:
        raise InputError("batch size and max new tokens must be at least 1")


def _fit(prompts: list[_Prompt], student: TinyVLM, max_new_tokens: int) -> None:
    """Room for the answer: trim the oldest turns of long histories (in place)."""
    tok = student.tokenizer
    assert tok is not None
    image_tokens, max_len = student.image_tokens, student.config.language.max_seq_len
    for p in prompts:
        try:
            p.history, p.question = drop_oldest(
                p.history, p.question,
                lambda h, q: len(tok.encode_prompt(h, q, image_tokens)) + max_new_tokens
                <= max_len)
        except ValueError as e:
            raise InputError(f"prompt {p.id}: {e}") from None


@torch.no_grad()
def build_pairs(student: TinyVLM, conversations: Sequence[Conversation], n_samples: int = 4,
                temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                teacher: FrozenModel | None = None, batch_size: int = 16,
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
    _check_settings(n_samples, temperature, top_p, batch_size, max_new_tokens)
    if student.tokenizer is None:
        raise InputError("the student model has no tokenizer")
    prompts = _prompts(conversations, all_turns)
    has_truth = [use_ground_truth and normalize_answer(p.answer) != "" for p in prompts]
    if not all(has_truth) and teacher is None:
        missing = sum(not t for t in has_truth)
        raise InputError(f"{missing} prompts have no ground-truth answer: ranking them needs a "
                         "teacher model")
    if teacher is not None:
        teacher.check_compatible(student)
    _fit(prompts, student, max_new_tokens)
    engine = Engine(student, batch_size * n_samples)
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    was_training = student.training
    records: list[dict[str, Any]] = []
    bar = Progress(len(prompts), "preference pairs", "prompt", enabled=progress)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            # The order of the samples is the seeded generator's: never sorted.
            texts = engine.generate([engine.encode_conversation(p.conversation())
                                     for p in chunk for _ in range(n_samples)],
                                    sampling, generator, sort_by_length=False)
            records += _rank(chunk, has_truth[start : start + len(chunk)], texts, n_samples,
                             teacher)
            bar.update(len(chunk))
            bar.set_postfix(pairs=len(records))
    finally:
        bar.close()
        student.train(was_training)
    return records


def _rank(chunk: list[_Prompt], has_truth: list[bool], texts: list[str], n_samples: int,
          teacher: FrozenModel | None) -> list[dict[str, Any]]:
    """Pairs of one chunk's prompts: by ground truth where there is one, else by the teacher."""
    records, ranked = [], []
    for k, p in enumerate(chunk):
        samples = texts[k * n_samples : (k + 1) * n_samples]
        if has_truth[k]:
            truth = normalize_answer(p.answer)
            wrong = [s for s in samples if normalize_answer(s) != truth]
            if wrong:
                records.append(_record(p, p.answer, _most_frequent(wrong), "ground_truth",
                                       {"samples": samples}))
        else:
            ranked.append((p, samples))
    if ranked:
        assert teacher is not None
        records += _rank_by_teacher(ranked, teacher)
    return records


def _rank_by_teacher(ranked: list[tuple[_Prompt, list[str]]], teacher: FrozenModel
                     ) -> list[dict[str, Any]]:
    distinct = []
    for _, samples in ranked:
        seen: dict[str, str] = {}
        for s in samples:
            seen.setdefault(normalize_answer(s), s)
        distinct.append(list(seen.values()))
    items = [([*p.history, (p.question, s)], p.images)
             for (p, _), options in zip(ranked, distinct, strict=True) for s in options]
    scores = teacher_scores(teacher, items)
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


# ----------------------------------------------------------------------------- probes


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
        p.question, p.history = standalone(p.history, p.question), []
        label = normalize_answer(p.answer)
        records.append(_record(p, label, YES_NO[label], "pope", {"label": label}))
    return records


def load_probes(path: str | Path, image_root: str | Path | None = None) -> list[Conversation]:
    """POPE probes as conversations: the official layout (JSONL rows {question_id, image,
    text, label}) or LLaVA conversation records (.json, or .jsonl with `conversations`).
    Image paths are relative to `image_root` (default: the file's directory)."""
    path = Path(path)
    if path.suffix != ".jsonl" or _is_llava_jsonl(path):
        return load_llava(path, image_root)
    root = Path(image_root) if image_root is not None else path.parent
    split = split_name(path)
    return [Conversation(f"{path.stem}-{q.question_id}", [root / str(q.image)],
                         [(f"{IMAGE}\n{q.text}", str(q.label))],
                         [{"type": "pope", "capabilities": ["EXIST"],
                           "pope": split_name(path, q.category) if q.category else split}],
                         f"{path}:{q.line}")
            for q in read_questions(path, need_label=True)]


def _is_llava_jsonl(path: Path) -> bool:
    rows = read_jsonl_numbered(path)
    return not rows or (isinstance(rows[0][1], dict) and "conversations" in rows[0][1])


# ----------------------------------------------------------------------------- composition


def make_pairs(student: TinyVLM, conversations: Sequence[Conversation],
               probes: Sequence[Conversation] = (), *, samples: int = 4,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
               teacher: FrozenModel | None = None, batch_size: int = 16,
               max_new_tokens: int = 16, all_turns: bool = False,
               use_ground_truth: bool = True, max_prompts: int = 0, max_probes: int = 0,
               balance_yes_no: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Sampled pairs for (at most `max_prompts`, a seeded subset of) the conversations, then
    hallucination pairs for (at most `max_probes` of) the probes: what `tinyvlm preference
    build` and the build_pairs stage write; `balance_yes_no`: see balance_yes_no_pairs."""
    rng = random.Random(seed)
    conversations = list(conversations)
    if max_prompts and len(conversations) > max_prompts:
        conversations = rng.sample(conversations, max_prompts)
    student.eval()
    records = build_pairs(student, conversations, samples, temperature, top_p, seed, teacher,
                          batch_size, max_new_tokens, all_turns=all_turns,
                          use_ground_truth=use_ground_truth, progress=progress) \
        if conversations else []
    extra = pope_pairs(probes)
    if max_probes and len(extra) > max_probes:
        extra = rng.sample(extra, max_probes)
    records += extra
    return balance_yes_no_pairs(records, seed) if balance_yes_no else records


def yes_no_side(record: dict[str, Any]) -> str | None:
    """"yes" or "no" for a pair whose chosen and rejected answers are yes and no (either
    way), the chosen one; None for any other pair."""
    chosen, rejected = normalize_answer(record["chosen"]), normalize_answer(record["rejected"])
    return chosen if YES_NO.get(chosen) == rejected else None


def balance_yes_no_pairs(records: Sequence[dict[str, Any]], seed: int = 0
                         ) -> list[dict[str, Any]]:
    """As many yes-over-no pairs as no-over-yes pairs: a seeded subset of the larger side is
    kept, the other pairs all are, in their order. Sampled pairs come out lopsided when the
    student's wrong answers lean one way; DPO on them moves the answer prior instead of
    the grounding (a student pushed to always say "no")."""
    sides: dict[str, list[int]] = {"yes": [], "no": []}
    for i, r in enumerate(records):
        side = yes_no_side(r)
        if side is not None:
            sides[side].append(i)
    n = min(len(sides["yes"]), len(sides["no"]))
    rng = random.Random(seed)
    keep = set(range(len(records))) - set(sides["yes"]) - set(sides["no"])
    for side in sides.values():
        keep |= set(rng.sample(side, n)) if len(side) > n else set(side)
    return [r for i, r in enumerate(records) if i in keep]
