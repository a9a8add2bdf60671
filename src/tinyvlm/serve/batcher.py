"""Concurrent requests, batched: a worker thread takes the queued requests that arrive within
a short window (up to a maximum batch), groups those with the same sampling settings and runs
each group through the inference engine as one batch, so throughput grows with load. A
request with a seed and a temperature runs alone, so its samples do not depend on who else
was waiting. Results, streamed text and errors go back through each job's callbacks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tinyvlm.errors import InputError
from tinyvlm.infer import Engine, Prompt, Sampling


@dataclass
class Job:
    prompt: Prompt
    sampling: Sampling
    seed: int | None
    on_text: Callable[[str], None] | None  # the answer so far (streaming)
    on_done: Callable[[str, int, BaseException | None], None]  # text, tokens, error
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def alone(self) -> bool:
        return self.seed is not None and self.sampling.temperature > 0


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, window_s: float = 0.01):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.batches = 0  # batches run so far (the load test reads it)
        self.thread = threading.Thread(target=self._loop, name="tinyvlm-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        waiting: list[Job] = []
        while True:
            if not waiting:
                job = self.jobs.get()
                if job is None:
                    return
                waiting.append(job)
            deadline = time.monotonic() + self.window_s
            while len(waiting) < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._run_all(waiting)
                    return
                waiting.append(job)
            first = waiting[0]
            group = [first] if first.alone else [
                j for j in waiting if not j.alone and j.sampling == first.sampling
            ][: self.max_batch]
            waiting = [j for j in waiting if j not in group]
            self._run(group)

    def _run_all(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._run([job])

    def _run(self, group: list[Job]) -> None:
        live = [j for j in group if not j.cancelled.is_set()]
        for j in group:
            if j.cancelled.is_set():
                j.on_done("", 0, None)
        if not live:
            return
        self.batches += 1
        generator = None
        if live[0].alone:
            generator = torch.Generator(device=self.engine.device).manual_seed(live[0].seed)
        counts: list[int] = []

        def on_text(i: int, text: str) -> None:
            cb = live[i].on_text
            if cb is not None:
                cb(text)

        try:
            texts = self.engine.generate(
                [j.prompt for j in live], live[0].sampling, generator,
                sort_by_length=generator is None, on_text=on_text,
                cancel=lambda i: live[i].cancelled.is_set(), counts=counts)
        except (InputError, ValueError, RuntimeError) as e:
            for j in live:
                j.on_done("", 0, e)
            return
        for j, text, n in zip(live, texts, counts, strict=True):
            j.on_done(text, n, None)

    def prompt(self, conversation: Any) -> Prompt:
        return self.engine.encode_conversation(conversation)
