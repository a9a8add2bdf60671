"""The scorers against the real reference scripts, on inputs made for it (tests/refs): the
figures in tests/refs/*.json are what those scripts printed, run as each file says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyvlm.eval.scorers import choice, mmbench, scienceqa, seed, vqa

from .refs.choice_inputs import OPTIONS_CASES, mmbench_case, scienceqa_case, seed_case
from .refs.vqa_inputs import textvqa_case, write_vqa_case

REFS = Path(__file__).parent / "refs"


def ref(name: str) -> dict:
    return json.loads((REFS / name).read_text())


@pytest.mark.parametrize("convention", ["official", "official-2016"])
def test_vqav2_equals_the_official_script_of_its_version(convention: str, tmp_path: Path) -> None:
    expected = ref("vqa_gt_vision_lab.json")["runs"][convention]
    questions, annotations, results = write_vqa_case(tmp_path)
    got = vqa.score_files(annotations, results, questions, convention=convention)
    assert got["overall"] == expected["overall"]
    assert got["per_answer_type"] == expected["perAnswerType"]
    assert got["per_question_type"] == expected["perQuestionType"]
    for item in vqa.load_items(annotations, results):
        acc = vqa.question_accuracy(item["prediction"], item["answers"], convention=convention)
        assert round(100 * acc, 2) == expected["evalQA"][str(item["question_id"])]


def test_the_two_vqav2_versions_differ_by_ten_points_on_these_inputs() -> None:
    runs = ref("vqa_gt_vision_lab.json")["runs"]
    assert runs["official"]["overall"] - runs["official-2016"]["overall"] > 10


@pytest.mark.parametrize("run", ["vqav2 lmms-eval", "vqav2 lmms-eval-2024", "textvqa lmms-eval"])
def test_vqa_per_question_equals_lmms_eval(run: str, tmp_path: Path) -> None:
    expected = ref("vqa_lmms_eval.json")["runs"][run]["exact_match"]
    variant, convention = run.split()
    _, annotations, results = write_vqa_case(tmp_path)
    for item in vqa.load_items(annotations, results):
        answers = item["answers"] if variant == "vqav2" else [a["answer"] for a in item["answers"]]
        got = vqa.question_accuracy(item["prediction"], answers, variant, convention)
        assert got == expected[str(item["question_id"])], item["question_id"]


def test_scienceqa_lmms_eval_equals_its_process_results() -> None:
    expected = ref("choice_lmms_eval.json")["scienceqa_exact_match"]
    problems, answers = scienceqa_case()
    for a in answers:
        p = problems[a["question_id"]]
        got = scienceqa.extract(a["text"], p["choices"], "lmms-eval") == "ABCDE"[p["answer"]]
        assert float(got) == expected[a["question_id"]], repr(a["text"])
    result = scienceqa.score(problems, {a["question_id"]: a for a in answers}, "lmms-eval")
    assert result["accuracy"] == sum(expected.values()) / len(expected)


def test_seed_lmms_eval_equals_its_aggregation() -> None:
    expected = ref("choice_lmms_eval.json")
    doc, answers = seed_case()
    by_id = {a["question_id"]: a["prediction"] for a in answers}
    assert seed.score(doc["questions"], by_id, "lmms-eval")["overall"] == expected["seed_all"]
    for q in doc["questions"]:
        one = seed.score([q], {q["question_id"]: by_id[q["question_id"]]}, "lmms-eval")
        assert one["overall"] == expected["seed_per_question"][q["question_id"]]


def write_textvqa(tmp_path: Path) -> tuple[Path, Path, Path]:
    annotations, ours, llava = textvqa_case()
    ann = tmp_path / "TextVQA_0.5.1_val.json"
    ann.write_text(json.dumps(annotations))
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "llava.jsonl").write_text("".join(json.dumps(r) + "\n" for r in llava))
    return ann, tmp_path / "ours.json", tmp_path / "llava.jsonl"


def test_textvqa_sums_in_the_answer_files_order_as_the_m4c_evaluator(tmp_path: Path) -> None:
    expected = ref("textvqa_llava.json")
    # On these inputs the order shows in the last bit: it must be the answer file's.
    assert expected["accuracy_in_answer_file_order"] != expected["accuracy_in_annotation_order"]
    ann, ours, _ = write_textvqa(tmp_path)
    got = vqa.score_files(ann, ours, variant="textvqa")
    assert got["accuracy"] == expected["accuracy_in_answer_file_order"]
    for item in vqa.load_items(ann, ours):
        one = vqa.question_accuracy(item["prediction"], item["answers"], "textvqa")
        assert one == expected["per_question"][str(item["question_id"])]


def test_llavas_own_textvqa_answer_file_is_paired_by_image_and_question(tmp_path: Path) -> None:
    expected = ref("textvqa_llava.json")
    ann, _, llava = write_textvqa(tmp_path)
    got = vqa.score_files(ann, llava, variant="textvqa")
    assert f"Accuracy: {100 * got['accuracy']:.2f}%" == expected["eval_textvqa_printed"]
    assert got["accuracy"] == expected["accuracy_in_answer_file_order"]


def write_mmbench_case(tmp_path: Path) -> Path:
    import csv

    header, rows = mmbench_case()
    path = tmp_path / "mmbench.tsv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, header, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def test_vlmevalkit_choice_equals_can_infer_now_and_before_august_2025() -> None:
    expected = ref("choice_vlmevalkit.json")["can_infer"]
    assert sum(e["now"] != e["2024"] for e in expected) > 10  # the two rules really differ here
    for (prediction, choices), e in zip(OPTIONS_CASES, expected, strict=True):
        assert choice.vlmevalkit_choice(prediction, dict(choices)) == e["now"], prediction
        assert choice.vlmevalkit_choice_2024(prediction, dict(choices)) == e["2024"], prediction


def test_mmbench_under_vlmevalkit_reads_the_tsv_as_pandas_does(tmp_path: Path) -> None:
    expected = ref("choice_vlmevalkit.json")["pandas_rows"]
    typed = mmbench.read_tsv(write_mmbench_case(tmp_path), as_pandas=True)
    assert any(r["prediction"] is None for r in typed)  # predictions pandas reads as missing
    assert any(isinstance(r["D"], float) for r in typed)  # a column of numbers with a gap
    for r in typed:
        prediction = "nan" if r["prediction"] is None else str(r["prediction"])
        got = mmbench.pick(prediction, mmbench.row_choices(r), "vlmevalkit")
        assert got == expected[str(r["index"])], r["index"]


def test_pope_official_equals_llavas_eval_pope_per_split(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import pope

    from .refs.pope_inputs import write_pope_case

    expected = ref("llava_scripts.json")["pope"]
    paths = write_pope_case(tmp_path)
    got = pope.score_files([a for a, _ in paths.values()], [p for _, p in paths.values()])
    assert set(got["splits"]) == set(expected)
    for split, e in expected.items():
        s = got["splits"][split]
        for key in ("n", "tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "f1",
                    "yes_ratio"):
            assert s[key] == e[key], (split, key)


def test_scienceqa_official_equals_llavas_eval_science_qa() -> None:
    expected = ref("llava_scripts.json")["scienceqa"]
    problems, answers = scienceqa_case()
    result = scienceqa.score(problems, {a["question_id"]: a for a in answers})
    assert result["accuracy"] == expected["acc"]
    assert (result["correct"], result["total"]) == (expected["correct"], expected["count"])
    printed = (f"Total: {result['total']}, Correct: {result['correct']}, "
               f"Accuracy: {result['accuracy']:.2f}%, IMG-Accuracy: {result['img_accuracy']:.2f}%")
    assert printed == expected["printed"]
    for a in answers:
        p = problems[a["question_id"]]
        letter = scienceqa.extract(a["text"], p["choices"])
        index = -1 if letter is None else "ABCDE".index(letter)
        assert index == expected["results"][a["question_id"]], repr(a["text"])


def test_seed_official_equals_llavas_convert_seed_for_submission() -> None:
    expected = ref("llava_scripts.json")["seed"]["printed"]
    doc, answers = seed_case()
    names = {int(v): k for k, v in doc["question_type"].items()}
    got = seed.score(doc["questions"], {a["question_id"]: a["prediction"] for a in answers},
                     dimension_names=names)
    printed = [f"{k}: {v:.2f}%" for k, v in got["per_dimension"].items()]
    printed.append(f"Total accuracy: {got['overall']:.2f}%")
    printed += [f"{k} accuracy: {v:.2f}%" for k, v in got["per_data_type"].items()]
    assert printed == expected


def test_pope_lmms_eval_equals_its_aggregations(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import pope

    from .refs.pope_inputs import write_pope_case

    expected = ref("pope_mme.json")["pope_lmms_eval"]
    paths = write_pope_case(tmp_path)
    got = pope.score_files([a for a, _ in paths.values()], [p for _, p in paths.values()],
                           convention="lmms-eval")
    for split, e in expected.items():
        s = got["splits"][split]
        assert (s["accuracy"], s["precision"], s["recall"], s["f1"], s["yes_ratio"]) == (
            e["accuracy"], e["precision"], e["recall"], e["f1_score"], e["yes_ratio"]), split


def test_mme_official_equals_the_eval_tools_calculation(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import mme

    from .refs.mme_inputs import write_mme_case

    expected = ref("pope_mme.json")["mme_official"]
    got = mme.score_files(write_mme_case(tmp_path))
    assert got["subtasks"] == expected["subtasks"]
    assert (got["perception"], got["cognition"]) == (expected["perception"],
                                                     expected["cognition"])


def test_mme_lmms_eval_equals_its_aggregation(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import mme

    from .refs.mme_inputs import write_mme_case

    expected = ref("pope_mme.json")
    got = mme.score_files(write_mme_case(tmp_path), convention="lmms-eval")
    assert got["perception"] == expected["mme_lmms_eval"]["mme_perception_score"]
    assert got["cognition"] == expected["mme_lmms_eval"]["mme_cognition_score"]
    logged = [f"{k}: {v:.2f}" for k, v in got["subtasks"].items()]
    assert logged == expected["mme_lmms_eval_logged"]


def test_pope_and_mme_vlmevalkit_equal_its_ratings(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import mme, pope

    from .refs.mme_inputs import write_mme_case
    from .refs.pope_inputs import write_pope_case

    expected = ref("pope_mme.json")
    paths = write_pope_case(tmp_path)
    got = pope.score_files([a for a, _ in paths.values()], [p for _, p in paths.values()],
                           convention="vlmevalkit")
    for split, e in expected["pope_vlmevalkit"].items():
        s = got["all"] if split == "Overall" else got["splits"][split]
        assert (s["f1"], s["accuracy"], s["precision"], s["recall"]) == (
            e["Overall"], e["acc"], e["precision"], e["recall"]), split
    (tmp_path / "mme").mkdir()
    m = mme.score_files(write_mme_case(tmp_path / "mme"), convention="vlmevalkit")
    e = dict(expected["mme_vlmevalkit"])
    assert (m["perception"], m["cognition"]) == (e.pop("perception"), e.pop("reasoning"))
    assert m["subtasks"] == e


def test_textvqa_vlmevalkit_equals_its_process_line(tmp_path: Path) -> None:
    expected = ref("textvqa_vlmevalkit.json")
    ann, ours, _ = write_textvqa(tmp_path)
    got = vqa.score_files(ann, ours, variant="textvqa", convention="vlmevalkit")
    assert got["overall"] == expected["Overall"]
    for item in vqa.load_items(ann, ours):
        one = vqa.question_accuracy(item["prediction"], item["answers"], "textvqa", "vlmevalkit")
        assert one == expected["per_question"][str(item["question_id"])], item["prediction"]
    # Its period rule differs from the official one after a digit, and these inputs show it.
    assert vqa.question_accuracy("10.", ["10"] * 10, "textvqa", "vlmevalkit") == 0.0
    assert vqa.question_accuracy("10.", ["10"] * 10, "textvqa", "official") == 1.0


def test_mmbench_lmms_eval_equals_its_can_infer(tmp_path: Path) -> None:
    expected = ref("mmbench_lmms_eval.json")
    checked = 0
    for (prediction, choices), e in zip(OPTIONS_CASES, expected["can_infer"], strict=True):
        if e == "not run: an option beyond D":
            continue
        assert choice.lmms_eval_choice(prediction, dict(choices)) == e, prediction
        checked += 1
    assert checked > 200
    for r in mmbench.read_tsv(write_mmbench_case(tmp_path), as_pandas=True):
        prediction = "nan" if r["prediction"] is None else str(r["prediction"])
        got = mmbench.pick(prediction, mmbench.row_choices(r), "lmms-eval")
        assert got == expected["prefetch"][str(r["index"])], r["index"]


def test_moat_equals_its_analyze_py_under_python_312(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import moat

    from .refs.moat_inputs import write_moat_case

    expected = ref("moat_analyze.json")
    got = moat.score_files(write_moat_case(tmp_path))
    per_cap = dict(expected["per_capability"])
    overall = per_cap.pop("overall")
    assert overall == expected["per_combination"].pop("overall")
    naive = 0.0
    for acc in got["runs"]:
        naive += acc
    assert naive / len(got["runs"]) != overall  # the summation order shows on these inputs
    assert got["overall"] == overall
    assert got["runs"] == expected["runs"]
    assert got["per_capability"] == per_cap
    assert got["per_combination"] == expected["per_combination"]


@pytest.mark.parametrize("run", ["testdev", "with_choices_consistency"])
def test_gqa_equals_its_eval_py(run: str, tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import gqa

    from .refs.gqa_inputs import write_gqa_case

    expected = ref("gqa_eval.json")["runs"][run]
    questions, choices, answers = write_gqa_case(tmp_path)
    extra = {"choices": choices, "consistency": True} if run != "testdev" else {}
    got = gqa.score_files(questions, answers, **extra)
    for key in ("accuracy", "binary", "open", "distribution"):
        assert got[key] == expected[key], key
    if run == "testdev":  # the script prints 0 for what it cannot compute; we say None
        assert expected["validity"] == expected["plausibility"] == 0.0
        assert got["validity"] is got["plausibility"] is got["consistency"] is None
    else:
        for key in ("validity", "plausibility", "consistency"):
            assert got[key] == expected[key], key
    for ours, theirs in (("per_structural_type", "accuracyPerStructuralType"),
                         ("per_semantic_type", "accuracyPerSemanticType"),
                         ("per_steps", "accuracyPerSteps"), ("per_length", "accuracyPerLength")):
        assert {k: [v["accuracy"], v["n"]] for k, v in got[ours].items()} == expected[theirs]


@pytest.mark.parametrize("run", ["with_answerable", "without_answerable"])
def test_vizwiz_equals_the_vizwiz_api(run: str, tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import vizwiz

    from .refs.vizwiz_inputs import write_vizwiz_case

    expected = ref("vizwiz_api.json")["runs"][run]
    annotations, results = write_vizwiz_case(tmp_path, run == "with_answerable")
    got = vizwiz.score_files(annotations, results)
    assert got["overall"] == expected["accuracy"]["overall"]
    assert got["per_answer_type"] == expected["accuracy"]["perAnswerType"]
    u = got["unanswerable"]
    assert {k: u[k] for k in ("average_precision", "f1_score")} == expected["unanswerability"]
    res = vizwiz.read_results(results)
    for a in vizwiz.load_annotations(annotations):
        acc = vizwiz.question_accuracy(res[a["image"]]["answer"],
                                       [x["answer"] for x in a["answers"]])
        assert round(100 * acc, 2) == expected["evalQA"][a["image"]], a["image"]
    # The curly-apostrophe table is the API's: "dont" is not a human "don't" there.
    assert vizwiz.normalize_prediction("Dont know.") == "don\u2019t know"


def test_vizwiz_lmms_eval_equals_its_process_results(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import vizwiz

    from .refs.vizwiz_inputs import write_vizwiz_case

    expected = ref("vizwiz_api.json")["lmms_eval"]
    annotations, results = write_vizwiz_case(tmp_path)
    assert vizwiz.score_files(annotations, results, "lmms-eval")["overall"] == expected["mean"]
    res = vizwiz.read_results(results)
    for a in vizwiz.load_annotations(annotations):
        got = vizwiz.question_accuracy(res[a["image"]]["answer"],
                                       [x["answer"] for x in a["answers"]], "lmms-eval")
        assert got == expected["per_question"][a["image"]], a["image"]


def test_mmhal_equals_its_summarize_script(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import mmhal

    from .refs.mmhal_inputs import write_mmhal_case

    expected = ref("mmhal_summarize.json")
    responses, review = write_mmhal_case(tmp_path)
    with pytest.warns(UserWarning, match="count as 0"):
        got = mmhal.score_files(responses, review)
    per = got["per_type"]
    assert [f"Average score: {got['average_score']:.2f}",
            f"Hallucination rate: {got['hallucination_rate']:.2f}",
            "Average score for each question type: " + ",".join(
                str(round(per[t], 2)) for t in mmhal.TYPES)] == expected["summary_lines"]
    replies = mmhal.load_replies(review)
    assert [i for i, r in enumerate(replies) if mmhal.parse_rating(r) is None] == \
        expected["unparsed_indices"]
    assert got["unparsed"] == len(expected["unparsed_indices"])


def test_chair_equals_the_original_chair_code(tmp_path: Path) -> None:
    from tinyvlm.eval.scorers import chair

    from .refs.chair_inputs import write_chair_case

    expected = ref("chair_maxlinn.json")
    captions, objects = write_chair_case(tmp_path)
    got = chair.score_files(captions, objects=objects, details=True)
    e = expected["overall"]
    assert (got["chair_s"], got["chair_i"], got["recall"]) == (e["CHAIRs"], e["CHAIRi"],
                                                               e["Recall"])
    assert len(got["captions"]) == len(expected["sentences"])
    for ours, theirs in zip(got["captions"], expected["sentences"], strict=True):
        assert ours["generated"] == theirs["generated"], ours["caption"]
        assert [list(h) for h in ours["hallucinated"]] == theirs["hallucinated"], ours["caption"]
