"""The handler interface: what the model manager needs from a loaded model.

A handler turns a model folder (an unpacked artifact) into a :class:`LoadedModel`. The manager
calls :meth:`LoadedModel.invoke` from a worker thread, never on the event loop, and calls
:meth:`LoadedModel.close` once when the model is unloaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Prediction:
    """One inference answer: the encoded body, its content type, and optional custom attributes."""

    body: bytes
    content_type: str
    custom_attributes: str | None = None


class LoadedModel(ABC):
    """A model in memory, ready to serve requests from several threads."""

    #: short name of the handler that loaded it (``sklearn``, ``xgboost``, ``inference.py``...)
    handler_name: str = ""
    #: calls it serves at once (None: as many as threads call it; 1: it serialises its calls)
    concurrency: int | None = None
    #: whether :meth:`snapshot` can save it (its handler has a faster form to read back)
    snapshot_capable: bool = False
    #: whether it was read back from a load snapshot rather than from its artifact
    restored: bool = False

    @abstractmethod
    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> Prediction:
        """Decode ``body``, run inference, encode the answer for ``accept``.

        Raises :class:`~modelfleet.errors.UnsupportedContentTypeError` for a content type or
        accept it cannot serve and :class:`~modelfleet.errors.ModelInvocationError` when the
        model's code fails.
        """

    def size_bytes(self) -> int | None:
        """The handler's own estimate of the model's memory footprint, if it has one."""
        return None

    def snapshot(self) -> bytes | None:
        """The model as its handler's ``load_snapshot`` reads it back faster than the artifact
        (see :mod:`modelfleet.handlers.snapshot`), or None where the handler has no such form."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the model holds (called once, at unload)."""
