"""Bad user input (the CLI prints its message on one line, exit code 2) and an interrupted
training run (the CLI says how to resume it)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class InputError(Exception):
    """Bad input from the user (a file, a key, a value). `str(err)` is the whole message."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        self.located = path is not None  # callers that know the file may add it
        super().__init__(f"{where}{message}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a stage: the finished steps were saved first."""

    def __init__(self, stage: str, step: int, saved: bool):
        self.stage, self.step, self.saved = stage, step, saved
        what = f"its checkpoint at step {step} is saved" if saved else "nothing to save yet"
        super().__init__(f"interrupted in stage '{stage}' after step {step}; {what}")


class PeerLost(RuntimeError):
    """A collective of a distributed run timed out or lost a peer: another process died or
    stopped answering. `str(err)` is one line naming this process's rank."""


def closest(name: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid option, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
