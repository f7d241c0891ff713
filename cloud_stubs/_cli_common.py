"""Shared pieces of the ``cloud-stubs`` CLI modules: options, consoles, one-line errors."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from certs import CertsError
from cloud_stubs._errors import CloudStubError

__all__ = [
    "DEFAULT_STATE",
    "JsonOpt",
    "StateDir",
    "emit",
    "err_console",
    "errors",
    "fail",
    "out_console",
    "print_kv",
]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar="CLOUD_STUBS_STATE_DIR",
        help="Directory holding the stub's CA, registry and identities.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_STATE = Path(".iot-state")


def fail(message: str) -> NoReturn:
    """Print ``cloud-stubs: error: ...`` as one line on stderr and exit with code 2."""
    err_console.print(f"cloud-stubs: error: {' '.join(message.split())}", markup=False)
    raise typer.Exit(2)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn the stub's, the certificate tooling's and OS errors into one-line exits."""
    try:
        yield
    except (CloudStubError, CertsError) as exc:
        fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")


def emit(as_json: bool, data: Any, human: Callable[[], object]) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        human()


def print_kv(data: dict[str, Any]) -> None:
    """Print a flat mapping as aligned ``key  value`` lines."""
    width = max(len(k) for k in data)
    for k, v in data.items():
        out_console.print(f"{k.ljust(width)}  {v}", markup=False)
