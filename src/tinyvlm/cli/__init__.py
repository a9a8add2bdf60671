"""The `tinyvlm` command line: it parses and dispatches; the work is in the library.

Bad input ends with one line on stderr and exit code 2. Each command group lives in its own
module; this one assembles them under the root group.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
import warnings

import click

from tinyvlm.cli.data import data
from tinyvlm.cli.distill import distill
from tinyvlm.cli.evaluate import eval_cmd, report_cmd
from tinyvlm.cli.interop import export_hf, import_hf
from tinyvlm.cli.model import generate, info, upcycle
from tinyvlm.cli.preference import preference
from tinyvlm.cli.score import score_group
from tinyvlm.cli.serve import chat, serve
from tinyvlm.cli.tasks import tasks
from tinyvlm.cli.train import demo, train
from tinyvlm.errors import InputError, PeerLost, TrainingInterrupted


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
                demo, score_group, preference, import_hf, export_hf, chat, serve):
    cli.add_command(command)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    return f"warning: {message}\n"


def main() -> None:
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    try:
        cli.main(standalone_mode=False)
    except InputError as e:
        _fail(str(e))
    except click.UsageError as e:  # a bad flag or value: one line, with where to look
        where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _fail(f"{e.format_message()}{where}")
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, EOFError):  # click reports EOFError as an abort
            _fail(f"unexpected end of input ({e.__cause__ or 'EOF'})")
        if isinstance(e.__cause__, TrainingInterrupted):  # and a stopped stage too
            click.echo(f"{e.__cause__}; resume with: {resume_command()}", err=True)
        else:
            click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except PeerLost as e:  # the other processes are ended by torchrun
        click.echo(f"error: {e}; resume with: {resume_command()}", err=True)
        sys.exit(1)
    except TrainingInterrupted as e:
        click.echo(f"{e}; resume with: {resume_command()}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            _fail(f"no space left on device writing {e.filename or 'a file'}; files written "
                  "before are intact")
        if isinstance(e, FileExistsError | NotADirectoryError):
            _fail(f"{e.filename}: a file stands where a directory is needed")
        if isinstance(e, IsADirectoryError):
            _fail(f"{e.filename}: a directory stands where a file is needed")
        raise


def _fail(message: str) -> None:
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "0"
    who = f"rank {rank}: " if rank != "0" else ""  # under torchrun every process may say it
    click.echo(f"error: {who}{message}", err=True)
    sys.exit(InputError.exit_code)


def resume_command() -> str:
    """This command line with --resume: what continues an interrupted run (under torchrun,
    its launch on any number of processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["tinyvlm"] if world <= 1 else \
        ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)}",
         "-m", "tinyvlm"]
    args = [*launcher, *sys.argv[1:]]
    return shlex.join(args if "--resume" in args else [*args, "--resume"])


__all__ = ["cli", "main"]
