"""The one exception type the certs package raises for bad input."""

import functools
from pathlib import Path


class CertsError(Exception):
    """A certificate, key, CSR or signature problem, optionally tied to a file.

    ``str(error)`` is always a single line: ``"<path>: <message>"`` when a path is known,
    otherwise just the message.

    Attributes:
        message: What is wrong, without the file name.
        path: The file the problem is about, if any.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.message = " ".join(message.split())
        self.path = path
        super().__init__(self.message)

    def __reduce__(self) -> tuple[functools.partial["CertsError"], tuple[str]]:
        return functools.partial(type(self), path=self.path), (self.message,)

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        return f"{self.path}: {self.message}"
