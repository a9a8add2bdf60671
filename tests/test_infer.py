"""The inference engine: requests (conversations, chat messages; images as paths, bytes or PIL
images) -> length-sorted left-padded batches -> texts; streaming and stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tinyvlm.data.conversation import Conversation
from tinyvlm.data.tokenizer import Tokenizer
from tinyvlm.errors import InputError
from tinyvlm.infer import Engine, Sampling, answer, conversation_from_messages
from tinyvlm.models.vlm import TinyVLM

from .conftest import chatty as chatty_model


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1)) * 255)
                    .byte().numpy()).save(path)
    return path


@pytest.fixture
def chatty(tokenizer: Tokenizer) -> TinyVLM:
    return chatty_model(tokenizer)


def prompts(engine: Engine, image: Path) -> list:  # type: ignore[type-arg]
    convs = [Conversation("a", [image], [("<image>\nhow many shapes are there?", "")]),
             Conversation("b", [], [("what word is written in the image?", "")]),
             Conversation("c", [image, image], [("<image>\n<image>\nwhat colour?", "")])]
    return [engine.encode_conversation(c) for c in convs]


def test_answers_come_back_in_input_order_whatever_the_batching(chatty: TinyVLM,
                                                                 image: Path) -> None:
    one = Engine(chatty, 1)
    alone = [one.generate([p], Sampling(5))[0] for p in prompts(one, image)]
    many = Engine(chatty, 3)
    seen: list[list[int]] = []
    batched = many.generate(prompts(many, image), Sampling(5),
                            on_batch=lambda idx, texts, s: seen.append(idx))
    assert batched == alone and all(alone)
    assert seen == [[1, 0, 2]]  # one batch, sorted by prompt length


def test_images_as_bytes_or_pil_answer_like_paths(chatty: TinyVLM, image: Path) -> None:
    by_path = answer(chatty, "how many shapes are there?", [image], Sampling(5))
    assert answer(chatty, "how many shapes are there?", [image.read_bytes()],
                  Sampling(5)) == by_path
    with Image.open(image) as pil:
        assert answer(chatty, "how many shapes are there?", [pil.copy()], Sampling(5)) == by_path


def test_stop_strings_cut_and_end_a_row(chatty: TinyVLM, image: Path) -> None:
    engine = Engine(chatty, 4)
    full = engine.generate(prompts(engine, image), Sampling(8))
    words = full[0].split()
    assert len(words) >= 3
    stop = words[1]
    cut = engine.generate(prompts(engine, image), Sampling(8, stop=(stop,)))
    assert cut[0] == full[0][: full[0].find(stop)]
    assert all(stop not in text for text in cut)


def test_streaming_sees_each_row_grow_to_its_answer(chatty: TinyVLM, image: Path) -> None:
    engine = Engine(chatty, 4)
    streamed: dict[int, list[str]] = {}
    texts = engine.generate(prompts(engine, image), Sampling(5),
                            on_text=lambda i, t: streamed.setdefault(i, []).append(t))
    for i, text in enumerate(texts):
        assert streamed[i][-1] == text
        assert all(b.startswith(a) for a, b in zip(streamed[i], streamed[i][1:], strict=False))


def test_sampling_is_seeded(chatty: TinyVLM, image: Path) -> None:
    engine = Engine(chatty, 4)
    ps = prompts(engine, image)
    draw = [engine.generate(ps, Sampling(6, temperature=1.5),
                            torch.Generator().manual_seed(s), sort_by_length=False)
            for s in (7, 7, 8)]
    assert draw[0] == draw[1] != draw[2]


def test_chat_messages_become_a_conversation(image: Path, chatty: TinyVLM) -> None:
    conv = conversation_from_messages(
        [{"role": "system", "content": "be brief"},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
         {"role": "assistant", "content": "a cat"},
         {"role": "user", "content": "and now?"}], [image])
    assert conv.turns == [("<image>\nwhat?", "a cat"), ("and now?", "")]
    assert conv.system == "be brief" and conv.images == [image]
    # The native format has no system role: it goes before the first user message.
    engine = Engine(chatty)
    assert engine.encode_conversation(conv).ids == chatty.tokenizer.encode_prompt(
        [("be brief\n<image>\nwhat?", "a cat")], "and now?", chatty.image_tokens)
    plain = conversation_from_messages([{"role": "user", "content": "hi"}], [image, image])
    assert plain.turns == [("<image>\n<image>\nhi", "")]
    with pytest.raises(InputError, match="last message must be the user's"):
        conversation_from_messages([{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}])
    with pytest.raises(InputError, match="placeholders for 2 images"):
        conversation_from_messages([{"role": "user", "content": "<image> q"}], [image, image])
