"""MOAT-style capability reports: accuracy overall, per capability and per combination.

As MOAT's own analysis does it: every question is tagged with the capabilities it needs (CNT
counting, OCR, RLA spatial relations, UCV charts and visual codes, 3DTF / 3DQNT 3D, GNDT /
GNDV grounding text / visual instructions, RET retrieval, MTIMG multi-image, ...); each run
gives a verdict (1 right, 0 wrong) per question. Overall = mean over runs of each run's
accuracy (summed as Python 3.12's ``sum`` does, the version MOAT used); per capability and
per combination (the tags joined with '+' in their given order) = all verdicts of all runs
pooled. MOAT's verdicts come from an LLM judge; here a record's own ``verdict`` is used if
present, else the optional `judge`, else exact match after `data.answers.normalize_answer`
(lowercase, collapse spaces, drop trailing '.!?' and surrounding quotes).

Records, ours: ``{"id", "question", "choices"?, "answer", "prediction", "capabilities"}``;
MOAT's column layout: ``{"index", "question", "choices", "ground_truth", "capability",
"answer" (the model's answer), "verdict"?}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyvlm.data.answers import normalize_answer
from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import check_convention, key_of, sum_compensated, text_field
from tinyvlm.io import read_jsonl_numbered

CONVENTIONS = ("official",)
CAPABILITIES = ("CNT", "OCR", "RLA", "3DTF", "3DQNT", "GNDT", "GNDV", "UCV", "RET", "MTIMG",
                "MTLIN")
Judge = Callable[[Mapping[str, Any]], bool]


def normalize_record(row: Mapping[str, Any], path: str | Path = "<records>",
                     line: int | None = None) -> dict[str, Any]:
    """Either layout to ours (plus ``verdict``: 0, 1 or None). MOAT's layout is recognised by
    its ``ground_truth`` key."""
    if "ground_truth" in row:
        qid, caps_key, gt_key, pred_keys = "index", "capability", "ground_truth", ("answer",)
    else:
        qid, caps_key, gt_key, pred_keys = "id", "capabilities", "answer", ("prediction",)
    for key in (qid, caps_key, gt_key):
        if key not in row:
            raise InputError(f"missing key '{key}'", path, line)
    caps = row[caps_key]
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise InputError(f"'{caps_key}' must be a list of capability codes", path, line)
    verdict = row.get("verdict")
    if verdict is not None and verdict not in (0, 1, True, False):
        raise InputError(f"'verdict' must be 0 or 1, got {verdict!r}", path, line)
    return {"id": key_of(row[qid]), "question": row.get("question", ""),
            "choices": row.get("choices") or [], "answer": str(row[gt_key]),
            "prediction": text_field(row, pred_keys, path, line), "capabilities": caps,
            "verdict": None if verdict is None else int(verdict)}


def _verdict(rec: Mapping[str, Any], judge: Judge | None) -> int:
    if rec.get("verdict") is not None:
        return int(rec["verdict"])
    if judge is not None:
        return int(bool(judge(rec)))
    return int(normalize_answer(str(rec["prediction"])) == normalize_answer(str(rec["answer"])))


def _cap_key(cap: str) -> tuple[int, str]:
    return (CAPABILITIES.index(cap), cap) if cap in CAPABILITIES else (len(CAPABILITIES), cap)


def score(runs: Sequence[Sequence[Mapping[str, Any]]], convention: str = "official",
          judge: Judge | None = None) -> dict[str, Any]:
    """Scores of one or more runs over the same questions (records in our layout).

    Returns ``{"overall", "runs", "per_capability", "per_combination", "counts", "n",
    "convention", "unit": "fraction"}``: ``runs`` holds each run's accuracy, ``counts`` the
    number of questions per capability and combination (per run).
    """
    check_convention("moat", convention, CONVENTIONS)
    if not runs or not all(runs):
        raise InputError("moat: every run needs at least one record")
    ids = [sorted(r["id"] for r in run) for run in runs]
    if any(i != ids[0] for i in ids[1:]):
        raise InputError("moat: the runs cover different questions")
    accs: list[float] = []
    by_cap: dict[str, list[int]] = {}
    by_combo: dict[str, list[int]] = {}
    for run in runs:
        verdicts = [_verdict(rec, judge) for rec in run]
        accs.append(sum(verdicts) / len(verdicts))
        for rec, v in zip(run, verdicts, strict=True):
            for cap in rec["capabilities"]:
                by_cap.setdefault(cap, []).append(v)
            if rec["capabilities"]:
                by_combo.setdefault("+".join(rec["capabilities"]), []).append(v)
    cap_keys = sorted(by_cap, key=_cap_key)
    combo_keys = sorted(by_combo, key=lambda k: (k.count("+"), k))
    n_runs = len(runs)
    return {
        "convention": convention, "unit": "fraction",
        "overall": sum_compensated(accs) / n_runs, "runs": accs,
        "per_capability": {k: sum(by_cap[k]) / len(by_cap[k]) for k in cap_keys},
        "per_combination": {k: sum(by_combo[k]) / len(by_combo[k]) for k in combo_keys},
        "counts": {"per_capability": {k: len(by_cap[k]) // n_runs for k in cap_keys},
                   "per_combination": {k: len(by_combo[k]) // n_runs for k in combo_keys}},
        "n": len(runs[0]),
    }


def read_run(path: str | Path) -> list[dict[str, Any]]:
    """One run's records from a JSONL file (either layout); ids must not repeat."""
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, row in read_jsonl_numbered(path):
        if not isinstance(row, dict):
            raise InputError("expected a JSON object on each line", path, line)
        rec = normalize_record(row, path, line)
        if rec["id"] in seen:
            raise InputError(f"question {rec['id']} repeats line {seen[rec['id']]}", path, line)
        seen[rec["id"]] = line
        records.append(rec)
    if not records:
        raise InputError("no records", path)
    return records


def score_files(predictions: Sequence[str | Path], convention: str = "official",
                judge: Judge | None = None) -> dict[str, Any]:
    """Score one JSONL file per run (see score)."""
    check_convention("moat", convention, CONVENTIONS)
    return score([read_run(p) for p in predictions], convention, judge)
