"""What every command shares: exit codes, the error handler, loading a study file."""

from __future__ import annotations

import dataclasses
import functools
import runpy
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

EXIT_OK, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_BUDGET, EXIT_LOCKED, EXIT_CHANGED, EXIT_UNTRUSTED = 0, 1, 3, 4, 5, 6, 7
EXIT_INTERRUPTED = 130


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors as one clear line and a meaningful exit code; tracebacks with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import BayesimError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:  # outside a run (a run turns it into Interrupted)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            code = getattr(exc, "exit_code", EXIT_ERROR)
            name = "" if isinstance(exc, (BayesimError, FileNotFoundError, ValueError)) else f"{type(exc).__name__}: "
            _fail(f"{name}{exc}" + ("" if debug else "  (--debug for the traceback)" if code == EXIT_ERROR and name else ""), code)

    return wrapper


def load_study_file(path: str) -> Any:
    """Execute a study file and return its ``config`` (a Study)."""
    from ..config import Study

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no study file {path}")
    sys.path.insert(0, str(p.resolve().parent))
    try:
        ns = runpy.run_path(str(p), run_name="bayesim_study")
    except Exception as exc:
        from ..errors import BayesimError

        where = f"{exc.filename}:{exc.lineno}" if isinstance(exc, SyntaxError) else _study_line(exc, p)
        if isinstance(exc, BayesimError):
            raise BayesimError(f"{exc} (in {where})") from exc
        raise BayesimError(f"the study file failed at {where}: {type(exc).__name__}: {exc}") from exc
    config = ns.get("config")
    if not isinstance(config, Study):
        raise click.UsageError(f"{path} must define `config = simulation_config(...)` at top level")
    return dataclasses.replace(config, study_file=str(p.resolve()))


def _study_line(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame of ``exc`` in the study file (else its last frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    f = (mine or frames or [None])[-1]
    return f"{f.filename}:{f.lineno}" if f is not None else str(path)


def finish_code(result: Any) -> int:
    if result is None or result.reduce_outcome is None:
        return EXIT_OK
    red = result.reduce_outcome
    return EXIT_INCOMPLETE if (red.n_missing or red.n_failed) else EXIT_OK
