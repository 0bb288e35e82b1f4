"""Errors a caller can act on. Each names what was wrong and what is allowed."""

from __future__ import annotations


class OutpaintError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRequest(OutpaintError, ValueError):
    """A request field is missing, of the wrong type or out of range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidImage(InvalidRequest):
    """The source image cannot be decoded, is of a format we do not accept, or is too large."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__("image", message)
        self.too_large = too_large


class ModelError(OutpaintError):
    """A model folder is missing, incomplete or was exported by an incompatible version."""


class BackendUnavailable(OutpaintError):
    """A backend cannot run here: a package, a driver or a GPU is missing."""


class Cancelled(OutpaintError):
    """The caller stopped the denoising loop before it finished."""
