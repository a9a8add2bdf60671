"""GQA, VizWiz, CHAIR (Object HalBench) and MMHal-Bench end to end: a tiny file of each
through the harness (load, prompt, answer file, score) and through `tinyvlm score`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tinyvlm.cli import cli
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.eval.harness import evaluate_models
from tinyvlm.models.vlm import TinyVLM

from .conftest import TEXTS, tiny_model_config
from .test_cli import run_cli
from .test_harness import WORDS, answer_always, png


@pytest.fixture(scope="module")
def model() -> TinyVLM:
    tok = Tokenizer.train([*TEXTS, " ".join(WORDS)])
    torch.manual_seed(0)
    return TinyVLM.from_tokenizer(tiny_model_config(), tok).eval()


def make_gqa(root: Path) -> Path:
    png(root / "images" / "n1.jpg", "red")
    png(root / "n2.jpg", "blue")
    q = {"question": "what colour?", "semantic": [{"operation": "select", "argument": "x"},
                                                  {"operation": "query", "argument": "color"}],
         "groups": {"global": "color", "local": "c"}, "entailed": []}
    questions = {
        "1": {**q, "imageId": "n1", "answer": "red", "isBalanced": True,
              "types": {"structural": "query", "semantic": "attr", "detailed": "colorQuery"}},
        "2": {**q, "imageId": "n2", "answer": "no", "isBalanced": True,
              "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
        "3": {**q, "imageId": "n2", "answer": "blue", "isBalanced": False,
              "types": {"structural": "query", "semantic": "attr", "detailed": "colorQuery"}},
    }
    path = root / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    return path


def test_gqa_end_to_end(model: TinyVLM, tmp_path: Path, monkeypatch) -> None:
    path = make_gqa(tmp_path)
    monkeypatch.setattr(model, "generate", answer_always(model, "Red."))
    out = tmp_path / "out"
    results = evaluate_models({"m": model}, [path], out, None, progress=False)
    bench = results["models"][0]["benchmarks"]["gqa/testdev_balanced_questions"]
    r = bench["result"]
    # Two balanced questions; "Red." becomes "red" (LLaVA's converter): right, then wrong.
    assert (r["n"], r["accuracy"], r["open"], r["binary"]) == (2, 50.0, 100.0, 0.0)
    assert r["per_structural_type"] == {"query": {"accuracy": 100.0, "n": 1},
                                        "verify": {"accuracy": 0.0, "n": 1}}
    # One group "color" with gold {red: 1, no: 1}, predicted {red: 2}: (1 + 1) * 2 / 2 / 100.
    assert r["distribution"] == pytest.approx(0.02)
    answers = sorted(out.rglob("testdev_balanced_questions.predictions.json"))
    assert len(answers) == 1
    written = json.loads(answers[0].read_text())
    assert written == [{"questionId": "1", "prediction": "red"},
                       {"questionId": "2", "prediction": "red"}]
    # The official layout the harness wrote scores the same through the CLI.
    res = CliRunner().invoke(cli, ["score", "gqa", "--questions", str(path),
                                   "--predictions", str(answers[0])])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["accuracy"] == 50.0


def test_gqa_refuses_missing_predictions(tmp_path: Path, monkeypatch, capsys) -> None:
    path = make_gqa(tmp_path)
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"questionId": "1", "prediction": "red"}]))
    code, _, err = run_cli(["score", "gqa", "--questions", str(path), "--predictions",
                            str(preds)], monkeypatch, capsys)
    assert code == 2
    assert err.strip() == ("error: gqa: 1 questions have no prediction (first: 2); eval.py "
                           "needs one for every balanced question")


def make_vizwiz(root: Path, answers: bool = True) -> Path:
    png(root / "val" / "VizWiz_val_00000000.jpg", "red")
    png(root / "VizWiz_val_00000001.jpg", "blue")
    rows = [{"image": "VizWiz_val_00000000.jpg", "question": "what colour is this?",
             "answer_type": "other", "answerable": 1,
             "answers": [{"answer": "red", "answer_confidence": "yes"}] * 10},
            {"image": "VizWiz_val_00000001.jpg", "question": "what does it say?",
             "answer_type": "unanswerable", "answerable": 0,
             "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 8 +
                        [{"answer": "red", "answer_confidence": "maybe"}] * 2}]
    if not answers:
        rows = [{k: v for k, v in r.items() if k in ("image", "question")} for r in rows]
    path = root / ("val.json" if answers else "test.json")
    path.write_text(json.dumps(rows))
    return path


def test_vizwiz_end_to_end(model: TinyVLM, tmp_path: Path, monkeypatch) -> None:
    path = make_vizwiz(tmp_path)
    monkeypatch.setattr(model, "generate", answer_always(model, "Red."))
    out = tmp_path / "out"
    results = evaluate_models({"m": model}, [path], out, None, progress=False)
    r = results["models"][0]["benchmarks"]["vizwiz/val"]["result"]
    # "Red." -> "red": all ten humans agree on question 1 (1.0); on question 2 two said red,
    # so each leave-one-out subset holds one or two: (8 * 2/3 + 2 * 1/3) / 10 = 0.6.
    assert r["overall"] == 80.0 and r["per_answer_type"] == {"other": 100.0,
                                                             "unanswerable": 60.0}
    # Never saying "unanswerable": no unanswerable question is found.
    assert r["unanswerable"]["f1_score"] == 0.0
    written = sorted(out.rglob("val.results.json"))
    assert json.loads(written[0].read_text()) == [
        {"image": "VizWiz_val_00000000.jpg", "answer": "red"},
        {"image": "VizWiz_val_00000001.jpg", "answer": "red"}]
    res = CliRunner().invoke(cli, ["score", "vizwiz", "--annotations", str(path),
                                   "--results", str(written[0])])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["overall"] == 80.0


def test_vizwiz_test_split_is_written_not_scored(model: TinyVLM, tmp_path: Path,
                                                 monkeypatch) -> None:
    path = make_vizwiz(tmp_path, answers=False)
    monkeypatch.setattr(model, "generate", answer_always(model, "red"))
    results = evaluate_models({"m": model}, [path], tmp_path / "out", None, progress=False)
    bench = results["models"][0]["benchmarks"]["vizwiz/test"]
    assert bench["result"] is None
    assert any("no ground truth" in n for n in bench["notes"])
    assert sorted((tmp_path / "out").rglob("test.results.json"))


def make_mmhal(root: Path) -> Path:
    png(root / "images" / "0.jpg", "red")
    png(root / "1.jpg", "blue")
    rows = [{"question_type": t, "question_topic": "outdoor", "image_id": str(i),
             "image_src": f"https://example.org/x/{i}.jpg", "image_content": ["Square"],
             "question": "what colour is it?", "gt_answer": g, "model_answer": ""}
            for i, (t, g) in enumerate((("attribute", "Red."), ("adversarial", "Blue.")))]
    path = root / "response_template.json"
    path.write_text(json.dumps(rows))
    return path


def judge_for_tests(record: dict) -> str:
    """A stand-in judge (the CLI imports it by name): 'Rating: 5' when the answer names the
    colour of the human answer, else 'Rating: 1'."""
    right = record["gt_answer"].rstrip(".").lower() in record["model_answer"].lower()
    return "Analysis: ...\nRating: 5" if right else "Rating: 1"


def test_mmhal_end_to_end_without_and_with_a_judge(model: TinyVLM, tmp_path: Path,
                                                   monkeypatch, capsys) -> None:
    path = make_mmhal(tmp_path)
    monkeypatch.setattr(model, "generate", answer_always(model, "a red square"))
    out = tmp_path / "out"
    results = evaluate_models({"m": model}, [path], out, None, max_new_tokens=16,
                              progress=False)
    bench = results["models"][0]["benchmarks"]["mmhal/response_template"]
    r = bench["result"]
    assert r["judged"] is False and r["n"] == 2
    assert r["questions_per_type"] == {"attribute": 1, "adversarial": 1}
    assert (r["empty_answers"], r["mean_answer_words"]) == (0, 3.0)
    assert any("judge" in n for n in bench["notes"])
    responses = sorted(out.rglob("response_template.responses.json"))[0]
    assert [x["model_answer"] for x in json.loads(responses.read_text())] == ["a red square"] * 2
    # Without a judge the command says so; with one it rates.
    code, stdout, err = run_cli(["score", "mmhal", "--responses", str(responses)],
                                monkeypatch, capsys)
    assert code == 0 and "no judge given" in err and json.loads(stdout)["judged"] is False
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent))
    code, stdout, err = run_cli(["score", "mmhal", "--responses", str(responses), "--judge",
                                 "tests.test_benchmarks_more:judge_for_tests"],
                                monkeypatch, capsys)
    assert code == 0, err
    scored = json.loads(stdout)
    # Ratings 5 (red named) and 1 (blue not): mean 3, one of two below 3.
    assert (scored["average_score"], scored["hallucination_rate"]) == (3.0, 0.5)
    assert scored["per_type"] == {"attribute": 5.0, "adversarial": 1.0}
    assert "records (MMHal-Bench has 96)" in err
    code, _, err = run_cli(["score", "mmhal", "--responses", str(responses), "--judge",
                            "nowhere:judge"], monkeypatch, capsys)
    assert code == 2 and "cannot import nowhere" in err


def test_chair_reads_captions_as_the_original_code() -> None:
    from tinyvlm.eval.scorers import chair

    words, classes, _ = chair.caption_objects(
        "Two buses and a bus. A baby bird, a toilet seat; wine glasses near a motor bike!")
    # "bus" singularises to "bu" and is never found; "baby bird" is a bird, not a person;
    # "toilet seat" is a toilet; "wine glasses" -> "wine glass"; " motor bike" cannot match.
    assert words == ["bus", "bird", "toilet", "wine glass"]
    assert classes == ["bus", "bird", "toilet", "wine glass"]
    # nltk's word_tokenize gives exactly these tokens (nltk 3.10.4, punkt_tab).
    assert chair.tokenize("the dog's bowl.) (cat's) \"tv\" hot-dog, a dog.** x--y ,,cat") == [
        "the", "dog", "'s", "bowl", ".", ")", "(", "cat", "'s", ")", "``", "tv", "''",
        "hot-dog", ",", "a", "dog", ".", "*", "*", "x", "--", "y", ",", ",cat"]
    # Two of three mentions wrong, in one of two captions; recall 1 of 3 classes.
    result = chair.score([{"image_id": 1, "caption": "a dog and a cat on a couch"},
                          {"image_id": 2, "caption": "an empty room"}],
                         {"1": {"dog", "person"}, "2": {"bed"}})
    assert (result["chair_s"], result["chair_i"], result["recall"]) == (0.5, 2 / 3, 1 / 3)


def test_chair_ground_truth_from_coco_annotations(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import chair

    (tmp_path / "instances_val2014.json").write_text(json.dumps({
        "images": [{"id": 7}, {"id": 8}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [{"image_id": 7, "category_id": 18}]}))
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"annotations": [
        {"image_id": 7, "caption": "Two men walking their dogs."},
        {"image_id": 8, "caption": "An empty street."}]}))
    gt = chair.ground_truth_from_coco(tmp_path)
    assert gt == {"7": {"dog", "person"}, "8": set()}


def test_chair_end_to_end_on_an_object_halbench_file(model: TinyVLM, tmp_path: Path,
                                                     monkeypatch) -> None:
    import base64
    import io

    from PIL import Image

    def b64(colour: str) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    path = tmp_path / "obj_halbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"image_id": 7, "question": "Describe the image.", "image": b64("red")},
        {"image_id": 8, "image": b64("blue")}]))
    (tmp_path / "instances_val2014.json").write_text(json.dumps({
        "images": [{"id": 7}, {"id": 8}], "categories": [{"id": 17, "name": "cat"}],
        "annotations": [{"image_id": 7, "category_id": 17}]}))
    # The test tokenizer knows few words; "cat" is one of them.
    monkeypatch.setattr(model, "generate", answer_always(model, "a red cat"))
    out = tmp_path / "out"
    results = evaluate_models({"m": model}, [path], out, None, max_new_tokens=16,
                              progress=False)
    r = results["models"][0]["benchmarks"]["chair/obj_halbench"]["result"]
    # Both captions name a cat; only image 7 has one.
    assert (r["chair_s"], r["chair_i"], r["mentions"]) == (0.5, 0.5, 2)
    captions = sorted(out.rglob("obj_halbench.captions.jsonl"))[0]
    res = CliRunner().invoke(cli, ["score", "chair", "--captions", str(captions),
                                   "--coco-annotations", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["chair_s"] == 0.5


def _gqa_question(**changes: object) -> dict:
    q = {"question": "what colour?", "answer": "red", "imageId": "n1",
         "types": {"structural": "query", "semantic": "attr"},
         "semantic": [{"operation": "select", "argument": "x"}]}
    return {**q, **changes}


@pytest.mark.parametrize("bench, files, needle", [
    ("gqa", {"questions": {"1": _gqa_question(question=5)},
             "predictions": [{"questionId": "1", "prediction": "red"}]},
     "question 1: 'question' must be a string"),
    ("gqa", {"questions": {"1": _gqa_question(groups="g")},
             "predictions": [{"questionId": "1", "prediction": "red"}]},
     "groups must be an object"),
    ("gqa", {"questions": {"1": _gqa_question()},
             "predictions": [{"questionId": "1", "prediction": 2}]},
     "entry 0: prediction must be a string, got int"),
    ("vizwiz", {"annotations": [{"image": "a.jpg", "question": "q",
                                 "answers": [{"answer": "0"}] * 10}],
                "results": [{"image": "a.jpg", "answer": None}]},
     "entry 0: image and answer must be strings"),
    ("vizwiz", {"annotations": [{"image": "a.jpg", "question": "q", "answerable": "yes",
                                 "answers": [{"answer": "0"}] * 10}],
                "results": [{"image": "a.jpg", "answer": "0"}]},
     "entry 0: answerable must be 0 or 1"),
    ("chair", {"captions": [{"image_id": 1, "caption": None}], "objects": {"1": ["dog"]}},
     "'caption' must be a string, got NoneType"),
    ("chair", {"captions": [{"image_id": 1, "caption": "a dog"}], "objects": {"1": ["Dog"]}},
     "image 1: 'Dog' is not a COCO class"),
])
def test_new_scorers_refuse_bad_input_in_one_line(bench: str, files: dict, needle: str,
                                                  tmp_path: Path, monkeypatch, capsys) -> None:
    args = ["score", bench]
    for option, content in files.items():
        suffix = ".jsonl" if option == "captions" else ".json"
        path = tmp_path / f"{option}{suffix}"
        path.write_text("".join(json.dumps(r) + "\n" for r in content) if suffix == ".jsonl"
                        else json.dumps(content))
        args += [f"--{option}", str(path)]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def test_chair_file_objects_must_cover_every_image(tmp_path: Path) -> None:
    from tinyvlm.errors import InputError
    from tinyvlm.eval.formats import LoadContext, load_benchmark

    png(tmp_path / "a.png", "red")
    path = tmp_path / "halbench.jsonl"
    path.write_text(json.dumps({"image_id": 1, "image": "a.png", "objects": ["dog"]}) + "\n" +
                    json.dumps({"image_id": 2, "image": "a.png"}) + "\n")
    with pytest.raises(InputError, match="1 images have no ground-truth objects"):
        load_benchmark(path, LoadContext(None, tmp_path / "emb"))
