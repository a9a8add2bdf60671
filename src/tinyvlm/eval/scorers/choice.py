"""Multiple-choice answer extraction: which option letter a free-form prediction names.

Each harness has its own rule, and they disagree on "(B)", "B." or "The answer is C":

- `vlmevalkit_choice`: VLMEvalKit's ``can_infer`` as it is now (vlmeval/utils/matching_util.py
  since its August 2025 and June 2026 changes, commits c337155 and a67ace5). Replace
  ``.()[],:;!*#{}`` by spaces and split on whitespace; if exactly one option letter stands
  alone as a word among the last five words, that is the answer ('A' counts too, even in "A
  dog"). A prediction containing one of a few refusal sentences is 'Z'; with no letter but a
  lone 'Z' word, 'Z'. Then a verbose "(correct) answer is X" (A to D, any case, X possibly in
  ``**``). Otherwise, unless the prediction is more than twice as long as all option texts
  together, the one option whose text occurs in the lowercased prediction.
- `vlmevalkit_choice_2024`: the same before those changes (the rule MMBench's published
  numbers were computed with): the lone letter may stand anywhere, no verbose pattern, no
  length cap on the option-text rule.
- `lmms_eval_choice`: lmms-eval's MMBench variant: split on whitespace only; one bare letter
  among A-E wins unless 'A' is a word of a prediction longer than three words; then the
  first of the forms "B.", "B,", "B:", "B)", "B).", "(B)", "(B).", ":B", ":B,", ":B.", ":B)",
  ":B)." that names exactly one letter; then the option-text rule above.

Both return None when nothing can be inferred: the point where a harness would ask its judge.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

Choices = Mapping[str, str]

_VLMEVALKIT_SPACED = ".()[],:;!*#{}"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_LMMS_AFFIXES = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"),
                 ("(", ")."), (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))


# VLMEvalKit's pattern for verbose chain-of-thought replies ("The correct answer is **B**").
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def choice_by_text(prediction: str, choices: Choices, capped: bool = False) -> str | None:
    """The one option whose lowercased text occurs in the lowercased prediction, if exactly
    one; `capped`: never for a prediction over twice as long as all option texts together."""
    low = prediction.lower()
    if capped and len(low) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    hits = [k for k, v in choices.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def vlmevalkit_choice(prediction: str, choices: Choices) -> str | None:
    """VLMEvalKit's current rule: an option letter, 'Z' (refusal / none of them), or None."""
    return (_vlmevalkit_letter(prediction, choices, recent=True)
            or choice_by_text(prediction, choices, capped=True))


def vlmevalkit_choice_2024(prediction: str, choices: Choices) -> str | None:
    """VLMEvalKit's rule before August 2025."""
    return _vlmevalkit_letter(prediction, choices) or choice_by_text(prediction, choices)


def lmms_eval_choice(prediction: str, choices: Choices) -> str | None:
    """lmms-eval's MMBench rule: an option letter or None."""
    return _lmms_eval_letter(prediction) or choice_by_text(prediction, choices)


def _vlmevalkit_letter(prediction: str, choices: Choices, recent: bool = False) -> str | None:
    if "Failed to obtain answer via API" in prediction:
        return None
    if any(r in prediction for r in _REFUSALS):
        return "Z"
    spaced = prediction
    for ch in _VLMEVALKIT_SPACED:
        spaced = spaced.replace(ch, " ")
    words = spaced.split()
    named = [c for c in choices if c in words]
    if len(named) == 1:
        # Since 2025 the letter must be among the last five words ("A dog ... is B" is B's).
        if not recent or words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and "Z" in words:
        return "Z"
    if recent:
        match = _VERBOSE_ANSWER.search(prediction)
        if match and match.group(1).upper() in choices:
            return match.group(1).upper()
    return None


def _lmms_eval_letter(prediction: str) -> str | None:
    if "Failed to obtain answer via API" in prediction:
        return None
    letters = string.ascii_uppercase[:5]
    words = prediction.split()
    bare = [c for c in letters if c in words]
    if len(bare) == 1 and not ("A" in words and len(words) > 3):
        return bare[0]
    for pre, post in _LMMS_AFFIXES:
        named = [c for c in letters if f"{pre}{c}{post}" in words]
        if len(named) == 1:
            return named[0]
    return None
