"""The OpenAI-compatible server against the real openai client, on a free localhost port:
answers equal the engine's, streaming, several images, every bad request's status, a
bounded load, a client that leaves mid-stream."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from tinyvlm.data.tokenizer import Tokenizer  # noqa: E402
from tinyvlm.infer import Sampling, answer  # noqa: E402
from tinyvlm.models.vlm import TinyVLM  # noqa: E402
from tinyvlm.serve.app import create_app, running  # noqa: E402
from tinyvlm.serve.protocol import Limits  # noqa: E402

from .conftest import TEXTS, chatty  # noqa: E402

KEY = "test-key"


def chatty_model() -> TinyVLM:
    return chatty(Tokenizer.train(TEXTS))


def png(seed: int, size: int = 32) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy())


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    model = chatty_model()
    images = tmp_path_factory.mktemp("allowed")
    png(9).save(images / "local.png")
    app = create_app(model, "tiny", KEY, Limits(max_tokens=32, max_images=2,
                                                max_image_bytes=100_000,
                                                max_body_bytes=400_000, image_dir=images),
                     max_batch=8, window_s=0.02)
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        yield {"url": url, "client": client, "model": model, "app": app, "images": images}


def ask(text: str, *images: Image.Image) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_answers_equal_the_engine_and_stream_the_same_text(server) -> None:
    client, model = server["client"], server["model"]
    img = png(1)
    reply = client.chat.completions.create(model="tiny", messages=ask("how many shapes?", img),
                                           max_tokens=8, temperature=0)
    expected = answer(model, "how many shapes?", [img], Sampling(8))
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8 and reply.usage.prompt_tokens > 16
    chunks = list(client.chat.completions.create(
        model="tiny", messages=ask("how many shapes?", img), max_tokens=8, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected and len([c for c in chunks if c.choices and
                                     c.choices[0].delta.content]) > 1
    assert chunks[-1].choices[0].finish_reason == "length"


def test_two_images_in_one_message_and_a_local_file(server) -> None:
    client, model = server["client"], server["model"]
    a, b = png(2), png(3)
    reply = client.chat.completions.create(model="tiny", messages=ask("what colour?", a, b),
                                           max_tokens=6)
    assert reply.choices[0].message.content == answer(model, "what colour?", [a, b],
                                                      Sampling(6))
    local = server["images"] / "local.png"
    msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(local)}},
                                        {"type": "text", "text": "what colour?"}]}]
    reply = client.chat.completions.create(model="tiny", messages=msg, max_tokens=4)
    assert reply.choices[0].message.content == answer(model, "what colour?", [local],
                                                      Sampling(4))


def post(server, body: bytes | dict, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server["url"] + "/v1/chat/completions", data=data,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body,status,words", [
    (b"{not json", 400, "not valid JSON"),
    ({"messages": [{"role": "user", "content": "hi"}], "temprature": 1}, 400, "unknown field"),
    ({"messages": []}, 400, "non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,@@@"}}]}]}, 400, "not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}]}]},
     400, "not an image"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "https://example.com/cat.png"}}]}]}, 400, "remote image URLs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "/etc/passwd"}}]}]}, 400, "below the server's image directory"),
    ({"messages": ask("x", png(1), png(2), png(3))}, 400, "at most 2 images"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n = 1"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "user"),
    ({"messages": ask("x", png(1, 300))}, 413, "exceeds"),
])
def test_bad_requests_get_an_openai_error(server, body, status: int, words: str) -> None:
    code, reply = post(server, body)
    assert code == status, reply
    assert words in reply["error"]["message"] and reply["error"]["type"]


def test_the_api_key_is_required(server) -> None:
    code, reply = post(server, {"messages": [{"role": "user", "content": "hi"}]}, key=None)
    assert code == 401 and reply["error"]["type"] == "authentication_error"
    code, _ = post(server, {"messages": [{"role": "user", "content": "hi"}]}, key="wrong")
    assert code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="nope",
                      max_retries=0).models.list()
    assert [m.id for m in server["client"].models.list().data] == ["tiny"]


def test_concurrent_requests_are_batched_and_none_is_lost(server) -> None:
    client, model = server["client"], server["model"]
    questions = [f"how many shapes? {'is there ' * (i % 3)}" for i in range(48)]
    expected = {q: answer(model, q, [png(4)], Sampling(5)) for q in set(questions)}
    before = server["app"].state.batcher.batches

    def one(q: str) -> tuple[str, str]:
        reply = client.chat.completions.create(model="tiny", messages=ask(q, png(4)),
                                               max_tokens=5)
        return q, reply.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, questions))
    assert len(results) == len(questions)
    assert all(text == expected[q] for q, text in results)
    batches = server["app"].state.batcher.batches - before
    assert batches < len(questions)  # several requests shared a batch
    with urllib.request.urlopen(server["url"] + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_a_client_that_leaves_mid_stream_frees_its_slot(server) -> None:
    client = server["client"]
    stream = client.chat.completions.create(model="tiny", messages=ask("what colour?", png(5)),
                                            max_tokens=32, stream=True)
    next(iter(stream))
    stream.close()
    reply = client.chat.completions.create(model="tiny", messages=ask("what colour?", png(5)),
                                           max_tokens=3)
    assert reply.choices[0].message.content


def test_the_page_is_served(server) -> None:
    with urllib.request.urlopen(server["url"] + "/", timeout=10) as r:
        html = r.read().decode()
    assert "<title>tinyvlm" in html and "/v1/chat/completions" in html and "tiny" in html


def test_seeded_sampling_repeats(server) -> None:
    client = server["client"]
    kw = {"model": "tiny", "messages": ask("what colour?", png(6)), "max_tokens": 8,
          "temperature": 1.0, "seed": 7}
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_terminal_chat_keeps_history_and_streams(tmp_path, monkeypatch) -> None:
    import importlib

    from click.testing import CliRunner

    from tinyvlm.cli import cli
    from tinyvlm.data.conversation import Conversation
    from tinyvlm.infer import Engine

    model = chatty_model()  # its biased head is not a savable model: handed to the command
    serve_cli = importlib.import_module("tinyvlm.cli.serve")
    monkeypatch.setattr(serve_cli, "load_model", lambda path: model)
    (tmp_path / "m").mkdir()
    img = tmp_path / "img.png"
    png(8).save(img)
    result = CliRunner().invoke(cli, ["chat", str(tmp_path / "m"), "--image", str(img),
                                      "--max-new-tokens", "5"],
                                input="how many shapes?\nand the colour?\n/reset\n/quit\n")
    assert result.exit_code == 0, result.output
    first = answer(model, "how many shapes?", [img], Sampling(5))
    engine = Engine(model, 1)
    second = engine.generate([engine.encode_conversation(Conversation(
        "c", [img], [("<image>\nhow many shapes?", first), ("and the colour?", "")]))],
        Sampling(5))[0]
    assert f"model> {first}\n" in result.output and f"model> {second}\n" in result.output
