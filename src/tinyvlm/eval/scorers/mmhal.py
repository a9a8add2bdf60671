"""MMHal-Bench: 96 open questions about OpenImages pictures, the answers rated 0-6 by a judge.

MMHal-Bench's eval_gpt4.py sends each record (image contents, question, human answer, model
answer) to GPT-4 and reads the rating from its reply: the one s in 0..6 for which
"rating: s" appears in the lower-cased reply; zero or several such ratings count as 0 (with a
warning). Then: ``average_score`` = mean rating; ``hallucination_rate`` = share of ratings
below 3 (a fraction); ``per_type`` = the mean rating of each question type, the type taken
from the record's position (i % 8 in the order attribute, adversarial, comparison,
counting, relation, environment, holistic, other, as the released file interleaves them).

The judge is a hook (`Judge`: record -> reply text), never called unless given; so are the
judge's saved replies (eval_gpt4.py's --evaluation file, or a list of strings). Without
either, nothing is rated: the result says so (``judged: false``) and reports what needs no
judge -- the questions per type and how many answers are empty, with their mean length.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import check_convention
from tinyvlm.io import read_json

CONVENTIONS = ("official",)
TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment",
         "holistic", "other")
QUESTIONS = 96
FIELDS = ("question_type", "image_content", "question", "gt_answer", "model_answer")
Judge = Callable[[Mapping[str, Any]], str]


def parse_rating(reply: str) -> int | None:
    """The rating eval_gpt4.py reads from a judge's reply; None when there is not exactly one."""
    low = reply.lower()
    found = [s for s in range(7) if f"rating: {s}" in low]
    return found[0] if len(found) == 1 else None


def reply_text(entry: Any, where: str) -> str:
    """The text of one saved judge reply: a string, or a chat-completion response object."""
    if isinstance(entry, str):
        return entry
    try:
        content = entry["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{where}: expected a reply string or a chat completion "
                         "({choices: [{message: {content}}]})") from None
    if not isinstance(content, str):
        raise InputError(f"{where}: the reply's content is not text")
    return content


def _ask(judge: Judge, record: Mapping[str, Any], i: int) -> str:
    try:
        reply = judge(record)
    except Exception as e:  # the judge is user code: say where it failed, in one line
        raise InputError(f"mmhal: the judge failed on record {i}: "
                         f"{type(e).__name__}: {e}") from None
    return reply_text(reply, f"mmhal: the judge's reply to record {i}")


def _unjudged(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    answers = [str(r.get("model_answer") or "") for r in records]
    words = [len(a.split()) for a in answers if a.strip()]
    by_type: dict[str, int] = {}
    for r in records:
        by_type[str(r.get("question_type"))] = by_type.get(str(r.get("question_type")), 0) + 1
    return {"judged": False,
            "note": "no judge given: ratings, average score and hallucination rate need one "
                    "(pass a judge or the judge's saved replies)",
            "n": len(records), "questions_per_type": by_type,
            "empty_answers": len(answers) - len(words),
            "mean_answer_words": sum(words) / len(words) if words else None}


def score(records: Sequence[Mapping[str, Any]], replies: Sequence[str] | None = None,
          judge: Judge | None = None, convention: str = "official") -> dict[str, Any]:
    """Scores of MMHal-Bench `records` from the judge's `replies` (one per record, in order)
    or from `judge`; with neither, the unjudged summary."""
    check_convention("mmhal", convention, CONVENTIONS)
    if not records:
        raise InputError("mmhal: no records")
    if replies is None and judge is not None:
        replies = [_ask(judge, r, i) for i, r in enumerate(records)]
    if replies is None:
        return {"convention": convention, **_unjudged(records)}
    if len(replies) != len(records):
        raise InputError(f"mmhal: {len(replies)} judge replies for {len(records)} records")
    if len(records) != QUESTIONS:
        warnings.warn(f"mmhal: {len(records)} records (MMHal-Bench has {QUESTIONS}); types "
                      "still follow the position", stacklevel=2)
    misplaced = [i for i, r in enumerate(records)
                 if r.get("question_type") not in (None, TYPES[i % 8])]
    if misplaced:
        warnings.warn(f"mmhal: {len(misplaced)} records are not in the released order (first: "
                      f"#{misplaced[0]} is {records[misplaced[0]].get('question_type')!r}); "
                      "per-type scores follow the position, as eval_gpt4.py does",
                      stacklevel=2)
    ratings: list[int] = []
    unparsed = 0
    for reply in replies:
        rating = parse_rating(reply)
        unparsed += rating is None
        ratings.append(0 if rating is None else rating)
    if unparsed:
        warnings.warn(f"mmhal: {unparsed} judge replies have zero or several ratings and "
                      "count as 0", stacklevel=2)
    per: list[list[int]] = [[] for _ in TYPES]
    for i, rating in enumerate(ratings):
        per[i % 8].append(rating)
    hallucinated = [int(r < 3) for r in ratings]
    return {
        "convention": convention, "judged": True, "unit": "rating 0-6", "n": len(records),
        "average_score": sum(ratings) / len(ratings),
        "hallucination_rate": sum(hallucinated) / len(hallucinated),
        "per_type": {t: sum(v) / len(v) for t, v in zip(TYPES, per, strict=True) if v},
        "ratings": ratings, "unparsed": unparsed,
    }


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """A response file (response_template.json with model_answer filled in)."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise InputError("expected a JSON list of MMHal-Bench records", path)
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise InputError(f"record {i} is not an object", path)
        absent = [k for k in FIELDS if k not in r]
        if absent:
            raise InputError(f"record {i} lacks {', '.join(absent)}", path)
    return data


def load_replies(path: str | Path) -> list[str]:
    """Saved judge replies: eval_gpt4.py's --evaluation file or a JSON list of strings."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError("expected a JSON list of judge replies", path)
    return [reply_text(e, f"{path}: reply {i}") for i, e in enumerate(data)]


def score_files(responses: str | Path, replies: str | Path | None = None,
                judge: Judge | None = None, convention: str = "official") -> dict[str, Any]:
    """Score a response file, from saved judge replies or a judge; unjudged without both."""
    check_convention("mmhal", convention, CONVENTIONS)
    return score(load_records(responses), None if replies is None else load_replies(replies),
                 judge, convention)
