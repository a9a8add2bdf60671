"""VQAv2 and TextVQA accuracy: min(1, matches / 3) averaged over the 10 leave-one-out subsets.

Conventions (the normalisation and the arithmetic differ, so the numbers do):

- ``official``, variant ``vqav2`` (the VQA API's vqaEval.py as GT-Vision-Lab/VQA has it since
  commit a013f00, "Fixed processing answers bug", March 2021): the prediction and the ten
  human answers lose newlines and tabs and are stripped; then, only when the human answers
  disagree, both the answers and the prediction go through the punctuation rule and the
  number-word, article and contraction rule; when the humans all agree nothing else is
  normalised. Each human answer is left out in turn (answers that are equal as whole records
  are left out together, as the script compares dicts); the question's accuracy is the plain
  mean of the ten values. Overall, per answer type and per question type:
  ``round(100 * sum / n, 2)``.
- ``official-2016``, variant ``vqav2``: what copies of vqaEval.py from before that commit
  (a4f1afd and earlier) compute: the prediction always goes through both rules, the human
  answers only through the punctuation rule and only when they disagree. On adversarial but
  legal inputs the two versions differ by more than ten points.
- ``official``, variant ``textvqa`` (the M4C evaluator LLaVA's eval_textvqa.py uses): both
  sides go through the EvalAI processor (lowercase, drop ',' and '?', split "'s", then the
  same two rules); a prediction scores the leave-one-out mean of its own answer, 0 if no
  human gave it; accuracy = sum / n summed in the answer file's order, printed as
  ``100 * acc`` with two decimals. LLaVA's own answer file (``question_id`` holds the image
  id, repeated when an image has several questions) is paired as eval_textvqa.py pairs it:
  by the image id and the lower-cased question read from the prompt.
- ``lmms-eval`` (lmms-eval since its commit 28ea9a1, August 2025): for vqav2 the prediction
  and the answers lose newlines and tabs and are stripped, then both always go through the
  punctuation and digit/article rules; for textvqa the EvalAI processor on both. A question's
  accuracy is ``statistics.mean`` (exact) of the ten values; overall = sum / n as a fraction,
  not rounded.
- ``lmms-eval-2024`` (vqav2; lmms-eval before July 2025, e.g. 7548ebe1): the full EvalAI
  processor on the prediction; the answers, and the prediction once more, go through the
  punctuation and digit/article rules only when the answers disagree.
- ``vlmevalkit`` (textvqa only): the VQAv2 prediction normalisation applied to both sides,
  except that a period right after a digit stays ("10." does not match "10");
  ``numpy.mean`` per question, ``numpy.mean * 100`` overall.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import (
    check_convention,
    key_of,
    require_same_ids,
    rows_by_id,
    sum_left,
    text_field,
)
from tinyvlm.io import read_json, read_jsonl_numbered

CONVENTIONS = ("official", "official-2016", "lmms-eval", "lmms-eval-2024", "vlmevalkit")
VARIANTS = ("vqav2", "textvqa")

# The punctuation the VQA scripts handle, in the order they handle it.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# A '.' not followed by a digit. The scripts pass re.UNICODE (= 32) where `count` goes, so at
# most 32 periods are removed; we keep that.
_PERIOD = re.compile(r"\.(?!\d)")
# VLMEvalKit's copy fixed the lookbehind: a '.' right after a digit stays ("10." is not "10").
PERIOD_VLMEVALKIT = re.compile(r"(?<!\d)\.(?!\d)")
_PERIOD_COUNT = int(re.UNICODE)
# Any "digit,digit" switches the rule to deleting punctuation instead of spacing it.
_DIGIT_COMMA_VQA = re.compile(r"\d,\d")
# The EvalAI processor's variant (lookarounds, one or more commas); its input has no commas.
_DIGIT_COMMA_EVALAI = re.compile(r"(?<=\d),+(?=\d)")


# The scripts map misspelt contractions back to the standard spelling. The table is generated:
# a word with one apostrophe is found without it; a word with several is found with any one
# of them missing. Three entries are special cases of the original table.
_ONE_APOSTROPHE = """ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't
haven't he'd he's how'd how'll how's I'm I've isn't it'd it'll ma'am mightn't might've mustn't
must've needn't not've o'clock oughtn't shan't should've shouldn't somebody'll somebody's
someone'd someone'll someone's something'd something'll that's there'd there're there's they'd
they'll they're they've 'twas wasn't we've weren't what'll what're what's what've when's where'd
where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all
you'd you'll you're you've"""
_SEVERAL_APOSTROPHES = """couldn't've hadn't've he'd've I'd've it'd've mightn't've she'd've
shouldn't've somebody'd've someone'd've something'd've there'd've they'd've we'd've who'd've
wouldn't've you'd've y'all'll y'all'd've 'ow's'at"""


def _contractions() -> dict[str, str]:
    table = {word.replace("'", ""): word for word in _ONE_APOSTROPHE.split()}
    for word in _SEVERAL_APOSTROPHES.split():
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        table.update({word[:i] + word[i + 1:]: word for i in cuts})
    table.update({"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"})
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str, digit_comma: re.Pattern[str] = _DIGIT_COMMA_VQA,
                        period: re.Pattern[str] = _PERIOD) -> str:
    """The VQA punctuation rule: each mark is deleted if it touches a space anywhere in the
    original text (or if the text has a digit,digit comma), else replaced by a space; then
    periods not followed by a digit are deleted (at most 32 of them; `period` says which
    periods: VLMEvalKit also keeps one that follows a digit)."""
    out = text
    glued_numbers = digit_comma.search(text) is not None
    for p in PUNCTUATION:
        if glued_numbers or f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits, drop articles, restore contractions, single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _strip_ws(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa(answer: str) -> str:
    """The official VQAv2 normalisation of a prediction."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def normalize_vlmevalkit(answer: str) -> str:
    """VLMEvalKit's process_answer: the VQAv2 rule with its own period rule."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, period=PERIOD_VLMEVALKIT))


def normalize_evalai(answer: str) -> str:
    """The EvalAI / M4C answer processor (TextVQA, and lmms-eval's VQA tasks)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, _DIGIT_COMMA_EVALAI))


def _evalai_both_rules(text: str) -> str:
    return process_digit_article(process_punctuation(text, _DIGIT_COMMA_EVALAI))


def leave_one_out(prediction: str, answers: Sequence[Any], key: Callable[[Any], str] = str
                  ) -> list[float]:
    """min(1, matches / 3) with each of `answers` left out in turn.

    Answers that compare equal to the one left out are left out with it: the VQA script
    compares whole answer records. Pass (index, text) pairs to leave out exactly one.
    """
    out = []
    for held in answers:
        matches = sum(1 for a in answers if a != held and key(a) == prediction)
        out.append(min(1, matches / 3))
    return out


def question_accuracy(prediction: str, answers: Sequence[Any], variant: str = "vqav2",
                      convention: str = "official") -> float:
    """Accuracy of one prediction against its human answers, under a variant and convention.

    `answers` are the raw human answers: strings, or VQAv2 answer records
    ``{"answer", "answer_id", ...}`` (strings get ids 1..n).
    """
    records = [a if isinstance(a, Mapping) else {"answer": a, "answer_id": i + 1}
               for i, a in enumerate(answers)]
    texts = [str(r["answer"]) for r in records]
    if variant == "vqav2" and convention == "official":
        texts = [_strip_ws(t) for t in texts]
        pred = _strip_ws(prediction)
        if len(set(texts)) > 1:  # only then are both sides normalised
            texts = [process_digit_article(process_punctuation(t)) for t in texts]
            pred = process_digit_article(process_punctuation(pred))
        held = [{**r, "answer": t} for r, t in zip(records, texts, strict=True)]
        accs = leave_one_out(pred, held, key=lambda r: r["answer"])
        return sum_left(accs) / len(accs)
    if variant == "vqav2" and convention == "lmms-eval":
        texts = [_evalai_both_rules(_strip_ws(t)) for t in texts]
        pred = _evalai_both_rules(_strip_ws(prediction))
        held = [{**r, "answer": t} for r, t in zip(records, texts, strict=True)]
        return float(statistics.mean(leave_one_out(pred, held, key=lambda r: r["answer"])))
    if variant == "vqav2" and convention in ("official-2016", "lmms-eval-2024"):
        if convention == "official-2016":
            pred = normalize_vqa(prediction)
            prep: Callable[[str], str] = process_punctuation
        else:
            pred = normalize_evalai(prediction)
            texts = [t.replace("\n", " ").replace("\t", " ").strip() for t in texts]
            prep = _evalai_both_rules
        if len(set(texts)) > 1:
            texts = [prep(t) for t in texts]
            if convention == "lmms-eval-2024":
                pred = _evalai_both_rules(pred)
        held = [{**r, "answer": t} for r, t in zip(records, texts, strict=True)]
        accs = leave_one_out(pred, held, key=lambda r: r["answer"])
        if convention == "official-2016":
            return sum_left(accs) / len(accs)
        return float(statistics.mean(accs))
    # TextVQA (every convention) and VLMEvalKit: both sides normalised, one answer left out.
    norm = normalize_vlmevalkit if convention == "vlmevalkit" else normalize_evalai
    gts = [norm(t) for t in texts]
    pred = norm(prediction)
    accs = leave_one_out(pred, list(enumerate(gts)), key=lambda item: item[1])
    if convention == "official":
        return sum_left(accs) / len(accs) if pred in gts else 0.0
    if convention == "lmms-eval":
        return float(statistics.mean(accs))
    return float(np.mean(accs))


def score(items: Sequence[Mapping[str, Any]], variant: str = "vqav2",
          convention: str = "official") -> dict[str, Any]:
    """Accuracy over `items`: ``{"prediction", "answers", "answer_type"?, "question_type"?}``.

    Returns ``{"overall", "accuracy", "per_answer_type", "per_question_type", "n",
    "convention", "variant", "unit"}``. ``overall`` is the number the reproduced script prints
    (percent, rounded to 2 decimals, except lmms-eval's unrounded fraction); ``accuracy`` is
    the unrounded fraction; the per-type breakdowns exist for the official VQAv2 script only.
    """
    check_convention("vqa", convention, CONVENTIONS)
    if variant not in VARIANTS:
        raise InputError(f"vqa: unknown variant '{variant}' (choose from: {', '.join(VARIANTS)})")
    if convention == "vlmevalkit" and variant == "vqav2":
        raise InputError("vqa: VLMEvalKit has no VQAv2 scorer; use --variant textvqa or "
                         "another convention")
    if not items:
        raise InputError("vqa: nothing to score")
    if convention == "official" and variant == "textvqa":
        for it in items:
            if len(it["answers"]) != 10:
                raise InputError(f"vqa: question {it.get('question_id', '?')}: the TextVQA "
                                 f"(M4C) evaluator needs 10 human answers, got "
                                 f"{len(it['answers'])}")
    accs = [question_accuracy(str(it["prediction"]), it["answers"], variant, convention)
            for it in items]
    n = len(accs)
    result: dict[str, Any] = {"convention": convention, "variant": variant, "n": n}
    if convention in ("official-2016", "lmms-eval-2024") and variant == "textvqa":
        raise InputError(f"vqa: {convention} is a VQAv2 convention")
    if convention in ("official", "official-2016") and variant == "vqav2":
        by_answer: dict[str, list[float]] = {}
        by_question: dict[str, list[float]] = {}
        for it, acc in zip(items, accs, strict=True):
            by_answer.setdefault(str(it.get("answer_type")), []).append(acc)
            by_question.setdefault(str(it.get("question_type")), []).append(acc)
        result.update(
            overall=_vqa_percent(accs), accuracy=sum_left(accs) / n,
            per_answer_type={k: _vqa_percent(v) for k, v in by_answer.items()},
            per_question_type={k: _vqa_percent(v) for k, v in by_question.items()},
            unit="percent")
    elif convention == "official":
        acc = sum_left(accs) / n
        result.update(overall=round(100.0 * acc, 2), accuracy=acc, unit="percent")
    elif convention in ("lmms-eval", "lmms-eval-2024"):
        acc = sum_left(accs) / n
        result.update(overall=acc, accuracy=acc, unit="fraction")
    else:
        mean = float(np.mean(accs))
        result.update(overall=mean * 100, accuracy=mean, unit="percent")
    return result


def _vqa_percent(accs: Sequence[float]) -> float:
    return round(100 * sum_left(accs) / len(accs), 2)


def load_items(annotations: str | Path, results: str | Path,
               questions: str | Path | None = None) -> list[dict[str, Any]]:
    """Pair VQAv2 or TextVQA annotations with results by question_id.

    `annotations`: VQAv2 (``{"annotations": [{"question_id", "answers": [{"answer", ...}],
    "answer_type", "question_type"}]}``) or TextVQA (``{"data": [{"question_id",
    "answers": [str]}]}``). `results`: a JSON list ``[{"question_id", "answer"}]`` or JSONL
    lines with ``text`` or ``answer``. `questions` (optional, VQAv2 ``{"questions": [...]}``)
    must hold every annotated question. Ids must match one to one.
    """
    ann = read_json(annotations)
    records = ann.get("annotations", ann.get("data")) if isinstance(ann, dict) else None
    if not isinstance(records, list):
        raise InputError("expected a JSON object with an 'annotations' (VQAv2) or 'data' "
                         "(TextVQA) list", annotations)
    by_id: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "question_id" not in rec or "answers" not in rec:
            raise InputError(f"annotation #{i} lacks 'question_id' or 'answers'", annotations)
        if not isinstance(rec["answers"], list) or not rec["answers"]:
            raise InputError(f"question {rec['question_id']}: 'answers' must be a non-empty "
                             "list", annotations)
        by_id[key_of(rec["question_id"])] = rec
    if questions is not None:
        q = read_json(questions)
        qs = q.get("questions") if isinstance(q, dict) else None
        if not isinstance(qs, list):
            raise InputError("expected a JSON object with a 'questions' list", questions)
        known = {key_of(x.get("question_id")) for x in qs if isinstance(x, dict)}
        absent = sorted(set(by_id) - known)
        if absent:
            raise InputError(f"{len(absent)} annotated question ids are not in the questions "
                             f"file (first: {absent[0]})", questions)
    llava = _llava_textvqa(records, results)
    if llava is not None:  # LLaVA's layout: already in the answer file's order
        return llava
    preds = _read_results(results)
    require_same_ids(by_id, preds, annotations, results)
    # TextVQA's evaluator sums in the answer file's order; VQAv2's walks the annotations.
    order = list(preds) if "data" in ann else list(by_id)
    return [{"question_id": by_id[k]["question_id"], "prediction": preds[k],
             "answers": by_id[k]["answers"], "answer_type": by_id[k].get("answer_type"),
             "question_type": by_id[k].get("question_type")} for k in order]


def _llava_textvqa(records: list[dict[str, Any]], results: str | Path
                   ) -> list[dict[str, Any]] | None:
    """Items of a LLaVA TextVQA answer file ({question_id: image id, prompt, text} lines), or
    None when `results` is not one: JSONL whose lines all carry a prompt and whose ids are
    image ids of the annotations, not their question ids."""
    if Path(results).suffix == ".json" or not all("image_id" in r and "question" in r
                                                  for r in records):
        return None
    rows = read_jsonl_numbered(results)
    question_ids = {key_of(r["question_id"]) for r in records}
    if not rows or not all(isinstance(row, dict) and "prompt" in row and "question_id" in row
                           for _, row in rows):
        return None
    if all(key_of(row["question_id"]) in question_ids for _, row in rows):
        return None
    by_key = {(key_of(r["image_id"]), str(r["question"]).lower()): r for r in records}
    items = []
    for line, row in rows:
        key = (key_of(row["question_id"]), llava_question(str(row["prompt"]), results, line))
        if key not in by_key:
            raise InputError(f"no annotation for image {key[0]} and question {key[1]!r}",
                             results, line)
        ann = by_key[key]
        items.append({"question_id": ann["question_id"],
                      "prediction": text_field(row, ("text", "answer"), results, line),
                      "answers": ann["answers"], "answer_type": None, "question_type": None})
    return items


_LLAVA_OCR = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def llava_question(prompt: str, path: str | Path = "<results>", line: int | None = None) -> str:
    """The question of a LLaVA TextVQA prompt, lower-cased, as eval_textvqa.py reads it."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _LLAVA_OCR.search(prompt)
        if match is None:
            raise InputError("an 'OCR tokens:' prompt without 'Question: ... Short answer:'",
                             path, line)
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise InputError("cannot find the question in this prompt (LLaVA's eval_textvqa.py "
                         "reads three prompt shapes)", path, line)
    return question.lower()


def _read_results(path: str | Path) -> dict[str, str]:
    if Path(path).suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise InputError("expected a JSON list of {question_id, answer}", path)
        out: dict[str, str] = {}
        for i, row in enumerate(data):
            if not isinstance(row, dict) or "question_id" not in row:
                raise InputError(f"result #{i} lacks 'question_id'", path)
            qid = key_of(row["question_id"])
            if qid in out:
                raise InputError(f"result #{i}: question_id {row['question_id']!r} repeats",
                                 path)
            out[qid] = text_field(row, ("answer", "text"), path, None)
        return out
    return {qid: text_field(row, ("answer", "text"), path, line)
            for qid, (line, row) in rows_by_id(path).items()}


def score_files(annotations: str | Path, results: str | Path, questions: str | Path | None = None,
                variant: str = "vqav2", convention: str = "official") -> dict[str, Any]:
    """Read the files, pair them, and score them (see load_items and score)."""
    check_convention("vqa", convention, CONVENTIONS)
    return score(load_items(annotations, results, questions), variant, convention)
