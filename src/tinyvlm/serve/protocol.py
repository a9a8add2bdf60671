"""OpenAI chat-completions requests: checked field by field into a conversation, images and
sampling settings; every problem is a RequestError the server answers with a 400 (or 401,
413) and an OpenAI-style JSON error, never a traceback."""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyvlm.data.conversation import Conversation
from tinyvlm.errors import InputError
from tinyvlm.infer import Sampling, conversation_from_messages


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.param, self.kind = message, status, param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": None}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the defaults suit a laptop."""

    max_body_bytes: int = 20 << 20
    max_image_bytes: int = 8 << 20
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    max_messages: int = 64
    max_tokens: int = 512
    image_dir: Path | None = None  # local files only below it (None: no local files)


@dataclass
class ChatRequest:
    conversation: Conversation
    sampling: Sampling
    stream: bool
    seed: int | None
    model: str


KNOWN = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
         "stop", "seed", "n", "stream", "stream_options", "user", "frequency_penalty",
         "presence_penalty", "logit_bias", "response_format"}


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"'{key}' must be a number", param=key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must lie in [{low}, {high}], got {value}", param=key)
    return float(value)


def parse_request(body: Any, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise RequestError(f"unknown field '{unknown[0]}'", param=unknown[0])
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise RequestError(f"'{key}' is not supported", param=key)
    if body.get("logit_bias") or (body.get("response_format") or {}).get("type",
                                                                          "text") != "text":
        raise RequestError("logit_bias and structured response formats are not supported")
    n = body.get("n", 1)
    if n not in (1, None):
        raise RequestError("only n = 1 is supported", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise RequestError(f"at most {limits.max_messages} messages", param="messages")
    images: list[Any] = []
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a role",
                               param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                if not isinstance(part, dict):
                    raise RequestError(f"{where} must be an object", param=where)
                if part.get("type") == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    images.append(load_image_url(url, limits, where))
                    parts.append({"type": "image"})
                elif part.get("type") == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                else:
                    raise RequestError(f"{where}: parts are text or image_url", param=where)
            plain.append({"role": m["role"], "content": parts})
        elif isinstance(content, str):
            plain.append({"role": m["role"], "content": content})
        else:
            raise RequestError(f"messages[{i}].content must be a string or a list of parts",
                               param=f"messages[{i}].content")
    if len(images) > limits.max_images:
        raise RequestError(f"at most {limits.max_images} images per request", param="messages")
    try:
        conv = conversation_from_messages(plain, images)
    except InputError as e:
        raise RequestError(str(e), param="messages") from None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 64))
    if max_tokens is None:
        max_tokens = 64
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or \
            not 1 <= max_tokens <= limits.max_tokens:
        raise RequestError(f"'max_tokens' must be an integer in 1..{limits.max_tokens}",
                           param="max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s
                                                               for s in stop):
        raise RequestError("'stop' must be a string or up to 4 strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < 2**63):
        raise RequestError("'seed' must be an integer in 0..2^63-1", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", param="stream")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    sampling = Sampling(max_tokens, _number(body, "temperature", 0.0, 0.0, 2.0),
                        _number(body, "top_p", 1.0, 1e-6, 1.0), tuple(stop))
    return ChatRequest(conv, sampling, stream, seed, model)


def load_image_url(url: Any, limits: Limits, where: str) -> Any:
    """A decoded RGB PIL image from a data URL (or, when allowed, a local file below the
    operator's image directory); remote URLs are never fetched."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}: image_url.url must be a string", param=where)
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64") or not head[5:].startswith("image/"):
            raise RequestError(f"{where}: a data URL must be data:image/...;base64,...",
                               param=where)
        if len(data) > limits.max_image_bytes * 4 // 3 + 4:
            raise RequestError(f"{where}: the image exceeds {limits.max_image_bytes} bytes",
                               status=413, param=where)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: the data URL is not valid base64",
                               param=where) from None
    elif url.startswith(("http://", "https://", "ftp://")):
        raise RequestError(f"{where}: remote image URLs are not fetched; send a data URL",
                           param=where)
    else:
        path = Path(url.removeprefix("file://"))
        root = limits.image_dir
        if root is None or not path.resolve().is_relative_to(root.resolve()):
            raise RequestError(f"{where}: local files are only read below the server's "
                               "image directory", param=where)
        if not path.is_file():
            raise RequestError(f"{where}: no such image file", param=where)
        raw = path.read_bytes()
    if len(raw) > limits.max_image_bytes:
        raise RequestError(f"{where}: the image exceeds {limits.max_image_bytes} bytes",
                           status=413, param=where)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > limits.max_image_pixels:
                raise RequestError(f"{where}: the image has more than "
                                   f"{limits.max_image_pixels} pixels", status=413,
                                   param=where)
            return img.convert("RGB")
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise RequestError(f"{where}: not an image", param=where) from None
