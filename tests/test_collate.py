from pathlib import Path

import pytest
import torch

from tinyvlm.data.collate import IGNORE, PromptCollator, SFTCollator, pad, shift_targets
from tinyvlm.data.conversation import Conversation
from tinyvlm.data.images import ImageStore
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError


def test_shift_targets_hand_built() -> None:
    # tokens:     10   11   12   13   14   15
    # trainable:   F    F    F    T    T    F
    # position t predicts token t+1, so positions 2 and 3 carry the targets 13 and 14.
    ids = [10, 11, 12, 13, 14, 15]
    trainable = [False, False, False, True, True, False]
    assert shift_targets(ids, trainable) == [IGNORE, IGNORE, 13, 14, IGNORE, IGNORE]


def test_sft_batch_targets_are_exactly_the_answers(tokenizer: Tokenizer) -> None:
    t = tokenizer
    convs = [Conversation("a", [], [("how many shapes?", "3")]),
             Conversation("b", [], [("what colour is the circle?", "red"),
                                    ("how many shapes?", "3")])]
    batch = SFTCollator(t, ImageStore(32), 0, 128)(convs)
    assert batch.input_ids.shape == batch.target_ids.shape == batch.attention_mask.shape
    row = batch.input_ids[0].tolist()
    n = int(batch.attention_mask[0].sum())
    assert row[n:] == [t.pad_id] * (len(row) - n)  # right padding
    # Every target equals the next input token, and only answer tokens are targets.
    for b in range(2):
        ids, targets = batch.input_ids[b].tolist(), batch.target_ids[b].tolist()
        picked = [(i, tgt) for i, tgt in enumerate(targets) if tgt != IGNORE]
        assert all(ids[i + 1] == tgt for i, tgt in picked)
        assert all(ids[i] in (t.assistant_id, *t.encode("3"), *t.encode("red"))
                   for i, _ in picked)
    answers = [tgt for tgt in batch.target_ids[1].tolist() if tgt != IGNORE]
    assert answers == [*t.encode("red"), t.end_id, *t.encode("3"), t.end_id]


def test_long_conversations_drop_whole_turns(tokenizer: Tokenizer) -> None:
    conv = Conversation("c", [], [("how many shapes?", "3")] * 5)
    collate = SFTCollator(tokenizer, ImageStore(32), 0, max_len=20)
    ids, trainable, _ = collate.encode(conv)
    assert len(ids) <= 20 and sum(trainable) % 2 == 0  # complete answers only
    with pytest.raises(InputError, match="exceed max_seq_len"):
        SFTCollator(tokenizer, ImageStore(32), 0, max_len=3).encode(conv)


def test_prompts_are_left_padded(tokenizer: Tokenizer) -> None:
    convs = [Conversation("a", [], [("how many shapes?", "")]),
             Conversation("b", [], [("what colour is the circle?", "")])]
    batch = PromptCollator(tokenizer, ImageStore(32), 0)(convs)
    assert (batch.input_ids[:, -1] == tokenizer.assistant_id).all()
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[:, -1].all()


def test_pad_sides() -> None:
    assert pad([[1, 2], [3]], 0).tolist() == [[1, 2], [3, 0]]
    assert pad([[1, 2], [3]], 0, side="left").tolist() == [[1, 2], [0, 3]]


def test_images_load_in_placeholder_order(tmp_path: Path, tokenizer: Tokenizer) -> None:
    from PIL import Image

    for name, colour in (("r.png", (255, 0, 0)), ("g.png", (0, 255, 0))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
    conv = Conversation("x", [tmp_path / "r.png", tmp_path / "g.png"],
                        [("<image> and <image>", "ok")])
    batch = SFTCollator(tokenizer, ImageStore(32), 2, 64)([conv])
    assert batch.pixel_values is not None
    assert torch.equal(batch.pixel_values[:, :, 0, 0],
                       torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]]))


def test_keep_turns_moves_the_image_to_the_first_kept_turn() -> None:
    from tinyvlm.data.conversation import keep_turns

    conv = Conversation("c", [Path("a.png")], [("<image>\nq1", "a1"), ("q2", "a2"), ("q3", "a3")],
                        [{"type": "x"}, {"type": "y"}, {"type": "x"}])
    kept = keep_turns(conv, {"y"})
    assert kept is not None
    assert kept.turns == [("<image>\nq2", "a2")] and kept.meta == [{"type": "y"}]
    assert kept.images == conv.images
    both = keep_turns(conv, {"x"})
    assert both is not None and both.turns == [("<image>\nq1", "a1"), ("q3", "a3")]
    assert keep_turns(conv, {"z"}) is None
