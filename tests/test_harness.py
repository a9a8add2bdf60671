"""The evaluation harness: benchmark formats, templates, the resumable cache, scoring."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.eval import harness
from tinyvlm.eval.cache import PredictionCache
from tinyvlm.eval.formats import LoadContext, detect, load_benchmark
from tinyvlm.eval.harness import evaluate_models
from tinyvlm.eval.prompts import load_template
from tinyvlm.eval.scorers import get as get_scorer
from tinyvlm.infer import Engine, Sampling
from tinyvlm.models.vlm import TinyVLM

from .conftest import TEXTS, tiny_model_config

WORDS = ["yes", "blue", "green", "red", "is", "there", "a", "square", "please", "answer", "or"]


@pytest.fixture(scope="module")
def bench_tokenizer() -> Tokenizer:
    return Tokenizer.train([*TEXTS, " ".join(WORDS)])


@pytest.fixture
def bench_model(bench_tokenizer: Tokenizer) -> TinyVLM:
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(tiny_model_config(), bench_tokenizer).eval()


def answer_always(model: TinyVLM, text: str) -> Callable[..., torch.Tensor]:
    """A generate() that answers `text` to every prompt (the scorers' arithmetic is then
    known exactly)."""
    tok = model.tokenizer
    assert tok is not None
    ids = [*tok.encode(text), tok.end_id]

    def generate(input_ids: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return torch.tensor([ids] * input_ids.shape[0])

    return generate


def png(path: Path, colour: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def png_base64(colour: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------- fixtures


def make_pope(root: Path, image_dir: str = "") -> Path:
    """Three probes; images beside the file, or in `image_dir` (then --image-root is needed)."""
    png(root / image_dir / "a.png", "red")
    png(root / image_dir / "b.png", "blue")
    rows = [{"question_id": 1, "image": "a.png", "text": "is there a red square?",
             "label": "yes"},
            {"question_id": 2, "image": "a.png", "text": "is there a blue square?",
             "label": "no"},
            {"question_id": 3, "image": "b.png", "text": "is there a blue square?",
             "label": "yes"}]
    path = root / "coco_pope_random.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_mme(root: Path) -> Path:
    """Two subtasks, images in the release's two layouts (<subtask>/images/ and <subtask>/)."""
    png(root / "existence" / "images" / "1.png", "red")
    png(root / "count" / "2.png", "blue")
    png(root / "count" / "3.png", "green")
    q = "is there a red square? please answer yes or no."
    root.mkdir(parents=True, exist_ok=True)
    (root / "existence.txt").write_text(f"1.png\t{q}\tYes\n1.png\t{q}\tNo\n")
    (root / "count.txt").write_text(f"2.png\t{q}\tYes\n2.png\t{q}\tYes\n"
                                    f"3.png\t{q}\tNo\n3.png\t{q}\tYes\n")
    return root


MMBENCH_ROWS = [  # index, question, hint, A, B, answer, category
    ("0", "what colour is the square?", "", "red", "blue", "A", "colour"),
    ("1000000", "what colour is the square?", "", "blue", "red", "B", "colour"),
    ("1", "which colour is shown?", "a hint", "green", "red", "A", "colour"),
    ("2", "is it red?", "", "red", "green", "A", "attribute"),
]


def make_mmbench(root: Path) -> Path:
    path = root / "mmbench_dev.tsv"
    root.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "question", "hint", "A", "B", "answer", "category",
                    "l2-category", "image"])
        for index, question, hint, a, b, answer, cat in MMBENCH_ROWS:
            # The circular copy names its original's index instead of repeating the image.
            image = "0" if index == "1000000" else png_base64({"0": "red", "1": "green",
                                                               "2": "blue"}[index])
            w.writerow([index, question, hint, a, b, answer, cat, "perception", image])
    return path


# ----------------------------------------------------------------------------- formats


def test_detection_and_loading(tmp_path: Path, shapes_dir: Path) -> None:
    pope = make_pope(tmp_path / "p", image_dir="img")
    mme, mmb = make_mme(tmp_path / "m"), make_mmbench(tmp_path / "b")
    assert detect(pope) == "pope"
    assert detect(mme) == "mme" and detect(mme / "count.txt") == "mme"
    assert detect(mmb) == "mmbench"
    assert detect(shapes_dir / "test.json") == "llava"
    assert detect(shapes_dir / "pope_random.jsonl") == "pope"

    bench = load_benchmark(pope, LoadContext(tmp_path / "p" / "img", tmp_path / "emb"))
    assert [i.id for i in bench.items] == ["1", "2", "3"]
    assert bench.items[0].images == [tmp_path / "p" / "img" / "a.png"]  # via --image-root
    assert bench.items[0].meta["split"] == "random" and bench.name == "pope/coco_pope_random"

    bench = load_benchmark(mme, LoadContext(None, tmp_path / "emb"))
    assert [i.id for i in bench.items][:3] == ["count/2.png#0", "count/2.png#1", "count/3.png#0"]
    assert bench.items[-1].images == [mme / "existence" / "images" / "1.png"]

    bench = load_benchmark(mmb, LoadContext(None, tmp_path / "emb"))
    first, copy, hinted = bench.items[:3]
    assert first.options == [("A", "red"), ("B", "blue")] and first.answer == "A"
    assert copy.images == first.images  # the copy shares its original's decoded image
    assert hinted.hint == "a hint" and first.hint == ""
    with Image.open(first.images[0]) as im:
        assert im.getpixel((0, 0)) == (255, 0, 0)


def make_others(root: Path) -> dict[str, Path]:
    """SEED-Bench, VQAv2, ScienceQA and MOAT files with one or two questions each."""
    png(root / "1_2.jpg", "red")
    seed = root / "SEED-Bench.json"
    seed.write_text(json.dumps({"questions": [
        {"question_id": "q1", "question": "what colour?", "choice_a": "red", "choice_b": "blue",
         "choice_c": "green", "choice_d": "a", "answer": "A", "data_id": "1_2.jpg",
         "data_type": "image", "question_type_id": 1},
        {"question_id": "q2", "question": "v", "choice_a": "a", "choice_b": "b",
         "choice_c": "c", "choice_d": "d", "answer": "B", "data_id": "x.mp4",
         "data_type": "video", "question_type_id": 10}],
        "question_type": {"Scene Understanding": 1}}))
    png(root / "val2014" / "COCO_val2014_000000000042.jpg", "blue")
    vqa = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    vqa.write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"question_id": 420, "image_id": 42, "question": "what colour?"},
        {"question_id": 421, "image_id": 42, "question": "what shape?"}]}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": [
        {"question_id": qid, "answer_type": "other", "question_type": "what",
         "answers": [{"answer": ans, "answer_id": i + 1} for i in range(10)]}
        for qid, ans in ((420, "red"), (421, "square"))]}))
    png(root / "images" / "test" / "7" / "image.png", "red")
    sqa = root / "problems.json"
    sqa.write_text(json.dumps({
        "7": {"question": "q?", "choices": ["x", "y"], "answer": 1, "hint": "h",
              "image": "image.png", "split": "test"},
        "8": {"question": "q?", "choices": ["x", "y"], "answer": 0, "hint": "",
              "image": None, "split": "train"}}))
    moat = root / "moat.json"
    moat.write_text(json.dumps([
        {"index": 5, "question": "which colour?", "ground_truth": "red",
         "capability": ["CNT", "RLA"], "images": ["1_2.jpg"]},
        {"index": 6, "question": "how many?", "ground_truth": "2", "capability": "CNT",
         "images": ["1_2.jpg", "val2014/COCO_val2014_000000000042.jpg"]}]))
    return {"seed": seed, "vqa": vqa, "scienceqa": sqa, "moat": moat}


def test_other_formats_load(tmp_path: Path) -> None:
    files = make_others(tmp_path)
    ctx = LoadContext(None, tmp_path / "emb")
    bench = load_benchmark(files["seed"], ctx)
    assert bench.kind == "seed" and [i.id for i in bench.items] == ["q1"]
    assert bench.notes == ["1 video questions skipped"]
    assert bench.items[0].options[0] == ("A", "red")
    bench = load_benchmark(files["vqa"], ctx)
    assert bench.kind == "vqa" and bench.items[0].meta["answers"] == ["red"] * 10
    bench = load_benchmark(files["scienceqa"], ctx)
    assert bench.kind == "scienceqa" and [(i.id, i.answer) for i in bench.items] == [("7", "B")]
    bench = load_benchmark(files["moat"], ctx)
    assert bench.kind == "moat" and bench.items[0].meta["capabilities"] == ["CNT", "RLA"]
    assert len(bench.items[1].images) == 2


def test_seed_vqa_scienceqa_moat_end_to_end(bench_model: TinyVLM, tmp_path: Path,
                                            monkeypatch) -> None:
    files = make_others(tmp_path)
    monkeypatch.setattr(bench_model, "generate", answer_always(bench_model, "red"))
    results = evaluate_models({"m": bench_model}, list(files.values()), tmp_path / "out", None,
                              progress=False)
    benches = results["models"][0]["benchmarks"]
    # SEED's official rule wants the bare letter: "red" is wrong (the video question was
    # skipped, not failed).
    assert benches["seed/SEED-Bench"]["result"]["overall"] == 0.0
    assert benches["seed/SEED-Bench"]["result"]["count"] == 1
    # VQAv2: "red" matches all ten answers of the first question, none of the second.
    vqa = benches["vqa/v2_OpenEnded_mscoco_val2014_questions"]["result"]
    assert vqa["overall"] == 50.0 and vqa["n"] == 2
    # ScienceQA (LLaVA's rule): "red" names no option.
    sqa = benches["scienceqa/problems"]["result"]
    assert (sqa["accuracy"], sqa["failed"], sqa["img_total"]) == (0.0, 1, 1)
    # MOAT: exact match; per capability and per combination.
    moat = benches["moat"]["result"]
    assert moat["overall"] == 0.5
    assert moat["per_capability"] == {"CNT": 0.5, "RLA": 1.0}
    assert moat["per_combination"] == {"CNT": 0.0, "CNT+RLA": 1.0}


def test_templates_render_from_data_files(tmp_path: Path) -> None:
    mmb = load_template("mmbench")
    fields = {"question": "what colour?", "hint": "", "options": [("A", "red"), ("B", "blue")],
              "images": 1}
    assert mmb.render(fields) == ("<image>\nwhat colour?\nA. red\nB. blue\nAnswer with the "
                                  "option's letter from the given choices directly.")
    assert mmb.render({**fields, "hint": "look"}).startswith("<image>\nlook\nwhat colour?")
    (tmp_path / "pope.yaml").write_text("parts: ['{images}', 'Q: {question}']\njoin: ' '\n")
    assert load_template("pope", tmp_path).render({"question": "x", "images": 2}) == \
        "<image>\n<image> Q: x"
    (tmp_path / "mme.yaml").write_text("parts: ['{question']\n")
    with pytest.raises(InputError, match="bad format string"):
        load_template("mme", tmp_path)


@pytest.mark.parametrize("spec, needle", [
    ("nope.jsonl", "benchmark file not found"),
    ("popx:{pope}", "unknown benchmark format 'popx' (did you mean 'pope'?)"),
])
def test_bad_benchmark_specs(spec: str, needle: str, tmp_path: Path) -> None:
    pope = make_pope(tmp_path)
    with pytest.raises(InputError, match=re.escape(needle)):
        load_benchmark(spec.format(pope=pope), LoadContext(None, tmp_path / "emb"))


def test_bad_files_name_file_and_line(tmp_path: Path) -> None:
    pope = make_pope(tmp_path, image_dir="img")
    ctx = LoadContext(None, tmp_path / "emb")
    with pytest.raises(InputError, match=rf"{pope}:1: image not found"):
        load_benchmark(pope, ctx)  # the images are under img/: --image-root is needed
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("index\tquestion\tA\tB\timage\n0\tq\ta\n")
    with pytest.raises(InputError, match=rf"{tsv}:2: 3 cells for 5 columns"):
        load_benchmark(tsv, ctx)


# ----------------------------------------------------------------------------- end to end


def test_pope_mme_mmbench_llava_end_to_end(bench_model: TinyVLM, tmp_path: Path,
                                           shapes_dir: Path, monkeypatch) -> None:
    """Every answer is "red": the official scorers' numbers are then known by hand."""
    pope, mme, mmb = make_pope(tmp_path / "p"), make_mme(tmp_path / "m"), \
        make_mmbench(tmp_path / "b")
    monkeypatch.setattr(bench_model, "generate", answer_always(bench_model, "red"))
    out = tmp_path / "out"
    results = evaluate_models({"m": bench_model},
                              [f"pope:{pope}", mme, mmb, shapes_dir / "test.json"], out,
                              shapes_dir / "train.json", batch_size=2, progress=False)
    row = results["models"][0]
    benches = row["benchmarks"]

    # POPE: "red" parses as yes (no 'no'/'not' word): tp 2, fp 1.
    p = benches["pope/coco_pope_random"]["result"]
    assert (p["tp"], p["fp"], p["tn"], p["fn"]) == (2, 1, 0, 0)
    assert p["accuracy"] == pytest.approx(2 / 3) and p["yes_ratio"] == 1.0
    # MME: "red\n" is neither yes nor no: every answer wrong.
    m = benches["mme/m"]["result"]
    assert m["subtasks"] == {"existence": 0.0, "count": 0.0} and m["perception"] == 0.0
    assert "numerical_calculation" in m["missing"]
    # MMBench: option text "red" picks A in row 0 and B in its rotation (both right), B in
    # row 1 (wrong), A in row 2 (right): 2 of 3 questions.
    b = benches["mmbench/dev"]["result"]
    assert b["overall"] == pytest.approx(2 / 3) and b["questions"] == 3 and b["rows"] == 4
    assert b["per_category"] == {"attribute": 1.0, "colour": 0.5}
    # LLaVA (ShapesWorld): accuracy is the share of questions whose answer is "red".
    answers = [r["conversations"][-1]["value"]
               for r in json.loads((shapes_dir / "test.json").read_text())]
    assert row["accuracy"] == pytest.approx(answers.count("red") / len(answers))

    # The official answer files are what the scorers read; scoring them again agrees.
    mmb_answers = Path(benches["mmbench/dev"]["answers"])
    assert get_scorer("mmbench").score_files(mmb_answers) == b
    assert "image" not in mmb_answers.read_text().splitlines()[0].split("\t")
    assert get_scorer("mme").score_files(benches["mme/m"]["answers"]) == m
    lines = (Path(benches["mme/m"]["answers"]) / "count.txt").read_text()
    assert lines.splitlines()[0].split("\t") == [
        "2.png", "is there a red square? please answer yes or no.", "Yes", "red"]

    # Every sample is logged with prompt, raw output, parsed answer and score.
    log = [json.loads(x) for x in (out / "predictions" / "m.jsonl").read_text().splitlines()]
    assert len(log) == 3 + 6 + 4 + len(answers)
    mmb_log = [s for s in log if s["format"] == "mmbench"]
    assert [s["parsed"] for s in mmb_log] == ["A", "B", "B", "A"]
    assert [s["score"] for s in mmb_log] == [1.0, 1.0, 0.0, 1.0]
    assert mmb_log[2]["prompt"].startswith("<image>\na hint\nwhich colour is shown?\nA. green")
    assert {s["prediction"] for s in log} == {"red"}
    assert [s["parsed"] for s in log if s["format"] == "pope"] == ["yes"] * 3

    # Efficiency beside accuracy.
    for key in ("visual_tokens_per_image", "prefill_flops_per_token", "decode_flops_per_token",
                "vision_flops_per_image", "kv_cache_bytes", "latency_ms_per_sample",
                "peak_memory_bytes", "peak_memory_method", "params_by_module"):
        assert key in row, key
    assert row["total_params"] == row["activated_params"] == bench_model.num_parameters()
    assert row["peak_memory_method"] == "ru_maxrss_delta" and row["visual_tokens_per_image"] == 16


def read_predictions(out: Path) -> dict[str, str]:
    lines = (out / "predictions" / "m.jsonl").read_text().splitlines()
    return {json.loads(x)["id"]: json.loads(x)["prediction"] for x in lines}


def test_interrupted_run_resumes_without_redoing_items(model_and_data, tmp_path: Path,
                                                       monkeypatch) -> None:
    model, files = model_and_data
    n = sum(len(json.loads(f.read_text())) for f in files)
    evaluate_models({"m": model}, files, tmp_path / "full", None, batch_size=2, progress=False)
    reference = read_predictions(tmp_path / "full")

    calls = {"rows": 0, "batches": 0}
    original = model.generate

    def counting(input_ids: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if calls["batches"] == calls.get("kill_after", -1):
            raise KeyboardInterrupt  # the process dies after N finished batches
        calls["batches"] += 1
        calls["rows"] += input_ids.shape[0]
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    calls["kill_after"] = 3
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate_models({"m": model}, files, out, None, batch_size=2, progress=False)
    assert calls["rows"] == 6
    cache_lines = sum(len(p.read_text().splitlines()) for p in (out / "cache" / "m").glob("*"))
    assert cache_lines == 6  # each finished batch reached the disk

    calls.update(rows=0, batches=0, kill_after=-1)
    results = evaluate_models({"m": model}, files, out, None, batch_size=2, progress=False)
    assert calls["rows"] == n - 6  # only the rest was computed
    assert results["models"][0]["computed"] == n - 6
    assert read_predictions(out) == reference

    calls.update(rows=0)
    evaluate_models({"m": model}, files, out, None, batch_size=2, progress=False)
    assert calls["rows"] == 0  # a finished run is all cache


@pytest.fixture
def model_and_data(shapes_dir: Path, shapes_tokenizer: Tokenizer, tmp_path: Path
                   ) -> tuple[TinyVLM, list[Path]]:
    """A tiny model and the first questions of ShapesWorld's test and POPE files."""
    files = []
    for name, n in (("test.json", 14), ("pope.json", 8)):
        records = json.loads((shapes_dir / name).read_text())[:n]
        for r in records:
            r["image"] = str(shapes_dir / r["image"])
        files.append(tmp_path / "data" / name)
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_text(json.dumps(records))
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(tiny_model_config(), shapes_tokenizer).eval(), files


def test_torn_last_line_is_ignored_and_cut(model_and_data, tmp_path: Path, monkeypatch) -> None:
    model, files = model_and_data
    files = files[:1]
    evaluate_models({"m": model}, files, tmp_path, None, batch_size=4, progress=False)
    reference = read_predictions(tmp_path)
    cache = tmp_path / "cache" / "m" / "llava-test.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    # The last entry was being written when the process died: half a line, no newline.
    cache.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    rows = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda ids, *a, **k: rows.append(ids.shape[0])
                        or original(ids, *a, **k))
    evaluate_models({"m": model}, files, tmp_path, None, batch_size=4, progress=False)
    assert rows == [1]  # only the torn item is redone
    assert read_predictions(tmp_path) == reference
    text = cache.read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())

    cache.write_text('{"broken\n' + text)
    with pytest.raises(InputError, match=rf"{cache}:1: corrupt prediction cache line"):
        PredictionCache(cache, "x").load()


def test_cache_keys_on_model_decoding_and_prompt(model_and_data, tmp_path: Path,
                                                 monkeypatch) -> None:
    model, files = model_and_data
    files = files[:1]
    first = evaluate_models({"m": model}, files, tmp_path, None, progress=False)
    n = first["models"][0]["computed"]
    again = evaluate_models({"m": model}, files, tmp_path, None, max_new_tokens=4,
                            progress=False)
    assert again["models"][0]["computed"] == n  # other decoding settings: recomputed
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "llava.yaml").write_text("parts: ['{question}', 'be brief']\n")
    edited = evaluate_models({"m": model}, files, tmp_path, None, progress=False,
                             templates=templates)
    assert edited["models"][0]["computed"] == n  # another prompt: recomputed
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    changed = evaluate_models({"m": model}, files, tmp_path, None, progress=False)
    assert changed["models"][0]["computed"] == n  # other weights: recomputed


def test_prompt_longer_than_the_model_is_an_input_error(model_and_data, tmp_path: Path) -> None:
    model, files = model_and_data
    with pytest.raises(InputError, match="exceed the model's max_seq_len 128"):
        evaluate_models({"m": model}, files[:1], tmp_path, None, max_new_tokens=120,
                        progress=False)


def test_generate_answers_keeps_input_order(model_and_data) -> None:
    model, files = model_and_data
    bench = load_benchmark(files[0], LoadContext(None, Path("unused")))
    prompts = harness.build_prompts(Engine(model), bench, load_template("llava"), 8)[:6]
    seen: list[list[int]] = []
    batched = Engine(model, 4).generate(prompts, Sampling(8),
                                        on_batch=lambda idx, texts, s: seen.append(idx))
    one_by_one = [Engine(model, 1).generate([p], Sampling(8))[0] for p in prompts]
    assert batched == one_by_one
    assert sorted(i for chunk in seen for i in chunk) == list(range(6))


def test_two_files_with_one_name_stay_apart(model_and_data, tmp_path: Path) -> None:
    model, files = model_and_data
    other = tmp_path / "other" / "test.json"
    other.parent.mkdir()
    records = json.loads(files[0].read_text())[:2]
    other.write_text(json.dumps(records))
    results = evaluate_models({"m": model}, [files[0], other], tmp_path / "out", None,
                              progress=False)
    benches = results["models"][0]["benchmarks"]
    assert [b["n"] for b in benches.values()] == [14, 2]
    assert list(benches) == ["llava/test", "llava/test-2"]
    assert sorted(p.name for p in (tmp_path / "out" / "cache" / "m").iterdir()) == [
        "llava-test-2.jsonl", "llava-test.jsonl"]
