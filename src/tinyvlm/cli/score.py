"""`tinyvlm score`: score predictions by the official scripts' rules (or another harness's)."""

from __future__ import annotations

import click

from tinyvlm.cli.common import print_scores, score_options


@click.group("score")
def score_group() -> None:
    """Score benchmark predictions by the official scripts' rules, or another harness's.

    Each command prints one JSON object (or a table with --table). docs/evaluation.md lists
    every benchmark's rule and how the harnesses differ.

    \b
    Example:
      tinyvlm score pope --annotations coco_pope_random.json --predictions answers.jsonl
    """


@score_group.command("pope")
@click.option("--annotations", multiple=True, required=True,
              help="POPE question file (JSONL: question_id, image, text, label); repeat for "
                   "several splits.")
@click.option("--predictions", multiple=True, required=True,
              help="Answer file (JSONL: question_id and text or answer), one per --annotations, "
                   "in the same order.")
@score_options
def score_pope(annotations: tuple[str, ...], predictions: tuple[str, ...], convention: str,
               table: bool) -> None:
    """POPE accuracy, precision, recall, F1 and yes-ratio; with several splits, also their
    mean F1 (the number LLaVA-style papers print).

    \b
    Example:
      tinyvlm score pope --annotations coco_pope_random.json --predictions random.jsonl
      tinyvlm score pope --annotations coco_pope_random.json --predictions random.jsonl \\
          --annotations coco_pope_popular.json --predictions popular.jsonl \\
          --annotations coco_pope_adversarial.json --predictions adversarial.jsonl
    """
    from tinyvlm.eval.scorers import pope

    print_scores(lambda: pope.score_files(annotations, predictions, convention), table)


@score_group.command("mme")
@click.option("--predictions", required=True,
              help="Directory with one <subtask>.txt per subtask "
                   "(image<TAB>question<TAB>answer<TAB>prediction).")
@score_options
def score_mme(predictions: str, convention: str, table: bool) -> None:
    """MME perception and cognition scores and every subtask's score.

    \b
    Example:
      tinyvlm score mme --predictions runs/eval/mme_answers
    """
    from tinyvlm.eval.scorers import mme

    print_scores(lambda: mme.score_files(predictions, convention), table)


@score_group.command("mmbench")
@click.option("--predictions", required=True,
              help="MMBench TSV with a prediction column (index, question, A..D, answer, "
                   "category, l2-category, prediction).")
@score_options
def score_mmbench(predictions: str, convention: str, table: bool) -> None:
    """MMBench circular accuracy overall, per category and per l2-category (rule-based
    answer extraction; no judge model).

    \b
    Example:
      tinyvlm score mmbench --predictions mmbench_dev_en_answers.tsv
    """
    from tinyvlm.eval.scorers import mmbench

    print_scores(lambda: mmbench.score_files(predictions, convention), table)


@score_group.command("seed")
@click.option("--annotations", required=True, help="SEED-Bench.json.")
@click.option("--predictions", required=True,
              help="Answer file (JSONL: question_id, text).")
@score_options
def score_seed(annotations: str, predictions: str, convention: str, table: bool) -> None:
    """SEED-Bench accuracy per dimension, per data type and overall.

    \b
    Example:
      tinyvlm score seed --annotations SEED-Bench.json --predictions seed_answers.jsonl
    """
    from tinyvlm.eval.scorers import seed

    print_scores(lambda: seed.score_files(annotations, predictions, convention), table)


@score_group.command("scienceqa")
@click.option("--problems", required=True, help="ScienceQA problems.json.")
@click.option("--predictions", required=True,
              help="Answer file (JSONL: question_id, text, prompt).")
@click.option("--split", default="test", show_default=True, help="Split to score.")
@click.option("--pid-splits", default=None,
              help="pid_splits.json [default: the problems' own 'split' field].")
@score_options
def score_scienceqa(problems: str, predictions: str, split: str, pid_splits: str | None,
                    convention: str, table: bool) -> None:
    """ScienceQA accuracy and accuracy on questions with an image.

    \b
    Example:
      tinyvlm score scienceqa --problems problems.json --predictions sqa_answers.jsonl
    """
    from tinyvlm.eval.scorers import scienceqa

    print_scores(lambda: scienceqa.score_files(problems, predictions, split, pid_splits,
                                                convention), table)


@score_group.command("vqa")
@click.option("--annotations", required=True,
              help="VQAv2 annotations JSON, or a TextVQA JSON ({'data': [...]}).")
@click.option("--results", required=True,
              help="Results: JSON list [{question_id, answer}] or JSONL with text or answer.")
@click.option("--questions", default=None,
              help="VQAv2 questions JSON, to check the annotated ids against.")
@click.option("--variant", type=click.Choice(["vqav2", "textvqa"]), default="vqav2",
              show_default=True, help="VQAv2 script or the TextVQA (M4C) evaluator.")
@score_options
def score_vqa(annotations: str, results: str, questions: str | None, variant: str,
              convention: str, table: bool) -> None:
    """VQA accuracy: min(1, matches/3) over leave-one-out subsets of the human answers.

    \b
    Example:
      tinyvlm score vqa --questions v2_OpenEnded_mscoco_val2014_questions.json \\
          --annotations v2_mscoco_val2014_annotations.json --results results.json
      tinyvlm score vqa --variant textvqa --annotations TextVQA_0.5.1_val.json \\
          --results textvqa_answers.jsonl
    """
    from tinyvlm.eval.scorers import vqa

    print_scores(lambda: vqa.score_files(annotations, results, questions, variant,
                                          convention), table)


@score_group.command("moat")
@click.option("--predictions", multiple=True, required=True,
              help="JSONL of capability-tagged predictions (ours or MOAT's columns); repeat "
                   "once per run.")
@score_options
def score_moat(predictions: tuple[str, ...], convention: str, table: bool) -> None:
    """MOAT-style accuracy overall, per capability and per capability combination,
    averaged over runs (exact match unless the records carry a verdict).

    \b
    Example:
      tinyvlm score moat --predictions run1.jsonl --predictions run2.jsonl
    """
    from tinyvlm.eval.scorers import moat

    print_scores(lambda: moat.score_files(predictions, convention), table)


@score_group.command("gqa")
@click.option("--questions", required=True,
              help="GQA questions JSON (e.g. testdev_balanced_questions.json).")
@click.option("--predictions", required=True,
              help="Predictions: eval.py's JSON [{questionId, prediction}], or LLaVA's JSONL "
                   "answers (question_id, text; lowercased, trailing periods stripped).")
@click.option("--choices", default=None,
              help="Choices JSON (valid / plausible answers): adds validity and plausibility.")
@click.option("--consistency", is_flag=True,
              help="Also score consistency (needs predictions for every question of the "
                   "file, e.g. the all-questions file).")
@score_options
def score_gqa(questions: str, predictions: str, choices: str | None, consistency: bool,
              convention: str, table: bool) -> None:
    """GQA accuracy (binary, open, per structural and semantic type, per steps and length)
    and distribution, as GQA's eval.py computes them.

    \b
    Example:
      tinyvlm score gqa --questions testdev_balanced_questions.json \\
          --predictions testdev_balanced_predictions.json
    """
    from tinyvlm.eval.scorers import gqa

    print_scores(lambda: gqa.score_files(questions, predictions, choices, consistency,
                                          convention), table)


@score_group.command("vizwiz")
@click.option("--annotations", required=True, help="VizWiz annotations JSON (e.g. val.json).")
@click.option("--results", required=True,
              help="Results JSON [{image, answer}] (with 'answerable' if the model gives it).")
@score_options
def score_vizwiz(annotations: str, results: str, convention: str, table: bool) -> None:
    """VizWiz-VQA accuracy overall and per answer type, and average precision and F1 of
    recognising unanswerable questions, as the VizWiz API computes them.

    \b
    Example:
      tinyvlm score vizwiz --annotations val.json --results results.json
    """
    from tinyvlm.eval.scorers import vizwiz

    print_scores(lambda: vizwiz.score_files(annotations, results, convention), table)


@score_group.command("mmhal")
@click.option("--responses", required=True,
              help="Response file: MMHal-Bench's response_template.json with model_answer "
                   "filled in (the harness writes it).")
@click.option("--judge-replies", default=None,
              help="The judge's saved replies, one per record: eval_gpt4.py's --evaluation "
                   "file or a JSON list of strings.")
@click.option("--judge", "judge_spec", default=None, metavar="MODULE:FUNCTION",
              help="A Python function called with each record that returns the judge's reply "
                   "(it builds the prompt and calls the model). Off unless given.")
@score_options
def score_mmhal(responses: str, judge_replies: str | None, judge_spec: str | None,
                convention: str, table: bool) -> None:
    """MMHal-Bench average rating, hallucination rate and per-type ratings, read from a judge's
    replies as eval_gpt4.py reads them. Without a judge or its replies nothing is rated: the
    result says so and gives what needs no judge.

    \b
    Example:
      tinyvlm score mmhal --responses mmhal.responses.json --judge-replies review.json
    """
    from tinyvlm.cli.common import load_callable
    from tinyvlm.errors import InputError
    from tinyvlm.eval.scorers import mmhal

    if judge_replies and judge_spec:
        raise InputError("give --judge-replies or --judge, not both")
    judge = load_callable(judge_spec, "--judge") if judge_spec else None
    if judge is None and judge_replies is None:
        click.echo("note: no judge given (--judge or --judge-replies): nothing is rated",
                   err=True)
    print_scores(lambda: mmhal.score_files(responses, judge_replies, judge,  # type: ignore[arg-type]
                                           convention), table)


@score_group.command("chair")
@click.option("--captions", required=True,
              help="Generated captions: JSONL or JSON list of {image_id, caption} (or the "
                   "original CHAIR input, {imgToEval: ...}).")
@click.option("--coco-annotations", default=None,
              help="Directory with instances_val2014.json and captions_val2014.json (and/or "
                   "train2014): the ground-truth objects.")
@click.option("--objects", default=None,
              help="Instead: a JSON {image_id: [COCO classes]} of ground-truth objects.")
@click.option("--image-id-key", default="image_id", show_default=True)
@click.option("--caption-key", default="caption", show_default=True)
@click.option("--details", is_flag=True, help="Add every caption's words and hallucinations.")
@score_options
def score_chair(captions: str, coco_annotations: str | None, objects: str | None,
                image_id_key: str, caption_key: str, details: bool, convention: str,
                table: bool) -> None:
    """CHAIR_s, CHAIR_i and recall of generated captions (object hallucination, as in Object
    HalBench), by the original CHAIR code's rules and COCO synonym list.

    \b
    Example:
      tinyvlm score chair --captions captions.jsonl --coco-annotations coco/annotations
    """
    from tinyvlm.eval.scorers import chair

    print_scores(lambda: chair.score_files(captions, coco_annotations, objects, image_id_key,
                                            caption_key, details, convention), table)
