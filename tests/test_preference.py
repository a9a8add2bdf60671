"""Preference distillation: pair building, the pairs file, the `preference` objective, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinyvlm.config import PreferenceConfig, Recipe, StageConfig, check_recipe, from_dict
from tinyvlm.data.answers import normalize_answer
from tinyvlm.data.conversation import IMAGE_PLACEHOLDER, Conversation, drop_oldest
from tinyvlm.data.llava import load_llava
from tinyvlm.data.pairs import load_pairs, write_pairs
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.models.vlm import TinyVLM
from tinyvlm.train.loop import configure_trainable, train_stage
from tinyvlm.train.objectives import Preference, build_objective
from tinyvlm.train.objectives import preference as pref_module
from tinyvlm.train.pairs import (
    balance_yes_no_pairs,
    build_pairs,
    load_probes,
    pope_pairs,
    yes_no_side,
)
from tinyvlm.train.teacher import FrozenModel

from .conftest import tiny_model_config, tiny_recipe
from .test_cli import run_cli


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    # Tiny models: on a busy 2-core machine, torch's thread pool waits more than it computes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(tok: Tokenizer, seed: int) -> TinyVLM:
    torch.manual_seed(seed)
    return TinyVLM.from_tokenizer(tiny_model_config(), tok).eval()


def images_in(record: dict) -> int:
    return sum(u.count(IMAGE_PLACEHOLDER) for u, _ in record["history"]) + \
        record["prompt"].count(IMAGE_PLACEHOLDER)


@pytest.fixture(scope="module")
def pairs_file(shapes_dir: Path, shapes_tokenizer: Tokenizer,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ground-truth pairs with (trimmed) multi-turn history, plus POPE pairs."""
    student = make_model(shapes_tokenizer, seed=3)
    records = build_pairs(student, load_llava(shapes_dir / "train.json")[:4], n_samples=3,
                          seed=0, max_new_tokens=4, progress=False)
    records += pope_pairs(load_probes(shapes_dir / "pope_random.jsonl"))[:6]
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", records)


def pref_stage(pairs: Path, **cfg: object) -> StageConfig:
    return StageConfig(name="pref", objective="preference", steps=2, batch_size=4,
                       warmup_steps=1, log_every=1, lr=1e-2,
                       preference=PreferenceConfig(pairs=str(pairs), **cfg))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pair building


def test_ground_truth_pairs(shapes_tokenizer: Tokenizer, shapes_dir: Path) -> None:
    convs = load_llava(shapes_dir / "train.json")[:5]
    student = make_model(shapes_tokenizer, seed=3)
    kw = {"n_samples": 4, "max_new_tokens": 4, "progress": False}
    records = build_pairs(student, convs, seed=0, **kw)  # type: ignore[arg-type]
    assert records == build_pairs(student, convs, seed=0, **kw)  # type: ignore[arg-type]
    other = build_pairs(student, convs, seed=1, **kw)  # type: ignore[arg-type]
    assert [r["meta"]["samples"] for r in other] != [r["meta"]["samples"] for r in records]
    assert len(records) == len(convs)  # an untrained student is wrong everywhere
    for conv, r in zip(convs, records, strict=True):
        truth = normalize_answer(conv.answer)
        assert r["source"] == "ground_truth" and r["chosen"] == conv.answer
        assert normalize_answer(r["rejected"]) != truth
        wrong = [normalize_answer(s) for s in r["meta"]["samples"]
                 if normalize_answer(s) != truth]
        top = Counter(wrong).most_common(1)[0][1]
        assert Counter(wrong)[normalize_answer(r["rejected"])] == top
        assert r["prompt"] == conv.question and r["meta"]["type"] == conv.meta[-1]["type"]
        # The history was trimmed from the front to fit, the image placeholder kept.
        assert 0 < len(r["history"]) < len(conv.turns) - 1
        assert r["history"][-1] == list(conv.turns[-2])
        assert images_in(r) == 1 and r["image"] == str(conv.images[0].resolve())


def test_every_sample_right_gives_no_pair(shapes_tokenizer: Tokenizer, shapes_dir: Path) -> None:
    conv = load_llava(shapes_dir / "test.json")[0]
    student = make_model(shapes_tokenizer, seed=3)
    kw = {"n_samples": 1, "seed": 7, "max_new_tokens": 3, "progress": False}
    (record,) = build_pairs(student, [conv], **kw)  # type: ignore[arg-type]
    (sample,) = record["meta"]["samples"]
    assert sample
    # The same seed samples the same answer; now it is the (differently written) truth.
    right = dataclasses.replace(conv, turns=[(conv.question, sample.upper() + ".")])
    assert build_pairs(student, [right], **kw) == []  # type: ignore[arg-type]
    all_turns = build_pairs(student, load_llava(shapes_dir / "train.json")[:1], n_samples=2,
                            max_new_tokens=3, all_turns=True, progress=False)
    assert len({r["id"] for r in all_turns}) == len(all_turns) > 1


def direct_score(teacher: TinyVLM, tok: Tokenizer, record: dict, answer: str) -> float:
    """Mean log-prob per answer token (end token included), one unpadded sequence."""
    turns = [*map(tuple, record["history"]), (record["prompt"], answer)]
    ids, trainable = tok.encode_conversation(turns, teacher.image_tokens)
    from tinyvlm.data.images import ImageStore

    pixels = ImageStore(teacher.config.vision.image_size).pixels([Path(record["image"])])
    with torch.no_grad():
        logits = teacher(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                         pixels).logits[0]
    start = len(tok.encode_prompt(turns[:-1], turns[-1][0], teacher.image_tokens))
    logp = F.log_softmax(logits.float(), dim=-1)
    picks = [float(logp[t - 1, ids[t]]) for t in range(start, len(ids)) if trainable[t]]
    return sum(picks) / len(picks)


def test_teacher_ranks_prompts_without_ground_truth(shapes_tokenizer: Tokenizer,
                                                    shapes_dir: Path) -> None:
    convs = [dataclasses.replace(c, turns=[(c.question, "")])
             for c in load_llava(shapes_dir / "test.json")[:4]]
    student = make_model(shapes_tokenizer, seed=3)
    with pytest.raises(InputError, match="4 prompts have no ground-truth answer"):
        build_pairs(student, convs, progress=False)
    teacher = FrozenModel(make_model(shapes_tokenizer, seed=5))
    records = build_pairs(student, convs, n_samples=4, seed=0, teacher=teacher,
                          max_new_tokens=4, progress=False)
    assert records and all(r["source"] == "teacher" for r in records)
    for r in records:
        options = r["meta"]["scored"]
        scores = [direct_score(teacher.model, shapes_tokenizer, r, s) for s in options]
        assert r["meta"]["scores"] == pytest.approx(scores, abs=1e-5)
        assert r["chosen"] == options[max(range(len(options)), key=scores.__getitem__)]
        assert r["rejected"] == options[min(range(len(options)), key=scores.__getitem__)]
        assert max(scores) > min(scores)


def test_pope_pairs(shapes_dir: Path) -> None:
    rows = [json.loads(line) for line in (shapes_dir / "pope_adversarial.jsonl").open()]
    pairs = pope_pairs(load_probes(shapes_dir / "pope_adversarial.jsonl"))
    assert len(pairs) == len(rows)
    for row, p in zip(rows, pairs, strict=True):
        assert p["source"] == "pope" and p["chosen"] == row["label"]
        assert p["rejected"] == {"yes": "no", "no": "yes"}[row["label"]]
        assert p["prompt"] == f"{IMAGE_PLACEHOLDER}\n{row['text']}" and p["history"] == []
        assert p["image"] == str((shapes_dir / row["image"]).resolve())
    # From training conversations: only the existence turns, each standing alone.
    convs = load_llava(shapes_dir / "train.json")[:3]
    train_pairs = pope_pairs(convs)
    expected = sum("EXIST" in m["capabilities"] for c in convs for m in c.meta)
    assert len(train_pairs) == expected > 0
    assert all(images_in(p) == 1 and not p["history"] for p in train_pairs)


def test_balance_yes_no_keeps_equal_sides_and_every_other_pair() -> None:
    def pair(i: int, chosen: str, rejected: str) -> dict[str, object]:
        return {"id": str(i), "chosen": chosen, "rejected": rejected}

    records = ([pair(i, "Yes", "no") for i in range(3)]  # normalised: still yes over no
               + [pair(i, "no", "yes.") for i in range(3, 10)]
               + [pair(10, "red", "blue"), pair(11, "yes", "red"), pair(12, "no", "no")])
    kept = balance_yes_no_pairs(records, seed=1)
    sides = Counter(yes_no_side(r) for r in kept)
    assert sides == {"yes": 3, "no": 3, None: 3}
    # The smaller side and the other pairs are all kept, in their order.
    assert [r["id"] for r in kept if yes_no_side(r) != "no"] == ["0", "1", "2", "10", "11", "12"]
    assert [r["id"] for r in kept] == sorted((r["id"] for r in kept), key=int)
    assert kept == balance_yes_no_pairs(records, seed=1)
    assert balance_yes_no_pairs(records[:3]) == []  # no "no" side: no yes/no pair survives


# ----------------------------------------------------------------------------- the pairs file


def test_pairs_file_round_trip_and_bad_lines(shapes_dir: Path, tmp_path: Path,
                                             pairs_file: Path) -> None:
    records = load_pairs(pairs_file)
    raw = [json.loads(line) for line in pairs_file.open()]
    assert not Path(raw[0]["image"]).is_absolute()  # portable: relative to the file
    again = write_pairs(tmp_path / "sub" / "again.jsonl", records)
    assert load_pairs(again) == records
    # TRL / RLAIF-V style: no placeholder in the prompt, no history, no source.
    trl = tmp_path / "trl.jsonl"
    image = str(shapes_dir / "images/test/000001.png")
    trl.write_text(json.dumps({"prompt": "what is it?", "image": image, "chosen": "a",
                               "rejected": "b"}) + "\n")
    (rec,) = load_pairs(trl)
    assert rec["prompt"] == f"{IMAGE_PLACEHOLDER}\nwhat is it?" and rec["history"] == []
    bad = tmp_path / "bad.jsonl"
    lines = pairs_file.read_text().splitlines()[:2]
    bad.write_text("\n".join([*lines, json.dumps({"prompt": "q", "chosen": "a"})]) + "\n")
    with pytest.raises(InputError, match=rf"{bad}:3: bad preference pair: 'rejected'"):
        load_pairs(bad)
    bad.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(InputError, match=rf"{bad}:2: malformed JSON"):
        load_pairs(bad)
    bad.write_text(json.dumps({"prompt": "<image> <image>", "image": image, "chosen": "a",
                               "rejected": "b"}) + "\n")
    with pytest.raises(InputError, match=rf"{bad}:1: .*2 <image> placeholders for 1 images"):
        load_pairs(bad)


# ----------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("loss,expected", [
    ("sigmoid", math.log(2)), ("hinge", 1.0), ("ipo", (1 / (2 * 0.1)) ** 2), ("kto_pair", 0.5),
])
def test_losses_at_initialisation(loss: str, expected: float, shapes_tokenizer: Tokenizer,
                                  shapes_dir: Path, pairs_file: Path) -> None:
    student = make_model(shapes_tokenizer, seed=3)
    stage = pref_stage(pairs_file, loss=loss, reference="initial")
    obj = build_objective("preference", student, stage)
    source = obj.data(student, tiny_recipe(shapes_dir).data, stage)
    student.train()  # the policy in training mode, the reference in eval: still equal
    out = obj(student, source.collate(source.items[:4]))
    assert out.units == 4
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert out.metrics["reward_margin"] == 0.0 and out.metrics["reward_accuracy"] == 0.0


def test_ipo_gets_response_lengths(shapes_tokenizer: Tokenizer, shapes_dir: Path,
                                   pairs_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    real = pref_module.preference_loss

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(pref_module, "preference_loss", spy)
    student = make_model(shapes_tokenizer, seed=3)
    stage = pref_stage(pairs_file, loss="ipo", reference="initial")
    obj = build_objective("preference", student, stage)
    source = obj.data(student, tiny_recipe(shapes_dir).data, stage)
    items = source.items[:4]
    obj(student, source.collate(items))
    lengths = [[len(shapes_tokenizer.encode(r[k])) + 1 for r in items]
               for k in ("chosen", "rejected")]
    assert seen["chosen_lengths"].tolist() == lengths[0]
    assert seen["rejected_lengths"].tolist() == lengths[1]


@pytest.mark.parametrize("reference", ["initial", "teacher"])
def test_reference_is_frozen_and_outside_the_optimizer(reference: str,
                                                       shapes_tokenizer: Tokenizer,
                                                       shapes_dir: Path, pairs_file: Path,
                                                       tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    make_model(shapes_tokenizer, seed=5).save_pretrained(teacher_dir)
    student = make_model(shapes_tokenizer, seed=3)
    stage = pref_stage(pairs_file, reference=reference, teacher=str(teacher_dir),
                       sft_weight=0.5)
    obj = build_objective("preference", student, stage)
    assert isinstance(obj, Preference)
    ref = obj.reference.model
    assert ref is not student
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    groups = configure_trainable(student, obj, stage)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in ref.parameters()}
    assert not any(k.startswith("_reference") for k in obj.state_dict())
    source = obj.data(student, tiny_recipe(shapes_dir).data, stage)
    out = obj(student, source.collate(source.items[:4]))
    assert out.metrics["ce"] > 0
    out.loss.backward()
    assert all(p.grad is None for p in ref.parameters())
    assert any(p.grad is not None for p in student.language.parameters())
    if reference == "initial":
        before = {k: v.clone() for k, v in ref.state_dict().items()}
        start = {k: v.clone() for k, v in student.state_dict().items()}
        rows = train_stage(student, stage, obj, source, tmp_path / "run", progress=False)
        assert [r["step"] for r in rows] == [1, 2]
        for key in ("preference", "ce", "rewards_chosen", "rewards_rejected", "reward_margin",
                    "reward_accuracy"):
            assert all(math.isfinite(r[key]) for r in rows), key
        assert rows[-1]["reward_margin"] != 0.0  # the policy moved away from the reference
        assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())
        assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_preference_config_errors(shapes_tokenizer: Tokenizer, pairs_file: Path) -> None:
    student = make_model(shapes_tokenizer, seed=3)
    with pytest.raises(InputError, match=r"preference\.teacher .* is required"):
        build_objective("preference", student, StageConfig(name="p", objective="preference"))
    with pytest.raises(InputError, match=r"preference\.loss must be one of"):
        build_objective("preference", student, pref_stage(pairs_file, loss="dpo",
                                                          reference="initial"))
    with pytest.raises(InputError, match="label_smoothing applies to the sigmoid"):
        build_objective("preference", student, pref_stage(
            pairs_file, loss="hinge", label_smoothing=0.1, reference="initial"))
    recipe = from_dict(Recipe, {"stages": [{"name": "p", "objective": "preference",
                                            "preference": {"teacher": "stage:nope"}}]})
    assert recipe.stages[0].preference == PreferenceConfig(teacher="stage:nope")
    with pytest.raises(InputError, match=r"preference\.teacher: 'stage:nope' must be"):
        check_recipe(recipe)


# ----------------------------------------------------------------------------- command line


def test_cli_preference_build(shapes_tokenizer: Tokenizer, shapes_dir: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    for command in (["preference"], ["preference", "build"]):
        code, out, _ = run_cli([*command, "--help"], monkeypatch, capsys)
        assert code == 0 and "Example:" in out and "tinyvlm preference build" in out
    model_dir = tmp_path / "student"
    make_model(shapes_tokenizer, seed=3).save_pretrained(model_dir)
    data = tmp_path / "few.json"
    data.write_text(json.dumps(json.loads((shapes_dir / "test.json").read_text())[:3]))
    # Image paths are relative to the data file: keep them next to the copy.
    (tmp_path / "images").symlink_to(shapes_dir / "images")
    out_file = tmp_path / "pairs.jsonl"
    code, out, err = run_cli(["preference", "build", str(model_dir), str(data), "--out",
                              str(out_file), "--samples", "2", "--max-new-tokens", "3",
                              "--pope", str(shapes_dir / "pope_random.jsonl"), "--quiet"],
                             monkeypatch, capsys)
    assert code == 0, err
    records = load_pairs(out_file)
    assert Counter(r["source"] for r in records) == {"ground_truth": 3, "pope": 24}
    assert "27 pairs written" in out
    sides = Counter(yes_no_side(r) for r in records)
    code, out, err = run_cli(["preference", "build", str(model_dir), str(data), "--out",
                              str(out_file), "--samples", "2", "--max-new-tokens", "3",
                              "--pope", str(shapes_dir / "pope_random.jsonl"), "--quiet",
                              "--balance-yes-no"], monkeypatch, capsys)
    assert code == 0, err
    balanced = Counter(yes_no_side(r) for r in load_pairs(out_file))
    n = min(sides["yes"], sides["no"])
    assert balanced == {**sides, "yes": n, "no": n} and n > 0
    code, _, err = run_cli(["preference", "build", str(model_dir), "--out", str(out_file)],
                           monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: give at least one DATA_FILE or --pope file"
    code, _, err = run_cli(["preference", "build", str(model_dir), str(data), "--out",
                            str(out_file), "--no-ground-truth", "--quiet"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no ground-truth answer: ranking them needs a teacher" in err


def test_conversation_helpers_keep_images(shapes_dir: Path) -> None:
    """Trimming moves the placeholder of a dropped turn into the next one."""
    conv = Conversation("x", [shapes_dir / "images/train/000001.png"],
                        [("<image>\na?", "1"), ("b?", "2"), ("c?", "3")])
    history, prompt = drop_oldest(conv.turns[:-1], conv.question,
                                               lambda h, p: len(h) <= 0)
    assert history == [] and prompt == "<image>\nc?"
    history, prompt = drop_oldest(conv.turns[:-1], conv.question,
                                               lambda h, p: len(h) <= 1)
    assert history == [("<image>\nb?", "2")] and prompt == "c?"
    with pytest.raises(ValueError, match="even without history"):
        drop_oldest([], "q", lambda h, p: False)


def test_moe_student_records_only_the_policy_pass(shapes_tokenizer: Tokenizer,
                                                  shapes_dir: Path, pairs_file: Path) -> None:
    torch.manual_seed(3)
    student = TinyVLM.from_tokenizer(
        tiny_model_config(moe={"experts": 2, "top_k": 1}), shapes_tokenizer)
    stage = pref_stage(pairs_file, reference="initial")
    obj = build_objective("preference", student, stage)
    source = obj.data(student, tiny_recipe(shapes_dir).data, stage)
    batch = source.collate(source.items[:4])
    out = obj(student, batch)
    b = batch.pairs.batch
    plain = student(b.input_ids, b.attention_mask, b.pixel_values)
    # One record per MoE layer of the student: the reference's routers are not counted.
    assert len(out.records) == len(plain.records) == 1
    assert float(out.loss.detach()) == pytest.approx(math.log(2), rel=1e-6)


def test_a_reference_with_its_own_batches_gives_the_same_loss(shapes_tokenizer: Tokenizer,
                                                              shapes_dir: Path,
                                                              pairs_file: Path) -> None:
    student = make_model(shapes_tokenizer, seed=3)
    stage = pref_stage(pairs_file, reference="initial", loss="ipo", sft_weight=0.5)
    obj = build_objective("preference", student, stage)
    source = obj.data(student, tiny_recipe(shapes_dir).data, stage)
    shared = source.collate(source.items[:4])
    obj._shared = False
    own = obj.data(student, tiny_recipe(shapes_dir).data, stage).collate(source.items[:4])
    assert shared.reference is None and torch.equal(own.reference.input_ids,
                                                    own.pairs.batch.input_ids)
    assert torch.equal(obj(student, shared).loss, obj(student, own).loss)
