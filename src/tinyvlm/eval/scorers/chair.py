"""CHAIR (Rohrbach et al., 2018): object hallucination in generated captions, as Object
HalBench-style evaluations report it on COCO images.

The rule of the original CHAIR code (LisaAnne/Hallucination utils/chair.py, and its Python 3
port that adds recall): each caption is lowercased and tokenised as nltk's word_tokenize does;
every token is singularised as pattern 3.6's singularize does (so "buses" is "bus" but "bus"
is "bu", and "glass" is "glas"); adjacent pairs in its two-word table are merged ("hot dog",
"baby bird" -> bird, "passenger train" -> train, "toilet seat" -> toilet, "wine glas" ->
wine glass); "seat" is dropped when "toilet" is there; the words in the COCO synonym list
(data/chair_synonyms.txt, the original file: entries written with two spaces after the comma,
" motor bike" and " cheesecake", never match) are mapped to their COCO class. A mention is
hallucinated when its class is not among the image's ground-truth objects: the COCO instance
annotations of the image plus the classes its reference captions mention (read the same way).

- ``chair_s``: captions with a hallucinated mention / all captions;
- ``chair_i``: hallucinated mentions / all mentions (repeats counted);
- ``recall``: per caption the distinct ground-truth classes it names, over all ground-truth
  classes of all captions.

Fractions; the scripts print them x 100 with one decimal. Object HalBench's own numbers
(RLHF-V) extract objects with GPT-3.5 and a refined synonym list; this is the rule-based
original, which needs no model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tinyvlm.errors import InputError
from tinyvlm.eval.scorers._common import check_convention
from tinyvlm.io import read_json, read_jsonl_numbered

CONVENTIONS = ("official",)
DATA = Path(__file__).parent / "data"
DOUBLE_WORDS = ("motor bike", "motor cycle", "air plane", "traffic light", "street light",
                "traffic signal", "stop light", "fire hydrant", "stop sign", "parking meter",
                "suit case", "sports ball", "baseball bat", "baseball glove", "tennis racket",
                "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear",
                "hair drier", "potted plant", "bow tie", "laptop computer", "stove top oven",
                "home plate", "train track")
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
           "giraffe", "animal", "cub")
VEHICLES = ("jet", "train")


@cache
def synonyms() -> tuple[frozenset[str], dict[str, str]]:
    """(every synonym, synonym -> COCO class), read from the file as the original reads it."""
    objects: set[str] = set()
    to_class: dict[str, str] = {}
    for line in (DATA / "chair_synonyms.txt").read_text(encoding="utf-8").splitlines():
        entries = line.strip().split(", ")
        objects.update(entries)
        for e in entries:
            to_class[e] = entries[0]
    return frozenset(objects), to_class


@cache
def double_words() -> dict[str, str]:
    table = {w: w for w in DOUBLE_WORDS}
    table.update({f"{q} {a}": a for a in ANIMALS for q in ("baby", "adult")})
    table.update({f"passenger {v}": v for v in VEHICLES})
    table.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
    return table


def relevant_words() -> set[str]:
    """The single words CHAIR can react to: synonyms and the parts of the two-word table."""
    objects, _ = synonyms()
    out = {w for w in objects if w and " " not in w}
    for pair in double_words():
        out.update(pair.split(" "))
    return out | {"toilet", "seat"}


@cache
def _singulars() -> dict[str, str]:
    return dict(json.loads((DATA / "chair_singulars.json").read_text(encoding="utf-8"))
                ["singular"])


def singularize(word: str) -> str:
    """pattern 3.6's singularize on the words CHAIR can see (other words come back as they
    are: their singular could not match anything)."""
    return _singulars().get(word, word)


# Sentence ends as Punkt finds them: '.', '?' or '!' followed by one of these or by white
# space and more text; of several in one run of non-space, only the last counts. No word CHAIR
# knows is a Punkt abbreviation, so every such candidate ends a sentence here.
_AFTER_END = ")\";}]*:@'({[\u2018\u2019\u201c\u201d\u00ab\u00bb?!"
_CANDIDATE = re.compile(r"[.?!](?=[" + re.escape(_AFTER_END) + r"]|\s+\S)")
# Closing marks Punkt moves back into the sentence they follow.
_REALIGN = re.compile(r"[\"')\]}\u2018\u2019\u201c\u201d\u00ab\u00bb]+?(?:\s+|(?=--)|$)")

# The treebank word rules, in the order they apply to one sentence.
_CLOSERS = r"[\])}>\"'\u00bb\u201d\u2019 ]*+"
_STEPS: list[tuple[re.Pattern[str], str]] = [(re.compile(a), b) for a, b in (
    (r"([\u00ab\u201c\u2018\u201e]|`+)", r" \1 "),
    (r'^"', "``"),
    (r"(``)", r" \1 "),
    (r"([ (\[{<])(\"|'{2})", r"\1 `` "),
    (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 "),
    (r"([^.])(\.)(" + _CLOSERS + r")\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "),
    (r"[;@#$%&]", r" \g<0> "),
    (r"[\u2012-\u2015]", r" \g<0> "),
    (r"([^.])(\.)([\])}>\"']*)\s*$", r"\1 \2\3 "),
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[*]", r" \g<0> "),
    (r"[\]\[(){}<>]", r" \g<0> "),
    (r"--", r" -- "),
)]
_ENDING: list[tuple[re.Pattern[str], str]] = [(re.compile(a), b) for a, b in (
    (r"([\u00bb\u201d\u2019])", r" \1 "),
    (r"''", " '' "),
    (r'"', " '' "),
    (r"\s+", " "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
)]


def _sentences(text: str) -> list[str]:
    ends: list[int] = []
    for m in _CANDIDATE.finditer(text):
        if ends and not any(c.isspace() for c in text[ends[-1]:m.start()]):
            ends[-1] = m.end()  # the same run of non-space: the later one wins
        else:
            ends.append(m.end())
    out, start = [], 0
    for end in ends:
        if end <= start:
            continue
        closing = _REALIGN.match(text, end)
        stop = end + len(closing.group(0).rstrip()) if closing else end
        out.append(text[start:stop])
        start = closing.end() if closing else end
        while start < len(text) and text[start].isspace():
            start += 1
    if text[start:].strip():
        out.append(text[start:].rstrip())
    return out


def tokenize(text: str) -> list[str]:
    """nltk's word_tokenize: Punkt sentences (as above), then the treebank rules on each.
    Equal to it on the words CHAIR reads; not meant as a general tokeniser."""
    tokens: list[str] = []
    for sentence in _sentences(text):
        for pattern, repl in _STEPS:
            sentence = pattern.sub(repl, sentence)
        sentence = f" {sentence} "
        for pattern, repl in _ENDING:
            sentence = pattern.sub(repl, sentence)
        tokens += sentence.split()
    return tokens


def image_key(value: Any) -> str:
    """Image ids compare as the original compares them: 7, 7.0 and "7" are one image."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"chair: image id {value!r} is not a number or a string")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def caption_objects(caption: str) -> tuple[list[str], list[str], list[str]]:
    """(the COCO words of a caption, their classes, all tokens after merging pairs)."""
    objects, to_class = synonyms()
    pairs = double_words()
    words = [singularize(w) for w in tokenize(caption.lower())]
    merged: list[str] = []
    i = 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in pairs:
            merged.append(pairs[pair])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    kept = merged
    if "toilet" in kept and "seat" in kept:
        kept = [w for w in kept if w != "seat"]
    found = [w for w in kept if w in objects]
    return found, [to_class[w] for w in found], merged


def score(captions: Sequence[Mapping[str, Any]], ground_truth: Mapping[str, Iterable[str]],
          convention: str = "official", details: bool = False) -> dict[str, Any]:
    """CHAIR of `captions` ([{image_id, caption}]) against `ground_truth` ({image id: COCO
    classes}); `details` adds each caption's words and hallucinations."""
    check_convention("chair", convention, CONVENTIONS)
    if not captions:
        raise InputError("chair: no captions")
    missing = sorted({image_key(c["image_id"]) for c in captions} - set(ground_truth))
    if missing:
        raise InputError(f"chair: {len(missing)} image ids have no ground-truth objects "
                         f"(first: {missing[0]})")
    n_hallucinated_caps = hallucinated = mentions = n_gt = n_recalled = with_mentions = 0
    rows = []
    for c in captions:
        gt = set(ground_truth[image_key(c["image_id"])])
        words, classes, merged = caption_objects(str(c["caption"]))
        mentions += len(classes)
        with_mentions += bool(classes)
        wrong = [(w, k) for w, k in zip(words, classes, strict=True) if k not in gt]
        hallucinated += len(wrong)
        n_hallucinated_caps += bool(wrong)
        recalled = {k for k in classes if k in gt}
        n_gt += len(gt)
        n_recalled += len(recalled)
        if details:
            rows.append({"image_id": c["image_id"], "caption": c["caption"], "words": merged,
                         "generated": classes, "hallucinated": wrong,
                         "chair_s": int(bool(wrong)),
                         "chair_i": len(wrong) / len(words) if words else 0.0,
                         "recall": len(recalled) / len(gt) if gt else 0.0})
    out: dict[str, Any] = {
        "convention": convention, "unit": "fraction", "n": len(captions),
        "chair_s": n_hallucinated_caps / len(captions),
        "chair_i": hallucinated / mentions if mentions else None,
        "recall": n_recalled / n_gt if n_gt else None,
        "mentions": mentions, "hallucinated_mentions": hallucinated,
        "captions_with_mentions": with_mentions,
    }
    if details:
        out["captions"] = rows
    return out


def ground_truth_from_coco(annotation_dir: str | Path, image_ids: Iterable[Any] | None = None
                           ) -> dict[str, set[str]]:
    """{image id: COCO classes} from instances_{train,val}2014.json and
    captions_{train,val}2014.json in `annotation_dir` (those present): the instance classes
    plus the classes the reference captions name."""
    root = Path(annotation_dir)
    if not root.is_dir():
        raise InputError("not a directory (expected COCO's annotations directory)", root)
    wanted = None if image_ids is None else {image_key(i) for i in image_ids}
    _, to_class = synonyms()
    gt: dict[str, set[str]] = {}
    found = False
    for split in ("val2014", "train2014"):
        inst = root / f"instances_{split}.json"
        if inst.is_file():
            found = True
            doc = _coco_doc(inst, ("images", "annotations", "categories"))
            names = {}
            for c in doc["categories"]:
                if not isinstance(c, dict) or c.get("name") not in to_class or "id" not in c:
                    raise InputError(f"category {c!r} is not a COCO class with an id", inst)
                names[c["id"]] = c["name"]
            for img in doc["images"]:
                if not isinstance(img, dict) or "id" not in img:
                    raise InputError("an image entry has no 'id'", inst)
                if wanted is None or image_key(img["id"]) in wanted:
                    gt.setdefault(image_key(img["id"]), set())
            for a in doc["annotations"]:
                if not isinstance(a, dict) or "image_id" not in a or \
                        a.get("category_id") not in names:
                    what = a.get("id", "?") if isinstance(a, dict) else repr(a)
                    raise InputError(f"annotation {what}: no image_id or an unknown "
                                     "category_id", inst)
                iid = image_key(a["image_id"])
                if wanted is None or iid in wanted:
                    gt.setdefault(iid, set()).add(to_class[names[a["category_id"]]])
    for split in ("val2014", "train2014"):
        caps = root / f"captions_{split}.json"
        if caps.is_file():
            found = True
            for a in _coco_doc(caps, ("annotations",))["annotations"]:
                if not isinstance(a, dict) or "image_id" not in a or \
                        not isinstance(a.get("caption"), str):
                    raise InputError("a caption entry lacks image_id or a caption string", caps)
                iid = image_key(a["image_id"])
                if wanted is None or iid in wanted:
                    gt.setdefault(iid, set()).update(caption_objects(a["caption"])[1])
    if not found:
        raise InputError("no instances_val2014.json / captions_val2014.json (or train2014) "
                         "here", root)
    return gt


def _coco_doc(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k, []), list) for k in keys):
        raise InputError(f"expected a COCO annotation object with lists {', '.join(keys)}", path)
    return {k: doc.get(k, []) for k in keys}


def read_ground_truth(path: str | Path) -> dict[str, set[str]]:
    """A JSON {image id: [COCO classes]} (e.g. exported from the CHAIR cache)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError("expected a JSON object {image id: [COCO classes]}", path)
    _, to_class = synonyms()
    classes = set(to_class.values())
    out = {}
    for k, v in data.items():
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InputError(f"image {k}: expected a list of class names", path)
        unknown = [x for x in v if x not in classes]
        if unknown:
            raise InputError(f"image {k}: {unknown[0]!r} is not a COCO class", path)
        out[image_key(k)] = set(v)
    return out


def read_captions(path: str | Path, image_id_key: str = "image_id",
                  caption_key: str = "caption") -> list[dict[str, Any]]:
    """Captions: a JSON list or JSONL of {image_id, caption}, or the original's
    {"imgToEval": {..: {image_id, caption}}}."""
    p = Path(path)
    if p.suffix == ".jsonl":
        rows = [(line, row) for line, row in read_jsonl_numbered(p)]
    else:
        doc = read_json(p)
        if isinstance(doc, dict) and isinstance(doc.get("imgToEval"), dict):
            doc = list(doc["imgToEval"].values())
        if not isinstance(doc, list):
            raise InputError("expected a list of {image_id, caption} (JSON or JSONL)", p)
        rows = [(None, row) for row in doc]
    out = []
    for line, row in rows:
        if not isinstance(row, dict) or image_id_key not in row or caption_key not in row:
            raise InputError(f"each caption needs '{image_id_key}' and '{caption_key}'", p, line)
        if not isinstance(row[caption_key], str):
            raise InputError(f"'{caption_key}' must be a string, got "
                             f"{type(row[caption_key]).__name__}", p, line)
        try:
            image_key(row[image_id_key])
        except InputError as e:
            raise InputError(str(e), p, line) from None
        out.append({"image_id": row[image_id_key], "caption": row[caption_key]})
    return out


def score_files(captions: str | Path, coco_annotations: str | Path | None = None,
                objects: str | Path | None = None, image_id_key: str = "image_id",
                caption_key: str = "caption", details: bool = False,
                convention: str = "official") -> dict[str, Any]:
    """Score a caption file against COCO annotations (a directory) or a ground-truth JSON."""
    check_convention("chair", convention, CONVENTIONS)
    if (coco_annotations is None) == (objects is None):
        raise InputError("chair: give the COCO annotations directory or a ground-truth "
                         "objects file (one of them)")
    caps = read_captions(captions, image_id_key, caption_key)
    gt = read_ground_truth(objects) if objects is not None else ground_truth_from_coco(
        coco_annotations, [c["image_id"] for c in caps])  # type: ignore[arg-type]
    return score(caps, gt, convention, details)
