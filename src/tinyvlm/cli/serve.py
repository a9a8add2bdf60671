"""`tinyvlm chat` and `tinyvlm serve`: talk to a model in the terminal, or serve it with an
OpenAI-compatible API and a web page."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tinyvlm.cli.common import load_model
from tinyvlm.errors import InputError


@click.command()
@click.argument("model")
@click.option("--image", "images", multiple=True, help="An image for the first message.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
def chat(model: str, images: tuple[str, ...], max_new_tokens: int, temperature: float,
         top_p: float, seed: int) -> None:
    """A multi-turn chat in the terminal, answers streamed as they are generated.

    /image PATH attaches an image to the next message, /reset starts over, /quit (or
    Ctrl-D) leaves.

    \b
    Example:
      tinyvlm chat runs/demo/model --image data/shapes/images/test/000001.png
    """
    import torch

    from tinyvlm.data.conversation import Conversation, place_images
    from tinyvlm.infer import Engine, Sampling

    m = load_model(model)
    engine = Engine(m, batch_size=1)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    pending = [Path(p) for p in images]
    for p in pending:
        if not p.is_file():
            raise InputError("image not found", p)
    history: list[tuple[str, str]] = []
    all_images: list[Path] = []
    click.echo("tinyvlm chat: /image PATH, /reset, /quit", err=True)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo("", err=True)
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history, all_images, pending = [], [], []
            click.echo("(history cleared)", err=True)
            continue
        if line.startswith("/image"):
            path = Path(line.removeprefix("/image").strip())
            if not path.is_file():
                click.echo(f"no such image: {path}", err=True)
                continue
            pending.append(path)
            click.echo(f"(attached {path})", err=True)
            continue
        (text,) = place_images([line], len(pending))
        conv = Conversation("chat", [*all_images, *pending], [*history, (text, "")])
        shown = [0]

        def stream(_: int, so_far: str, shown: list[int] = shown) -> None:
            sys.stdout.write(so_far[shown[0]:])
            sys.stdout.flush()
            shown[0] = len(so_far)

        sys.stdout.write("model> ")
        try:
            answer = engine.generate([engine.encode_conversation(conv)], sampling, generator,
                                     on_text=stream)[0]
        except InputError as e:
            click.echo(f"\n{e}", err=True)
            continue
        sys.stdout.write(answer[shown[0]:] + "\n")
        history.append((text, answer))
        all_images += pending
        pending = []


@click.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (the default: this machine only).")
@click.option("--port", default=8000, show_default=True)
@click.option("--name", default=None, help="The model's name in the API [default: dir name].")
@click.option("--api-key", default=None, envvar="TINYVLM_API_KEY",
              help="Require 'Authorization: Bearer KEY' (or set TINYVLM_API_KEY).")
@click.option("--image-dir", default=None,
              help="Local image files may be named below this directory (default: none).")
@click.option("--max-batch", default=16, show_default=True, help="Requests batched together.")
@click.option("--batch-window-ms", default=10.0, show_default=True,
              help="How long a batch waits for more requests.")
@click.option("--max-tokens", default=512, show_default=True, help="Largest max_tokens.")
@click.option("--backend", type=click.Choice(["auto", "tinyvlm", "transformers"]),
              default="auto", show_default=True,
              help="Who runs MODEL (as for tinyvlm eval): transformers serves any "
                   "AutoModelForImageTextToText directory.")
def serve(model: str, host: str, port: int, name: str | None, api_key: str | None,
          image_dir: str | None, max_batch: int, batch_window_ms: float,
          max_tokens: int, backend: str) -> None:
    """Serve MODEL with an OpenAI-compatible chat-completions API and a web page at /.

    POST /v1/chat/completions (text and image_url parts, images as data URLs; stream: true
    for server-sent events), GET /v1/models, GET /health. Needs the serve extra
    (pip install -e '.[serve]').

    \b
    Example:
      tinyvlm serve runs/demo/model --port 8000
    """
    try:
        import uvicorn

        from tinyvlm.serve.app import create_app
        from tinyvlm.serve.protocol import Limits
    except ImportError:
        raise InputError("serving needs the serve extra: pip install -e '.[serve]'") from None
    if image_dir is not None and not Path(image_dir).is_dir():
        raise InputError("--image-dir: no such directory", image_dir)
    if max_batch < 1 or batch_window_ms < 0 or max_tokens < 1:
        raise InputError("--max-batch and --max-tokens must be >= 1, --batch-window-ms >= 0")
    from tinyvlm.cli.evaluate import load_eval_model

    m = load_eval_model(model, backend) if backend != "tinyvlm" else load_model(model)
    limits = Limits(max_tokens=max_tokens, image_dir=Path(image_dir) if image_dir else None)
    app = create_app(m, name or Path(model).resolve().name, api_key, limits, max_batch,
                     batch_window_ms / 1000)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None \
            and not os.environ.get("TINYVLM_ALLOW_OPEN"):
        raise InputError(f"binding {host} without an API key would let anyone on the "
                         "network use the model: give --api-key (or set TINYVLM_ALLOW_OPEN=1)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
