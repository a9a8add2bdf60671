"""Regenerate src/tinyvlm/eval/scorers/data/chair_singulars.json: what the original CHAIR
code's singularize (pattern 3.6, pattern/text/en/inflect.py, clips/pattern d25511f9) makes of
every word that can matter to CHAIR -- the COCO synonyms and the parts of its two-word
objects, their regular and irregular plural spellings, and any extra words given (e.g. the
tokens of real captions) -- kept where the word or its singular is one of those words.

    python tools/make_chair_singulars.py --pattern DIR [--words FILE ...] > OUT.json

DIR holds an importable `pattern.en` exposing singularize (pattern itself no longer installs:
its inflect.py behind a stub of pattern.text is enough). FILE: text, one word per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, "src")
from tinyvlm.eval.scorers.chair import relevant_words


def spellings(word: str) -> set[str]:
    out = {word, word + "s", word + "es", word + "'s"}
    if word.endswith("y"):
        out.add(word[:-1] + "ies")
    if word.endswith("f"):
        out.add(word[:-1] + "ves")
    if word.endswith("fe"):
        out.add(word[:-2] + "ves")
    if word.endswith("man"):
        out.add(word[:-3] + "men")
    if word.endswith("s"):
        out.add(word[:-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", required=True)
    ap.add_argument("--words", action="append", default=[])
    args = ap.parse_args()
    sys.path.insert(0, args.pattern)
    from pattern.en import singularize  # type: ignore[import-not-found]
    from pattern.text.en import inflect  # type: ignore[import-not-found]

    relevant = relevant_words()
    candidates = set().union(*(spellings(w) for w in relevant))
    candidates |= set(inflect.singular_irregular) | set(inflect.singular_uninflected)
    candidates |= {inflect.pluralize(w) for w in relevant}
    for path in args.words:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        candidates |= {w.strip() for w in lines if w.strip()}
    table = {}
    for w in sorted(candidates):
        s = singularize(w)
        if w in relevant or s in relevant:
            table[w] = s
    json.dump({"about": "word -> pattern 3.6 singularize(word), for the words CHAIR can see "
                        "(tools/make_chair_singulars.py)", "singular": table},
              sys.stdout, indent=0, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
