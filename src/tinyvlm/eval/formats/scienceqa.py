"""ScienceQA's problems.json: {pid: {question, choices, answer (index), hint, image, split,
...}}. Only the test split is asked (the split the papers report); questions with an image
find it at `images/test/<pid>/<image>` or `test/<pid>/<image>` under the image root. Answer file:
LLaVA's layout, {question_id, prompt, text} lines (the prompt tells image questions apart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import LETTERS, Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import scienceqa as scorer
from tinyvlm.io import read_json, write_jsonl

KIND = "scienceqa"
PROMPT = KIND
SPLIT = "test"


def sniff(path: Path, first: Any) -> bool:
    return isinstance(first, dict) and {"question", "choices", "answer"} <= set(first) \
        and isinstance(first.get("choices"), list)


def load(path: Path, ctx: LoadContext) -> Benchmark:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise InputError("expected ScienceQA problems.json: an object of problems", path)
    items = []
    for pid, p in doc.items():
        if not isinstance(p, dict) or not {"question", "choices", "answer"} <= set(p):
            raise InputError(f"problem {pid} needs question, choices and answer", path)
        split = p.get("split", SPLIT)
        if split != SPLIT:
            continue
        images = []
        if p.get("image"):
            images = [ctx.find_image(path, [Path("images", split, pid, p["image"]),
                                            Path(split, pid, p["image"])], None)]
        choices = [str(c) for c in p["choices"]]
        items.append(Item(
            id=str(pid), question=str(p["question"]), images=images,
            answer=LETTERS[int(p["answer"])], hint=str(p.get("hint") or ""),
            options=list(zip(LETTERS, choices, strict=False)),
            meta={k: p[k] for k in ("subject", "grade", "category") if k in p}
            | {"answer_index": int(p["answer"])},
        ))
    return Benchmark(KIND, path, items)


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / f"{bench.path.stem}.answers.jsonl"
    write_jsonl(path, ({"question_id": s["id"], "prompt": s["prompt"], "text": s["prediction"]}
                       for s in samples))
    return path


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    for s in samples:
        parsed = scorer.extract(s["prediction"], [text for _, text in s["options"]])
        s.update(parsed=parsed, score=float(parsed == s["answer"]))
    return dict(scorer.score_files(bench.path, answers))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    return {name: (result.get("accuracy"), result.get("unit") or "fraction")}
