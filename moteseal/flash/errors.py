"""The flash tools' one error (``moteseal.flash.build``, ``board``, ``features``)."""

from __future__ import annotations

from device.errors import LocalError

__all__ = ["FlashError"]


class FlashError(LocalError):
    """A build or deploy step failed; the message says which and why.
    ``exit_code`` is what the CLI exits with: 1 a failure (compile,
    verification), 2 bad input, 3 a security refusal (wrong device)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
