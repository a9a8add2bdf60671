"""Using a model: an OpenAI-compatible chat-completions server (`tinyvlm serve`), its request
checks and its batcher, and a small web page. The web framework (starlette + uvicorn) is the
`serve` extra, imported only by `app.py`."""
