"""ShapesWorld: determinism, split hygiene, answers re-derived independently, POPE, labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tinyvlm.data import shapes as sw
from tinyvlm.errors import InputError
from tinyvlm.schema import from_dict, to_dict

SPLITS = ("train", "val", "test")
SMALL = {"num_train": 300, "num_val": 20, "num_test": 80, "pope_images": 20}
TINY = {"num_train": 12, "num_val": 4, "num_test": 12, "pope_images": 3}
YES_NO = ("rel_obj", "rel_word", "exist", "exist_rel")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    sw.write_dataset(out, sw.ShapesWorldConfig(**SMALL))
    return out


def jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scenes_by_image(data: Path, split: str) -> dict[str, dict]:
    return {s["image"]: s for s in jsonl(data / f"{split}_scenes.jsonl")}


def qa_pairs(record: dict) -> list[tuple[str, str, dict]]:
    turns = record["conversations"]
    questions = [t["value"].removeprefix("<image>\n") for t in turns[::2]]
    return list(zip(questions, [t["value"] for t in turns[1::2]], record["meta"], strict=True))


# --------------------------------------------------------------------------- independent checker

REL = "(left of|right of|above|below)"
CAPS = {
    "count_all": ["CNT"],
    "count_shape": ["CNT", "ATTR"],
    "count_colour": ["CNT", "ATTR"],
    "colour_of": ["ATTR"],
    "shape_of": ["ATTR"],
    "size_of": ["ATTR"],
    "ocr": ["OCR"],
    "ocr_letters": ["OCR", "CNT"],
    "rel_obj": ["RLA"],
    "rel_word": ["RLA"],
    "exist": ["EXIST"],
    "count_rel": ["CNT", "RLA", "ATTR"],
    "exist_rel": ["EXIST", "RLA"],
}


def check(question: str, scene: dict) -> tuple[str, str]:
    """(template type, answer) re-derived from the scene annotations alone."""
    objs, w = scene["objects"], scene["word"]
    first, last, wrow = w["col"], w["col"] + w["cols"] - 1, w["row"]

    def the(colour: str | None = None, shape: str | None = None) -> dict:
        hits = [o for o in objs if colour in (None, o["colour"]) and shape in (None, o["shape"])]
        assert len(hits) == 1, f"referent not unique: {question}"
        return hits[0]

    def vs_word(o: dict, rel: str) -> bool:
        return {
            "left of": o["col"] < first,
            "right of": o["col"] > last,
            "above": o["row"] < wrow,
            "below": o["row"] > wrow,
        }[rel]

    def yn(flag: bool) -> str:
        return "yes" if flag else "no"

    if question == "how many shapes are there?":
        return "count_all", str(len(objs))
    if question == "what word is written in the image?":
        return "ocr", w["text"]
    if question == "how many letters does the word have?":
        return "ocr_letters", str(len(w["text"]))
    if m := re.fullmatch(rf"how many (\w+) shapes are {REL} the word\?", question):
        n = sum(o["colour"] == m[1] and vs_word(o, m[2]) for o in objs)
        return "count_rel", str(n)
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return "count_colour", str(sum(o["colour"] == m[1] for o in objs))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return "count_shape", str(sum(o["shape"] == m[1] for o in objs))
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        return "colour_of", the(shape=m[1])["colour"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return "shape_of", the(colour=m[1])["shape"]
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        return "size_of", the(m[1], m[2])["size"]
    if m := re.fullmatch(rf"is the (\w+) (\w+) {REL} the word\?", question):
        o, rel = the(m[1], m[2]), m[3]
        if rel in ("left of", "right of"):
            assert not first <= o["col"] <= last, f"ambiguous: {question}"
        else:
            assert o["row"] != wrow, f"ambiguous: {question}"
        return "rel_word", yn(vs_word(o, rel))
    if m := re.fullmatch(rf"is the (\w+) (\w+) {REL} the (\w+) (\w+)\?", question):
        a, rel, b = the(m[1], m[2]), m[3], the(m[4], m[5])
        axis = "col" if rel in ("left of", "right of") else "row"
        assert a[axis] != b[axis], f"ambiguous: {question}"
        before = a[axis] < b[axis]
        return "rel_obj", yn(before if rel in ("left of", "above") else not before)
    if m := re.fullmatch(r"is there a (\w+) (\w+) in the image\?", question):
        return "exist", yn(any(o["colour"] == m[1] and o["shape"] == m[2] for o in objs))
    if m := re.fullmatch(rf"is there a (\w+) {REL} the word\?", question):
        return "exist_rel", yn(any(o["shape"] == m[1] and vs_word(o, m[2]) for o in objs))
    raise AssertionError(f"unknown question: {question}")


def test_every_answer_matches_the_scene(data: Path) -> None:
    seen = Counter()
    for split in SPLITS:
        scenes = scenes_by_image(data, split)
        for record in json.loads((data / f"{split}.json").read_text()):
            for question, answer, meta in qa_pairs(record):
                kind, expected = check(question, scenes[record["image"]])
                assert (meta["type"], answer) == (kind, expected), question
                assert meta["capabilities"] == CAPS[kind]
                seen[kind] += 1
    assert set(seen) == set(CAPS)  # every template occurs


def test_yes_no_balanced_and_counts_not_dominated_by_zero(data: Path) -> None:
    answers: dict[str, Counter] = {}
    for record in json.loads((data / "train.json").read_text()):
        for _, answer, meta in qa_pairs(record):
            answers.setdefault(meta["type"], Counter())[answer] += 1
    for kind in YES_NO:
        total = answers[kind]["yes"] + answers[kind]["no"]
        assert total == answers[kind].total() and total > 100
        assert 0.4 <= answers[kind]["yes"] / total <= 0.6, (kind, answers[kind])
    for kind in ("count_shape", "count_colour", "count_rel"):
        assert answers[kind]["0"] / answers[kind].total() < 0.3, (kind, answers[kind])


# --------------------------------------------------------------------------- files and layout


def test_records_layout(data: Path) -> None:
    manifest = json.loads((data / "dataset.json").read_text())
    ids = set()
    for split in SPLITS:
        records = json.loads((data / f"{split}.json").read_text())
        images = {r["image"] for r in records}
        assert len(images) == SMALL[f"num_{split}"] == manifest["counts"][split]["images"]
        assert len(records) == manifest["counts"][split]["records"]
        for r in records:
            turns = r["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert len(r["meta"]) == len(turns) // 2 > 0
            assert turns[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in turns) == 1
            assert r["image"].startswith(f"images/{split}/") and (data / r["image"]).is_file()
            assert r["id"].startswith(f"{split}-") and r["id"] not in ids
            ids.add(r["id"])
            if split == "train":
                assert r["id"] == "train-" + Path(r["image"]).stem
            else:
                assert len(r["meta"]) == 1
    assert manifest["vocabularies"]["capabilities"] == ["CNT", "OCR", "RLA", "ATTR", "EXIST"]
    assert manifest["config"] == to_dict(sw.ShapesWorldConfig(**SMALL))


def test_splits_share_no_image(data: Path) -> None:
    owner: dict[bytes, str] = {}
    for split in SPLITS:
        paths = sorted((data / "images" / split).glob("*.png"))
        assert len(paths) == SMALL[f"num_{split}"]
        for path in paths:
            key = hashlib.sha1(Image.open(path).convert("RGB").tobytes()).digest()
            assert key not in owner, f"{path} repeats an image of {owner.get(key)}"
            owner[key] = split


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_deterministic_per_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        sw.write_dataset(tmp_path / name, sw.ShapesWorldConfig(seed=seed, **TINY))
    a, b, c = (tree(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.json"] != c["train.json"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) > len(a) // 2


# --------------------------------------------------------------------------- POPE


def test_pope(data: Path) -> None:
    train, test = jsonl(data / "train_scenes.jsonl"), jsonl(data / "test_scenes.jsonl")
    present = {s["image"]: {f"{o['colour']} {o['shape']}" for o in s["objects"]} for s in test}
    chosen = [s["image"] for s in test if len(present[s["image"]]) >= 3][: SMALL["pope_images"]]
    freq = Counter(f"{o['colour']} {o['shape']}" for s in train for o in s["objects"])
    cooc: Counter = Counter()
    for s in train:
        cats = {f"{o['colour']} {o['shape']}" for o in s["objects"]}
        cooc.update((a, b) for a in cats for b in cats if a != b)
    categories = [f"{c} {s}" for c in sw.COLOURS for s in sw.SHAPES]
    negatives: dict[str, set[str]] = {}
    positives: dict[str, dict[str, list[str]]] = {}
    for kind in ("random", "popular", "adversarial"):
        rows = jsonl(data / f"pope_{kind}.jsonl")
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        assert {tuple(sorted(r)) for r in rows} == {("image", "label", "question_id", "text")}
        assert list(dict.fromkeys(r["image"] for r in rows)) == chosen
        by_image: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            m = re.fullmatch(r"is there a (\w+ \w+) in the image\?", r["text"])
            assert m, r["text"]
            by_image.setdefault(r["image"], []).append((m[1], r["label"]))
        for image, probes in by_image.items():
            assert len(probes) == 6
            pos = [c for c, label in probes if label == "yes"]
            neg = [c for c, label in probes if label == "no"]
            assert len(set(pos)) == len(set(neg)) == 3
            assert set(pos) <= present[image] and not set(neg) & present[image]
            positives.setdefault(image, {})[kind] = sorted(pos)
            negatives.setdefault(kind, set()).update(neg)
            absent = [c for c in categories if c not in present[image]]
            rest = [c for c in absent if c not in neg]
            if kind == "popular":
                assert min(freq[c] for c in neg) >= max(freq[c] for c in rest)
            if kind == "adversarial":
                score = {c: sum(cooc[p, c] for p in present[image]) for c in absent}
                assert min(score[c] for c in neg) >= max(score[c] for c in rest)
    # The same positives in every sampling; popular negatives come from few frequent categories.
    assert all(len({tuple(v) for v in p.values()}) == 1 for p in positives.values())
    assert len(negatives["random"]) > len(negatives["popular"])
    records = json.loads((data / "pope.json").read_text())
    assert len(records) == 3 * 6 * len(chosen) and len({r["id"] for r in records}) == len(records)
    for r in records:
        assert len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith(
            "<image>\n"
        )
        kind = r["meta"][0]["pope"]
        assert r["meta"] == [{"type": "pope", "capabilities": ["EXIST"], "pope": kind}]
        assert r["id"].startswith(f"pope-{kind}-")


# --------------------------------------------------------------------------- pixels and labels


def test_render_keeps_colours_in_their_boxes() -> None:
    config = sw.ShapesWorldConfig()
    rng = random.Random(7)
    for _ in range(40):
        scene = sw.generate_scene(rng, config)
        pixels = np.asarray(sw.render(scene, config))
        allowed = {
            sw.BACKGROUND_RGB,
            sw.WORD_RGB,
            *(sw.COLOUR_RGB[o.colour] for o in scene.objects),
        }
        assert {tuple(p) for p in pixels.reshape(-1, 3)} <= allowed
        for o in scene.objects:
            mask = np.all(pixels == sw.COLOUR_RGB[o.colour], axis=-1)
            inside = np.zeros_like(mask)
            for other in scene.objects:
                if other.colour == o.colour:
                    x0, y0, x1, y1 = other.bbox
                    inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any(), "colour outside every box of that colour"
            x0, y0, x1, y1 = o.bbox
            assert mask[y0:y1, x0:x1].sum() >= (x1 - x0) * (y1 - y0) // 3
            cell = config.cell
            assert o.col * cell < x0 and x1 < (o.col + 1) * cell  # inside its cell, with a margin
            assert o.row * cell < y0 and y1 < (o.row + 1) * cell
        ink = np.all(pixels == sw.WORD_RGB, axis=-1)
        x0, y0, x1, y1 = scene.word.bbox
        assert ink[y0:y1, x0:x1].sum() == ink.sum() > 20


def test_patch_labels_hand_placed() -> None:
    scene = {
        "image": "x.png",
        "objects": [
            {"shape": "circle", "colour": "red", "size": "small", "row": 0, "col": 0,
             "bbox": [2, 2, 9, 9]},
            {"shape": "square", "colour": "blue", "size": "large", "row": 2, "col": 3,
             "bbox": [49, 33, 62, 46]},
        ],
        "word": {"text": "frog", "row": 3, "col": 1, "cols": 2, "bbox": [16, 48, 48, 64]},
    }  # fmt: skip
    cells = {  # per 16 px cell (row-major)
        "shape": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 5, 5, 0],
        "colour": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0],
        "size": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0],
        "word": [0] * 13 + [7, 7, 0],
        "row": [r for r in range(4) for _ in range(4)],
        "col": list(range(4)) * 4,
    }
    labels = sw.patch_labels(scene, 64, 16)
    for key, expected in cells.items():
        assert labels[key].dtype == np.int64 and labels[key].tolist() == expected, key
    labels = sw.patch_labels(scene, 64, 8)
    for key, expected in cells.items():  # each cell splits into 2x2 patches
        fine = np.kron(np.array(expected).reshape(4, 4), np.ones((2, 2), dtype=np.int64))
        assert labels[key].tolist() == fine.reshape(-1).tolist(), key
    with pytest.raises(InputError):
        sw.patch_labels(scene, 64, 12)


def test_patch_labels_agree_with_pixels() -> None:
    config = sw.ShapesWorldConfig()
    rng = random.Random(3)
    for index in range(10):
        scene = sw.generate_scene(rng, config)
        pixels = np.asarray(sw.render(scene, config))
        labels = sw.patch_labels(scene.to_dict(f"{index}.png"), 64, 16)
        for p in range(16):
            patch = pixels[(p // 4) * 16 : (p // 4 + 1) * 16, (p % 4) * 16 : (p % 4 + 1) * 16]
            if labels["colour"][p]:
                rgb = sw.COLOUR_RGB[sw.COLOURS[labels["colour"][p] - 1]]
                assert np.all(patch == rgb, axis=-1).any()
            elif labels["shape"][p] == 0:
                assert (patch == 255).all()


# --------------------------------------------------------------------------- config and API


def test_config_round_trip_and_errors() -> None:
    config = sw.ShapesWorldConfig(seed=3, num_train=10)
    assert from_dict(sw.ShapesWorldConfig, to_dict(config)) == config
    assert from_dict(sw.ShapesWorldConfig, {"grid": 4}).grid == 4
    with pytest.raises(InputError, match="did you mean 'num_train'"):
        from_dict(sw.ShapesWorldConfig, {"num_trian": 5})
    with pytest.raises(InputError, match="seed"):
        from_dict(sw.ShapesWorldConfig, {"seed": "1"})
    for bad in ({"grid": 1}, {"min_objects": 4, "max_objects": 3}, {"image_size": 62}):
        with pytest.raises(InputError):
            sw.ShapesWorldConfig(**bad)


def test_other_grid_sizes_and_questions_api(tmp_path: Path) -> None:
    config = sw.ShapesWorldConfig(image_size=96, grid=6, min_objects=3, max_objects=8, **TINY)
    manifest = sw.write_dataset(tmp_path, config)
    assert manifest["counts"]["pope"]["images"] == 3
    for s in jsonl(tmp_path / "train_scenes.jsonl"):
        assert 3 <= len(s["objects"]) <= 8
        cells = {(o["row"], o["col"]) for o in s["objects"]}
        word = s["word"]
        assert len(cells) == len(s["objects"])
        assert not cells & {(word["row"], word["col"]), (word["row"], word["col"] + 1)}
        assert sw.patch_labels(s, 96, 16)["shape"].shape == (36,)
    assert Image.open(tmp_path / "images/train/000001.png").size == (96, 96)
    scene = sw.generate_scene(random.Random(0), config)
    qs = sw.questions(scene, random.Random(0))
    assert [q.type for q in qs] == [k for k in sw.TEMPLATES if k in {q.type for q in qs}]
    assert all(q.answer in sw.answer_vocabulary(config) for q in qs)


def test_repeated_pixels_are_redrawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = sw.generate_scene
    fixed = real(random.Random(0), sw.ShapesWorldConfig())

    def often_the_same(rng: random.Random, config: sw.ShapesWorldConfig) -> sw.Scene:
        return fixed if rng.random() < 0.5 else real(rng, config)

    monkeypatch.setattr(sw, "generate_scene", often_the_same)
    sw.write_dataset(tmp_path, sw.ShapesWorldConfig(**TINY))
    images = [p.read_bytes() for p in (tmp_path / "images").rglob("*.png")]
    assert len(images) == len(set(images)) == 28


def test_position_questions_are_training_only_and_answered_from_the_scene(
        tmp_path: Path) -> None:
    config = sw.ShapesWorldConfig(image_size=32, num_train=12, num_val=2, num_test=4,
                                      pope_images=2, seed=1, position_questions=True)
    sw.write_dataset(tmp_path, config)
    train = json.loads((tmp_path / "train.json").read_text())
    scenes = [json.loads(line) for line in (tmp_path / "train_scenes.jsonl").open()]
    asked = 0
    for record, scene in zip(train, scenes, strict=True):
        by_category = {f"{o['colour']} {o['shape']}": o for o in scene["objects"]}
        turns = record["conversations"]
        for k, meta in enumerate(record["meta"]):
            if meta["type"] not in ("row_of", "col_of"):
                continue
            question, answer = turns[2 * k]["value"], turns[2 * k + 1]["value"]
            category = question.split("the ", 1)[1].rsplit(" in?", 1)[0]
            o = by_category[category]
            assert answer == str((o["row"] if meta["type"] == "row_of" else o["col"]) + 1)
            asked += 1
    assert asked >= 12
    for split in ("val", "test"):
        kinds = {m["type"] for r in json.loads((tmp_path / f"{split}.json").read_text())
                 for m in r["meta"]}
        assert not kinds & {"row_of", "col_of"}
    # Off (the default), the training split holds no such question.
    plain = tmp_path / "plain"
    sw.write_dataset(plain, dataclasses.replace(config, position_questions=False))
    kinds = {m["type"] for r in json.loads((plain / "train.json").read_text()) for m in r["meta"]}
    assert not kinds & {"row_of", "col_of"}
