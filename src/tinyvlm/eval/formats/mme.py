"""MME in the official eval tool's layout: one `<subtask>.txt` per subtask with lines
`image<TAB>question<TAB>gt` (two consecutive lines per image). BENCH_FILE is one such file
or a directory of them. Images are looked up under the image root, then beside the files,
as `<subtask>/<image>`, `<subtask>/images/<image>` (the release's layout) or `<image>`.
The answer files repeat each line with the prediction as a fourth column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.formats.base import Benchmark, Item, LoadContext
from tinyvlm.eval.scorers import mme as scorer
from tinyvlm.io import write_text

KIND = "mme"
PROMPT = KIND


def sniff(path: Path, first: Any) -> bool:
    return path.is_dir() or path.suffix == ".txt"


def subtask_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise InputError("no MME subtask .txt files in this directory", path)
    return files


def load(path: Path, ctx: LoadContext) -> Benchmark:
    items = []
    for file in subtask_files(path):
        subtask = file.stem
        seen: dict[str, int] = {}
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError("not a UTF-8 text file", file) from None
        for lineno, text in enumerate(lines, 1):
            if not text.strip():
                continue
            cols = text.split("\t")
            if len(cols) < 3:
                raise InputError("expected image<TAB>question<TAB>gt", file, lineno)
            image, question, gt = cols[0], cols[1], cols[2]
            k = seen[image] = seen.get(image, -1) + 1
            items.append(Item(
                id=f"{subtask}/{image}#{k}", question=question,
                images=[ctx.find_image(file, [Path(subtask, image),
                                              Path(subtask, "images", image), image], lineno)],
                answer=gt,
                meta={"subtask": subtask, "image_name": image, "file": str(file)},
            ))
    return Benchmark(KIND, path, items)


def answer_cell(text: str) -> str:
    # A tab or newline inside the prediction would break the line layout the tool parses.
    return " ".join(text.replace("\t", " ").splitlines())


def write_answers(bench: Benchmark, samples: list[dict[str, Any]], out_dir: Path) -> Path:
    """One `<subtask>.txt` per subtask in `out_dir`, lines in input order."""
    by_task: dict[str, list[str]] = {}
    for s in samples:
        m = s["meta"]
        by_task.setdefault(m["subtask"], []).append(
            "\t".join([m["image_name"], s["question"], s["answer"], answer_cell(s["prediction"])]))
    for subtask, lines in by_task.items():
        write_text(out_dir / f"{subtask}.txt", "\n".join(lines) + "\n")
    return out_dir


def score(bench: Benchmark, samples: list[dict[str, Any]], answers: Path) -> dict[str, Any]:
    for s in samples:
        # Parsed as the tool reads the answer file: the cell plus its line's newline.
        parsed = scorer.parse(answer_cell(s["prediction"]) + "\n")
        s.update(parsed=parsed, score=float(parsed == s["answer"].strip().lower()))
    return dict(scorer.score_files(answers))


def headline(name: str, result: dict[str, Any]) -> dict[str, tuple[Any, str | None]]:
    unit = result.get("unit")  # the two totals papers print
    return {f"{name} perception": (result.get("perception"), unit),
            f"{name} cognition": (result.get("cognition"), unit)}
