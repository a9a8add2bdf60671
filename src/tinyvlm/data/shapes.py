"""ShapesWorld: a procedural, seeded vision-language dataset that a laptop CPU can learn.

Each 64x64 image is a grid of cells holding a few coloured shapes and one black word. Every
scene is generated from its own `random.Random`, seeded from (seed, split, index), so a dataset
is reproducible byte for byte and never depends on global random state. Questions probe the
capabilities counting (CNT), reading (OCR), spatial relations (RLA), attributes (ATTR) and
existence (EXIST); the test split also yields POPE probes with random, popular and adversarial
negatives, which differ because colours and shapes follow skewed priors and scene themes.

One domain in one file (vocabularies, scenes, pixels, patch labels, questions, POPE probes,
files), longer than the house's ~400 lines: its parts share the vocabularies and priors and
are read together; the generator's settings are `config.ShapesWorldConfig`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tinyvlm.config import ShapesWorldConfig
from tinyvlm.data.conversation import IMAGE
from tinyvlm.data.pope import SPLITS as POPE_SAMPLINGS
from tinyvlm.errors import InputError
from tinyvlm.io import atomic_path, write_json, write_jsonl
from tinyvlm.schema import to_dict

CAPABILITIES = ("CNT", "OCR", "RLA", "ATTR", "EXIST")
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
# Six 3-letter and six 4-letter words, so "how many letters" is not answered by a prior.
WORDS = ("cat", "dog", "sun", "box", "pen", "cup", "frog", "bird", "fish", "tree", "boat", "lamp")
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = ("train", "val", "test")
CATEGORIES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # POPE's 24 object categories

COLOUR_RGB = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 180),
    "orange": (255, 130, 0),
}
WORD_RGB = (0, 0, 0)
BACKGROUND_RGB = (255, 255, 255)

# Skewed priors: without them POPE's popular and adversarial negatives equal random ones.
COLOUR_WEIGHTS = (0.30, 0.22, 0.17, 0.13, 0.10, 0.08)
SHAPE_WEIGHTS = (0.40, 0.30, 0.20, 0.10)
# A theme pairs a common category with a rarer one, so co-occurrence differs from frequency.
THEMES = (
    (("red", "circle"), ("purple", "diamond")),
    (("green", "square"), ("orange", "triangle")),
    (("blue", "triangle"), ("yellow", "circle")),
    (("red", "square"), ("orange", "diamond")),
    (("yellow", "diamond"), ("purple", "square")),
    (("green", "circle"), ("blue", "diamond")),
)

# Question kind -> the capabilities it tests.
QUESTION_KINDS: dict[str, tuple[str, ...]] = {
    "count_all": ("CNT",),
    "count_shape": ("CNT", "ATTR"),
    "count_colour": ("CNT", "ATTR"),
    "colour_of": ("ATTR",),
    "shape_of": ("ATTR",),
    "size_of": ("ATTR",),
    "ocr": ("OCR",),
    "ocr_letters": ("OCR", "CNT"),
    "rel_obj": ("RLA",),
    "rel_word": ("RLA",),
    "exist": ("EXIST",),
    "count_rel": ("CNT", "RLA", "ATTR"),
    "exist_rel": ("EXIST", "RLA"),
}
TEMPLATES = QUESTION_KINDS  # the earlier name
# Training-only kinds (ShapesWorldConfig.position_questions): where a named object is, the
# step a relation question needs before it can compare two positions. Never in val or test.
POSITION_KINDS: dict[str, tuple[str, ...]] = {"row_of": ("RLA",), "col_of": ("RLA",)}


@dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    bbox: tuple[int, int, int, int]  # pixels [x0, y0, x1, y1), end exclusive

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Word:
    text: str
    row: int
    col: int  # leftmost column
    cols: int = 2
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # the whole region of its cells, end exclusive

    @property
    def last_col(self) -> int:
        return self.col + self.cols - 1


@dataclass
class Scene:
    objects: list[ShapeObject]
    word: Word

    def to_dict(self, image: str) -> dict[str, Any]:
        """The `{split}_scenes.jsonl` line for this scene."""
        objects = [{**dataclasses.asdict(o), "bbox": list(o.bbox)} for o in self.objects]
        return {
            "image": image,
            "objects": objects,
            "word": {**dataclasses.asdict(self.word), "bbox": list(self.word.bbox)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        objects = [ShapeObject(**{**o, "bbox": tuple(o["bbox"])}) for o in data["objects"]]
        word = data["word"]
        return cls(objects, Word(**{**word, "bbox": tuple(word["bbox"])}))


@dataclass
class Question:
    text: str
    answer: str
    type: str
    capabilities: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- scenes and pixels


def generate_scene(rng: random.Random, config: ShapesWorldConfig) -> Scene:
    """One random scene: a word on two adjacent cells of a row, objects in distinct other cells."""
    g, cell = config.grid, config.cell
    row, col = rng.randrange(g), rng.randrange(g - 1)
    region = (col * cell, row * cell, (col + 2) * cell, (row + 1) * cell)
    word = Word(rng.choice(WORDS), row, col, 2, region)
    free = [(r, c) for r in range(g) for c in range(g) if not (r == row and c in (col, col + 1))]
    theme = rng.choice(THEMES)
    objects = []
    for r, c in sorted(rng.sample(free, rng.randint(config.min_objects, config.max_objects))):
        if rng.random() < config.theme_prob:
            colour, shape = rng.choice(theme)
        else:
            colour = rng.choices(COLOURS, COLOUR_WEIGHTS)[0]
            shape = rng.choices(SHAPES, SHAPE_WEIGHTS)[0]
        size = rng.choice(SIZES)
        px = config.object_px(size)
        # A 1 px margin inside the cell keeps neighbouring objects from touching.
        x0 = c * cell + rng.randint(1, cell - px - 1)
        y0 = r * cell + rng.randint(1, cell - px - 1)
        objects.append(ShapeObject(shape, colour, size, r, c, (x0, y0, x0 + px, y0 + px)))
    return Scene(objects, word)


@lru_cache(maxsize=8)
def _font(cell: int, size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    """The word font and the y offset that centres the tallest ink of all words in a cell."""
    size = size or max(4, cell * 3 // 4)
    while True:
        font = ImageFont.load_default(size=size)
        boxes = [font.getbbox(w) for w in WORDS]
        top, bottom = min(b[1] for b in boxes), max(b[3] for b in boxes)
        widest = max(b[2] - b[0] for b in boxes)
        if size <= 4 or (widest <= 2 * cell - 2 and bottom - top <= cell - 2):
            return font, (cell - (bottom - top)) // 2 - top
        size -= 1


def render(scene: Scene, config: ShapesWorldConfig) -> Image.Image:
    """Draw a scene: flat colours, no antialiasing, so every pixel has a known owner."""
    image = Image.new("RGB", (config.image_size, config.image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # binary glyphs: pure black ink, identical on every run
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox[0], o.bbox[1], o.bbox[2] - 1, o.bbox[3] - 1  # PIL: inclusive
        xm, ym, fill = (x0 + x1) // 2, (y0 + y1) // 2, COLOUR_RGB[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(xm, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)
    w = scene.word
    font, dy = _font(config.cell, config.font_size)
    left, _, right, _ = draw.textbbox((0, 0), w.text, font=font)
    x = w.bbox[0] + (w.bbox[2] - w.bbox[0] - (right - left)) // 2 - left
    draw.text((x, w.bbox[1] + dy), w.text, fill=WORD_RGB, font=font)
    return image


def patch_labels(
    scene: dict[str, Any], image_size: int, patch_size: int, grid: int | None = None
) -> dict[str, np.ndarray]:
    """Dense per-patch labels (raster order, int64) from a `{split}_scenes.jsonl` line.

    A patch takes the labels of the object or word whose cell contains the patch centre:
    shape (0 none, 1..4, 5 the word), colour (0 none, 1..6), size (0 none, 1 small, 2 large),
    word (0 none, 1..12), and the patch's own grid row and col. The grid defaults to the one
    implied by the word's region (two cells wide, one cell high).
    """
    if patch_size <= 0 or image_size % patch_size:
        raise InputError(f"patch_size {patch_size} does not divide image_size {image_size}")
    w = scene["word"]
    cell = image_size // grid if grid else w["bbox"][3] - w["bbox"][1]
    g = image_size // cell
    tables = {k: np.zeros((g, g), dtype=np.int64) for k in ("shape", "colour", "size", "word")}
    try:
        for o in scene["objects"]:
            at = (o["row"], o["col"])
            tables["shape"][at] = SHAPES.index(o["shape"]) + 1
            tables["colour"][at] = COLOURS.index(o["colour"]) + 1
            tables["size"][at] = SIZES.index(o["size"]) + 1
        for c in range(w["col"], w["col"] + w.get("cols", 2)):
            tables["shape"][w["row"], c] = len(SHAPES) + 1
            tables["word"][w["row"], c] = WORDS.index(w["text"]) + 1
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(f"scene {scene.get('image', '?')}: bad annotation ({e})") from None
    n = image_size // patch_size
    centres = (np.arange(n) * patch_size + patch_size // 2) // cell
    rows, cols = np.repeat(centres, n).astype(np.int64), np.tile(centres, n).astype(np.int64)
    labels = {k: t[rows, cols] for k, t in tables.items()}
    return {**labels, "row": rows, "col": cols}


# --------------------------------------------------------------------------- questions


def relation_to_object(a: ShapeObject, b: ShapeObject, rel: str) -> bool | None:
    """Whether `a` is `rel` `b` on the grid; None when ambiguous (same column / same row)."""
    if rel in ("left of", "right of"):
        return None if a.col == b.col else (a.col < b.col) == (rel == "left of")
    return None if a.row == b.row else (a.row < b.row) == (rel == "above")


def relation_to_word(o: ShapeObject, w: Word, rel: str) -> bool | None:
    """Whether `o` is `rel` the word; None when `o` shares the word's columns (left/right) or
    row (above/below), where either answer could be argued."""
    if rel in ("left of", "right of"):
        if w.col <= o.col <= w.last_col:
            return None
        return o.col < w.col if rel == "left of" else o.col > w.last_col
    return None if o.row == w.row else (o.row < w.row) == (rel == "above")


def _balanced(rng: random.Random, options: Sequence[tuple[str, bool]]) -> tuple[str, str] | None:
    """Pick the answer first (yes or no, even odds), then a probe with that answer."""
    want = rng.random() < 0.5
    pool = [o for o in options if o[1] == want] or list(options)
    if not pool:
        return None
    text, answer = rng.choice(pool)
    return text, "yes" if answer else "no"


def _count(rng: random.Random, options: Sequence[tuple[str, int]]) -> tuple[str, str]:
    """Mostly probe something present, so counts are not dominated by 0."""
    nonzero = [o for o in options if o[1]]
    text, n = rng.choice(nonzero if nonzero and rng.random() < 0.8 else options)
    return text, str(n)


def questions(scene: Scene, rng: random.Random) -> list[Question]:
    """One question per applicable kind, in QUESTION_KINDS order; answers are one lowercase
    word or a digit. Referring expressions are unique in the scene; yes/no answers are
    balanced. The kinds draw from `rng` in that order, so a scene's questions are fixed."""
    out = _attribute_questions(scene, rng)
    out.update(_relation_questions(scene, rng))
    return [
        Question(*qa, kind, list(QUESTION_KINDS[kind]))
        for kind in QUESTION_KINDS
        if (qa := out.get(kind)) is not None
    ]


def _attribute_questions(scene: Scene, rng: random.Random) -> dict[str, tuple[str, str] | None]:
    """Counting, attribute and reading questions."""
    objs, w = scene.objects, scene.word
    cats = Counter(o.category for o in objs)
    unique = [o for o in objs if cats[o.category] == 1]
    shape_n, colour_n = Counter(o.shape for o in objs), Counter(o.colour for o in objs)
    solo_shape = [o for o in objs if shape_n[o.shape] == 1]
    solo_colour = [o for o in objs if colour_n[o.colour] == 1]
    out: dict[str, tuple[str, str] | None] = {}
    out["count_all"] = ("how many shapes are there?", str(len(objs)))
    out["count_shape"] = _count(rng, [(f"how many {s}s are there?", shape_n[s]) for s in SHAPES])
    out["count_colour"] = _count(
        rng, [(f"how many {c} shapes are there?", colour_n[c]) for c in COLOURS]
    )
    if solo_shape:
        o = rng.choice(solo_shape)
        out["colour_of"] = (f"what colour is the {o.shape}?", o.colour)
    if solo_colour:
        o = rng.choice(solo_colour)
        out["shape_of"] = (f"what shape is the {o.colour} object?", o.shape)
    if unique:
        o = rng.choice(unique)
        out["size_of"] = (f"what size is the {o.category}?", o.size)
    out["ocr"] = ("what word is written in the image?", w.text)
    out["ocr_letters"] = ("how many letters does the word have?", str(len(w.text)))
    return out


def _relation_questions(scene: Scene, rng: random.Random) -> dict[str, tuple[str, str] | None]:
    """Spatial relations, existence, and their combinations with counting."""
    objs, w = scene.objects, scene.word
    cats = Counter(o.category for o in objs)
    unique = [o for o in objs if cats[o.category] == 1]
    region = {rel: [o for o in objs if relation_to_word(o, w, rel)] for rel in RELATIONS}
    out: dict[str, tuple[str, str] | None] = {}
    pairs = [
        (f"is the {a.category} {rel} the {b.category}?", ans)
        for a in unique
        for b in unique
        if a is not b
        for rel in RELATIONS
        if (ans := relation_to_object(a, b, rel)) is not None
    ]
    out["rel_obj"] = _balanced(rng, pairs)
    probes = [
        (f"is the {a.category} {rel} the word?", ans)
        for a in unique
        for rel in RELATIONS
        if (ans := relation_to_word(a, w, rel)) is not None
    ]
    out["rel_word"] = _balanced(rng, probes)
    out["exist"] = _exist(rng, set(cats))
    counts = [
        (f"how many {c} shapes are {rel} the word?", sum(o.colour == c for o in region[rel]))
        for c in COLOURS
        for rel in RELATIONS
    ]
    out["count_rel"] = _count(rng, counts)
    probes = [
        (f"is there a {s} {rel} the word?", any(o.shape == s for o in region[rel]))
        for s in SHAPES
        for rel in RELATIONS
    ]
    out["exist_rel"] = _balanced(rng, probes)
    return out


def position_questions(scene: Scene, rng: random.Random) -> list[Question]:
    """Row and column (1 = top / left) of a uniquely named object, one question each."""
    cats = Counter(o.category for o in scene.objects)
    unique = [o for o in scene.objects if cats[o.category] == 1]
    if not unique:
        return []
    row, col = rng.choice(unique), rng.choice(unique)
    return [Question(f"which row is the {row.category} in?", str(row.row + 1), "row_of",
                     list(POSITION_KINDS["row_of"])),
            Question(f"which column is the {col.category} in?", str(col.col + 1), "col_of",
                     list(POSITION_KINDS["col_of"]))]


def _exist(rng: random.Random, present: set[str]) -> tuple[str, str]:
    """Existence probe; negatives follow the prior, so common absent categories are asked more
    (the hard, POPE-popular kind of negative)."""
    absent = [c for c in CATEGORIES if c not in present]
    if rng.random() < 0.5 or not absent:
        return f"is there a {rng.choice(sorted(present))} in the image?", "yes"
    weights = [_prior(c) for c in absent]
    return f"is there a {rng.choices(absent, weights)[0]} in the image?", "no"


def _prior(category: str) -> float:
    colour, shape = category.split()
    return COLOUR_WEIGHTS[COLOURS.index(colour)] * SHAPE_WEIGHTS[SHAPES.index(shape)]


# --------------------------------------------------------------------------- POPE


def pope_probes(
    train: Sequence[Scene], test: Sequence[Scene], count: int, seed: int
) -> list[tuple[int, dict[str, list[tuple[str, str]]]]]:
    """POPE probes for the first `count` test scenes with at least 3 distinct categories.

    Returns (test index, {sampling: [(category, "yes"|"no")] * 6}); each list interleaves the same
    3 positives with that sampling's 3 negatives. Popular: the absent categories with the most
    train objects; adversarial: the absent categories co-occurring (in train images) most often
    with the present ones. Ties fall to the more frequent, then the earlier category.
    """
    freq = Counter(o.category for s in train for o in s.objects)
    cooc: Counter[tuple[str, str]] = Counter()
    for s in train:
        present = {o.category for o in s.objects}
        cooc.update((a, b) for a in present for b in present if a != b)
    rank = {c: (-freq[c], i) for i, c in enumerate(CATEGORIES)}
    out = []
    for index, scene in enumerate(test):
        if len(out) >= count:
            break
        present = sorted({o.category for o in scene.objects}, key=CATEGORIES.index)
        if len(present) < 3:
            continue
        rng = random.Random(f"shapesworld/{seed}/pope/{index}")
        positives = rng.sample(present, 3)
        absent = [c for c in CATEGORIES if c not in present]
        score = {c: (-sum(cooc[p, c] for p in present), *rank[c]) for c in absent}
        negatives = {
            "random": rng.sample(absent, 3),
            "popular": sorted(absent, key=rank.__getitem__)[:3],
            "adversarial": sorted(absent, key=score.__getitem__)[:3],
        }
        probes = {
            kind: [p for k in range(3) for p in ((positives[k], "yes"), (negs[k], "no"))]
            for kind, negs in negatives.items()
        }
        out.append((index, probes))
    return out


# --------------------------------------------------------------------------- files


def _record(
    rid: str,
    image: str,
    qa: Sequence[Question],
    extra: dict[str, str] | None = None,
    question_first: bool = False,
) -> dict[str, Any]:
    """A LLaVA conversation record; `<image>` goes with the first human turn only."""
    turns: list[dict[str, str]] = []
    for k, q in enumerate(qa):
        first = f"{q.text}\n{IMAGE}" if question_first else f"{IMAGE}\n{q.text}"
        prompt = q.text if k else first
        turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": q.answer}]
    meta = [{"type": q.type, "capabilities": list(q.capabilities), **(extra or {})} for q in qa]
    return {"id": rid, "image": image, "conversations": turns, "meta": meta}


def _scene(
    config: ShapesWorldConfig, split: str, index: int, seen: set[bytes]
) -> tuple[Scene, Image.Image, random.Random]:
    """The scene at (split, index); redrawn in the rare case its pixels repeat an earlier image,
    so no image is ever shared between (or within) splits."""
    attempt = 0
    while True:
        rng = random.Random(f"shapesworld/{config.seed}/{split}/{index}/{attempt}")
        scene = generate_scene(rng, config)
        image = render(scene, config)
        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            return scene, image, rng
        attempt += 1


def answer_vocabulary(config: ShapesWorldConfig) -> list[str]:
    """Every answer the generator can give."""
    digits = [str(n) for n in range(max(config.max_objects, *map(len, WORDS)) + 1)]
    return ["yes", "no", *digits, *COLOURS, *SHAPES, *SIZES, *WORDS]


def write_dataset(out_dir: str | Path, config: ShapesWorldConfig | None = None) -> dict[str, Any]:
    """Generate ShapesWorld into `out_dir` and return the manifest (also `dataset.json`).

    Files: images/{split}/{index:06d}.png, {split}.json (LLaVA records: one multi-turn record per
    train image, one record per question for val/test), {split}_scenes.jsonl, pope.json,
    pope_{sampling}.jsonl (official POPE layout). Every file is written atomically and
    dataset.json last, so its presence marks a complete dataset.
    """
    config = config or ShapesWorldConfig()
    out = Path(out_dir)
    seen: set[bytes] = set()
    scenes: dict[str, list[Scene]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        scenes[split], counts[split] = _write_split(out, config, split, seen)
    probes = pope_probes(scenes["train"], scenes["test"], config.pope_images, config.seed)
    _write_pope(out, config, probes)
    counts["pope"] = {"images": len(probes), "probes_per_sampling": 6 * len(probes)}
    manifest = {
        "name": "shapesworld",
        "version": 1,
        "config": to_dict(config),
        "counts": counts,
        "vocabularies": {
            "shapes": list(SHAPES),
            "colours": list(COLOURS),
            "sizes": list(SIZES),
            "words": list(WORDS),
            "capabilities": list(CAPABILITIES),
            "categories": list(CATEGORIES),
            "answers": answer_vocabulary(config),
        },
        "templates": {k: list(v) for k, v in QUESTION_KINDS.items()},
    }
    write_json(out / "dataset.json", manifest)
    return manifest


def _write_split(out: Path, config: ShapesWorldConfig, split: str, seen: set[bytes]
                 ) -> tuple[list[Scene], dict[str, int]]:
    """One split's images, {split}.json and {split}_scenes.jsonl; its scenes and counts."""
    split_scenes, records, lines = [], [], []
    for index in range(1, getattr(config, f"num_{split}") + 1):
        scene, image, rng = _scene(config, split, index, seen)
        path = f"images/{split}/{index:06d}.png"
        with atomic_path(out / path) as tmp:
            image.save(tmp, format="PNG")
        qa = questions(scene, rng)
        if split == "train" and config.position_questions:
            qa += position_questions(scene, rng)
        qf = config.question_first
        if split == "train" and config.train_layout == "conversation":
            rng.shuffle(qa)
            records.append(_record(f"train-{index:06d}", path, qa, question_first=qf))
        else:
            records += [
                _record(f"{split}-{index:06d}-{k:02d}", path, [q], question_first=qf)
                for k, q in enumerate(qa, 1)
            ]
        split_scenes.append(scene)
        lines.append(scene.to_dict(path))
    write_json(out / f"{split}.json", records)
    write_jsonl(out / f"{split}_scenes.jsonl", lines)
    counts = {"images": len(split_scenes), "records": len(records),
              "questions": sum(len(r["meta"]) for r in records)}
    return split_scenes, counts


def _write_pope(out: Path, config: ShapesWorldConfig,
                probes: list[tuple[int, dict[str, list[tuple[str, str]]]]]) -> None:
    """pope_{sampling}.jsonl in the official layout and pope.json as LLaVA records."""
    pope_records = []
    for kind in POPE_SAMPLINGS:
        rows = []
        for index, by_kind in probes:
            image = f"images/test/{index + 1:06d}.png"
            for k, (category, label) in enumerate(by_kind[kind], 1):
                text = f"is there a {category} in the image?"
                q = Question(text, label, "pope", ["EXIST"])
                pope_records.append(_record(f"pope-{kind}-{index + 1:06d}-{k}", image, [q],
                                            {"pope": kind}, config.question_first))
                rows.append(
                    {"question_id": len(rows) + 1, "image": image, "text": text, "label": label}
                )
        write_jsonl(out / f"pope_{kind}.jsonl", rows)
    write_json(out / "pope.json", pope_records)
