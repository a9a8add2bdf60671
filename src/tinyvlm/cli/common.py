"""What every command group shares: loading a model, the score commands' options."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tinyvlm.models.vlm import TinyVLM


def load_model(path: str) -> TinyVLM:
    # Imported here: torch loads slowly, --help should not.
    from tinyvlm.models.load import load_model as load

    return load(path)


def score_options(f: Callable[..., None]) -> Callable[..., None]:
    """--convention and --table, shared by every `tinyvlm score` command."""
    f = click.option("--table", is_flag=True,
                     help="Print a human-readable table instead of JSON.")(f)
    return click.option(
        "--convention", default="official", show_default=True,
        help="Whose scoring rules: official, lmms-eval or vlmevalkit (where the benchmark "
             "has them).")(f)


def print_scores(compute: Callable[[], dict], table: bool) -> None:
    """Run a scorer; its warnings become one 'warning: ...' line each on stderr."""
    import warnings

    from tinyvlm.eval.scorers import format_table as scores_table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute()
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(scores_table(result) if table else json.dumps(result, indent=2))


def load_callable(spec: str, option: str) -> Callable[..., object]:
    """`package.module:function` -> that function; InputError naming `option` otherwise."""
    import importlib

    from tinyvlm.errors import InputError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"{option} {spec!r}: expected package.module:function")
    import os
    import sys

    # As `python -c` would: a module in the current directory is found.
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"{option} {spec!r}: cannot import {module_name} ({e}; is it on "
                         "PYTHONPATH?)") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"{option} {spec!r}: {module_name} has no function {attr}")
    return fn
