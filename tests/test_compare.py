"""`tinyvlm report`: comparing the models of several runs; `tinyvlm eval` and `info` from the
command line with the new benchmark formats and efficiency figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tinyvlm.errors import InputError
from tinyvlm.eval.report import build_results, load_runs, model_row, render_html, write_comparison
from tinyvlm.eval.scorers.capabilities import summarize
from tinyvlm.eval.tables import headlines
from tinyvlm.models.vlm import TinyVLM

from .test_cli import run_cli


def sample(answer: str, prediction: str, cap: str) -> dict:
    return {"id": "x", "question": "q", "answer": answer, "prediction": prediction,
            "type": "t", "capabilities": [cap], "pope": None}


def write_run(path: Path, name: str, right: int, cost: dict | None = None) -> Path:
    samples = [sample("1", "1" if i < right else "2", "CNT" if i % 2 else "ATTR")
               for i in range(4)]
    extra = {"benchmarks": {
        "mme": {"format": "mme", "result": {"perception": 1234.5, "cognition": 250.25,
                                            "unit": "points"}},
        "pope/splits": {"format": "pope", "result": {"mean_f1": 0.8512, "unit": "fraction"}},
        "seed": {"format": "seed", "result": {"overall": 61.25, "unit": "percent"}},
        "llava/test": {"format": "llava", "result": {"accuracy": 0.5}},
    }, **(cost or {})}
    results = build_results([model_row(name, 2_000_000, 1_000_000, summarize(samples),
                                       **extra)], summarize(samples[:0]))
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    return path


COST = {"visual_tokens_per_image": 16, "prefill_flops_per_token": 53390.5,
        "decode_flops_per_token": 61760, "vision_flops_per_image": 1106176,
        "latency_ms_per_sample": 3.456, "peak_memory_bytes": 3 * 2**20,
        "kv_cache_bytes": 9984, "peak_memory_method": "ru_maxrss_delta"}


def test_headlines_per_benchmark() -> None:
    row = json.loads(json.dumps({"benchmarks": {
        "mme": {"format": "mme", "result": {"perception": 1234.5, "cognition": 250.25,
                                            "unit": "points"}},
        "mmbench/dev": {"format": "mmbench", "result": {"overall": 2 / 3, "unit": "fraction"}},
        "pope/random": {"format": "pope", "result": {"f1": 0.5, "unit": "fraction"}},
        "vqa": {"format": "vqa", "result": None},
        "llava/test": {"format": "llava", "result": {"accuracy": 0.5}}}}))
    assert headlines(row) == {"mme perception": "1234.5", "mme cognition": "250.2",
                              "mmbench/dev": "66.7%", "pope/random F1": "50.0%"}


def test_report_compares_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    a = write_run(tmp_path / "teacher", "teacher", 4, COST)
    b = write_run(tmp_path / "student", "student", 2)  # an older run without cost keys
    c = write_run(tmp_path / "again", "student", 1)  # a repeated name gets its run's name
    code, out, err = run_cli(["report", str(a), str(b), str(c / "results.json"), "--out",
                              str(tmp_path / "rep"), "--chart", "radar"], monkeypatch, capsys)
    assert code == 0, err
    md = (tmp_path / "rep" / "comparison.md").read_text()
    header = md.splitlines()[2]
    assert header == ("| model | total params | activated params | visual tokens | prefill "
                      "FLOPs/token | decode FLOPs/token | vision FLOPs/image | latency "
                      "ms/sample | peak memory | KV cache/sample | overall | CNT | ATTR | "
                      "POPE F1 | POPE yes-ratio | mme perception | mme cognition | "
                      "pope/splits mean F1 | seed |")
    assert ("| teacher | 2.0M | 1.0M | 16 | 53.39K | 61.76K | 1.11M | 3.46 | 3.0 MiB | "
            "9.8 KiB | 100.0% | 100.0% | 100.0% | - | - | 1234.5 | 250.2 | 85.1% | "
            "61.2% |") in md
    assert "| student | 2.0M | 1.0M | - | - | - | - | - | - | - | 50.0% | 50.0% | 50.0% |" in md
    assert "| student (again) |" in md and "| majority baseline |" in md
    assert md in out
    html = (tmp_path / "rep" / "comparison.html").read_text()
    assert html.count("<tr>") == 1 + 4 and "<th>mme perception</th>" in html
    assert "<td>student (again)</td>" in html
    with Image.open(tmp_path / "rep" / "comparison.png") as im:
        im.verify()


def test_render_html_escapes() -> None:
    results = build_results([model_row("<b>&", 1, 1, summarize([]))], None)
    assert "&lt;b&gt;&amp;" in render_html(results) and "<b>&" not in render_html(results)


def test_report_without_results_is_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["report", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "no results.json here" in err
    with pytest.raises(InputError, match=r"no results\.json"):
        load_runs([tmp_path / "missing"])
    write_comparison(load_runs([write_run(tmp_path / "r", "m", 1)]), tmp_path / "bars")
    assert (tmp_path / "bars" / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_cli_eval_pope_and_info(model: TinyVLM, tmp_path: Path, monkeypatch, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    pope = tmp_path / "pope_random.jsonl"
    pope.write_text("".join(json.dumps({"question_id": i, "image": "a.png", "label": label,
                                        "text": "is there a cat?"}) + "\n"
                            for i, label in ((7, "no"), (8, "yes"))))
    model_dir = model.save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["eval", str(model_dir), str(pope), "--out", str(out),
                                 "--image-root", str(images), "--max-new-tokens", "2",
                                 "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    row = json.loads((out / "results.json").read_text())["models"][0]
    assert row["benchmarks"]["pope/random"]["result"]["n"] == 2
    assert row["kv_cache_tokens"] == row["prompt_tokens"] + 2
    answers = (out / "predictions" / "m" / "pope-random" / "pope_random.answers.jsonl")
    assert [json.loads(x)["question_id"] for x in answers.read_text().splitlines()] == [7, 8]
    f1 = row["benchmarks"]["pope/random"]["result"]["f1"]
    shown = "-" if f1 is None else f"{100 * f1:.1f}%"
    assert f"| model | pope/random F1 |\n|---|---:|\n| m | {shown} |" in (
        out / "report.md").read_text()
    assert "pope/random F1" in stdout  # the terminal shows the benchmark table too

    code, stdout, err = run_cli(["info", str(model_dir)], monkeypatch, capsys)
    assert code == 0, err
    assert "activated per token" in stdout and "FLOPs per token: prefill" in stdout
    assert "FLOPs per image: vision" in stdout and "image tokens per image: 16" in stdout
    code, stdout, _ = run_cli(["info", str(model_dir), "--json", "--prompt-len", "20"],
                              monkeypatch, capsys)
    acct = json.loads(stdout)["efficiency"]
    assert acct["prompt_tokens"] == 20 and acct["total_params"] == model.num_parameters()
