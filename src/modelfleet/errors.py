"""modelfleet's exception hierarchy.

Every error the serving path raises derives from :class:`ModelfleetError`. The classes carry
domain meaning only; the HTTP edges (``endpoint/app.py`` and ``instance/app.py``) hold the one
table that maps them to status codes and SageMaker error bodies. Nothing here imports a web
framework.

::

    ModelfleetError
    ├── ValidationError                 the request is wrong (SageMaker ValidationError, 400)
    │   ├── InvalidTargetModelError     target model malformed or escaping the source
    │   ├── ModelNotFoundError          target model not in the model source
    │   ├── PayloadTooLargeError        body over the configured limit
    │   ├── UnknownEndpointError        no endpoint of that name
    │   ├── ModelTooLargeError          a model that can never fit in the memory budget
    │   ├── ResourceInUseError          control plane: in use, or the name is taken
    │   ├── ResourceNotFoundError       control plane: no such resource (ResourceNotFound)
    │   ├── ResourceLimitExceededError  control plane: past a limit (ResourceLimitExceeded)
    │   ├── ObjectNotFoundError         autoscaling: no such target or policy
    │   ├── UnknownOperationError       control plane: no such operation
    │   └── SerializationError          control plane: the body is not the JSON expected
    ├── ModelError                      the model's own code or files failed (424)
    │   ├── ArtifactError               corrupt or unsafe artifact
    │   ├── ModelLoadError              the model could not be loaded
    │   │   └── MissingExtraError       the framework package is not installed
    │   ├── UnsupportedContentTypeError content type or accept the handler cannot serve
    │   ├── ModelInvocationError        inference raised
    │   └── InstanceEndedError          the model's code ended the instance serving it
    ├── ModelNotReadyError              still downloading/loading at the invoke timeout (429)
    ├── CapacityError                   an instance cannot take the model right now (507)
    │   ├── OutOfMemoryError            memory full of models in use
    │   └── DiskFullError               disk cache full of pinned artifacts
    ├── ModelNotLoadedError             instance contract: no such loaded model (404)
    ├── ModelAlreadyLoadedError         instance contract: model already loaded (409)
    ├── SourceError                     the model source failed (timeouts, access denied)
    ├── CacheInUseError                 the disk cache folder is held by another live server
    └── ServiceUnavailableError         nothing can take the request now (503)
        └── RequestDroppedError         an instance got the request and never answered
"""

from __future__ import annotations


class ModelfleetError(Exception):
    """Base class of every modelfleet error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(ModelfleetError):
    """The request is invalid; retrying it unchanged will fail again."""


class InvalidTargetModelError(ValidationError):
    """The target model name is malformed or points outside the model source."""


class ModelNotFoundError(ValidationError):
    """The target model does not exist in the model source."""

    def __init__(self, target_model: str, source: str = "") -> None:
        where = f" in model source {source}" if source else " in the model source"
        super().__init__(f"Could not find model '{target_model}'{where}.")
        self.target_model = target_model


class PayloadTooLargeError(ValidationError):
    """The request body is larger than the configured limit."""


class UnknownEndpointError(ValidationError):
    """No endpoint of that name is served here."""


class ModelTooLargeError(ValidationError):
    """A model needs more memory than the instance's whole memory budget."""


class ResourceInUseError(ValidationError):
    """Control plane: the resource is in use, or one of that name exists (ResourceInUse)."""


class ResourceNotFoundError(ValidationError):
    """Control plane: the resource does not exist, where the service says ResourceNotFound
    (most Describe calls say ValidationException instead)."""


class ResourceLimitExceededError(ValidationError):
    """Control plane: the call would go past a limit (ResourceLimitExceeded)."""


class ObjectNotFoundError(ValidationError):
    """Application Auto Scaling: no such scalable target or policy (ObjectNotFoundException)."""


class UnknownOperationError(ValidationError):
    """Control plane: the X-Amz-Target names no operation served here."""


class SerializationError(ValidationError):
    """Control plane: the body is not the JSON object expected."""


class ModelError(ModelfleetError):
    """The model (its files or its code) failed.

    ``original_status_code`` and ``original_message`` are what SageMaker reports as the
    container's own answer (``OriginalStatusCode``/``OriginalMessage`` in a ModelError).
    """

    original_status_code = 500

    def __init__(self, message: str, *, original_status_code: int | None = None) -> None:
        super().__init__(message)
        if original_status_code is not None:
            self.original_status_code = original_status_code


class ArtifactError(ModelError):
    """The artifact is corrupt, unsafe (path traversal, links, devices) or over a limit."""


class ModelLoadError(ModelError):
    """The model files could not be turned into a loaded model."""

    def __init__(self, message: str, *, archives: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        # archives found in a folder artifact: each a target model of its own
        self.archives = archives


class MissingExtraError(ModelLoadError):
    """A framework package needed by the model is not installed."""

    def __init__(self, framework: str, extra: str) -> None:
        super().__init__(
            f"The {framework} handler needs the '{extra}' extra: pip install 'modelfleet[{extra}]'"
        )
        self.framework = framework
        self.extra = extra


class UnsupportedContentTypeError(ModelError):
    """The handler cannot decode this content type or encode this accept type."""

    original_status_code = 415


class ModelInvocationError(ModelError):
    """Inference raised an exception inside the model's code."""


class InstanceEndedError(ModelError):
    """The instance process serving the request ended by its own hand while holding it (a
    non-zero exit status, as from ``os._exit``, or a crash signal): the request is the likely
    cause, so the router does not try it on another instance."""


class ModelNotReadyError(ModelfleetError):
    """The model is still downloading or loading; the work continues in the background."""


class CapacityError(ModelfleetError):
    """An instance has no room for this model right now (HTTP 507 on the instance)."""


class OutOfMemoryError(CapacityError):
    """The memory budget is held by models in use and nothing can be evicted."""


class DiskFullError(CapacityError):
    """The disk cache is held by pinned artifacts and nothing can be deleted."""


class ModelNotLoadedError(ModelfleetError):
    """Instance contract: the named model is not loaded."""

    def __init__(self, model_name: str) -> None:
        super().__init__(f"Model '{model_name}' is not loaded.")
        self.model_name = model_name


class NoModelStatsError(ModelfleetError):
    """Admin API: no invocation of the model was counted here (404)."""


class ModelUrlNotFoundError(ModelfleetError):
    """Instance contract: LoadModel's url does not exist (404, as the inference toolkit's model
    server answers)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"Model url '{url}' does not exist on this instance.")
        self.url = url


class ModelAlreadyLoadedError(ModelfleetError):
    """Instance contract: the named model is already loaded."""

    def __init__(self, model_name: str) -> None:
        super().__init__(f"Model '{model_name}' is already loaded.")
        self.model_name = model_name


class CacheInUseError(ModelfleetError):
    """Start-up: another live server holds the disk cache folder (the message names it)."""


class SourceError(ModelfleetError):
    """The model source failed: unreachable, timed out, or access denied."""


class ServiceUnavailableError(ModelfleetError):
    """No instance can take the request now; the client should retry later."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestDroppedError(ServiceUnavailableError):
    """An instance received the request and ended, or went silent, without answering: the
    router tries it once more on another instance (inference is idempotent), never more."""
