"""The `tinyvlm` command line: it parses and dispatches; the work is in the library.

Bad input ends with one line on stderr and exit code 2. Each command group lives in its own
module; this one assembles them under the root group.
"""

from __future__ import annotations

import sys
import warnings

import click

from tinyvlm.cli.data import data
from tinyvlm.cli.distill import distill
from tinyvlm.cli.evaluate import eval_cmd, report_cmd
from tinyvlm.cli.model import generate, info, upcycle
from tinyvlm.cli.preference import preference
from tinyvlm.cli.score import score_group
from tinyvlm.cli.tasks import tasks
from tinyvlm.cli.train import demo, train
from tinyvlm.errors import InputError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyvlm")
def cli() -> None:
    """tinyvlm: small vision-language models that stay good.

    \b
    Start with:  tinyvlm demo
    Then:        tinyvlm info runs/demo/model
                 tinyvlm generate runs/demo/model --image IMG --prompt "how many shapes are there?"
    """


for command in (data, train, eval_cmd, report_cmd, generate, upcycle, distill, tasks, info,
                demo, score_group, preference):
    cli.add_command(command)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    try:
        cli.main(standalone_mode=False)
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(InputError.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["cli", "main"]
