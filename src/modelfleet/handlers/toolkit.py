"""The SageMaker inference toolkit contract: ``code/inference.py`` in the artifact.

The module may define ``model_fn(model_dir)``, ``input_fn(data, content_type)``,
``predict_fn(data, model)`` and ``output_fn(prediction, accept)``, or ``transform_fn(model, data,
content_type, accept)`` alone (with any of the other three it is an error, as in the toolkit), and
optionally ``pre_model_fn(model_dir)`` and ``model_warmup_fn(model_dir, model)``. As in the
toolkit's ``Transformer``:

* ``model_dir`` is the artifact root (the folder holding ``code/``), as a ``str``;
* a ``text/csv`` or ``application/json`` body reaches ``input_fn`` as ``str``, other bodies as
  ``bytes``; ``content_type`` and ``accept`` are the request's header values as sent;
* a missing ``Accept`` or ``*/*`` becomes ``application/json`` before ``output_fn`` sees it;
* missing ``input_fn``/``predict_fn``/``output_fn`` are the defaults of the framework whose
  container would serve the model: chosen from what ``model_fn`` returned, or by
  ``MODELFLEET_FRAMEWORK`` (:mod:`.script_defaults`);
* ``output_fn``/``transform_fn`` return the body (``bytes`` or ``str``), or a ``(body,
  content_type)`` tuple; a bare body is answered with the accept type;
* a function whose signature has one parameter more than the call gets a ``context``
  (:mod:`.context`), which carries the request's custom attributes and can set the response's.

Differences, on purpose: ``model_fn`` is required, and ``predict_fn`` (or ``transform_fn``) where
the framework has no default, at load time, where the toolkit fails at the first request; calls into
one model's code are serialized, as a toolkit worker serves one request at a time, unless
``inference.py`` sets ``MODELFLEET_THREAD_SAFE = True``. The module and its helpers are imported in
a private namespace (:mod:`.isolation`). Whatever the model's code raises, ``SystemExit``
(``sys.exit()``) and ``KeyboardInterrupt`` included, fails the load
(:class:`~modelfleet.errors.ModelLoadError`) or the request
(:class:`~modelfleet.errors.ModelInvocationError`), never the server.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from modelfleet.errors import ModelError, ModelInvocationError, ModelLoadError
from modelfleet.handlers import codecs, script_defaults
from modelfleet.handlers.arraymodel import first_line
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.handlers.context import RequestContext
from modelfleet.handlers.detect import INFERENCE_PY
from modelfleet.handlers.isolation import ModelNamespace

logger = logging.getLogger(__name__)

_ENTRY_MODULE = "inference"
_THREAD_SAFE_FLAG = "MODELFLEET_THREAD_SAFE"
#: the per-model requirements file of the SageMaker framework containers, in ``code/``
REQUIREMENTS = "requirements.txt"
_INSTALL_HINT = (
    "install them in the server's environment, or start the server with --model-requirements "
    "install (each such model then gets an environment of its own: docs/handlers.md)"
)


@dataclass(frozen=True)
class HandlerFunction:
    """A user (or default) function and whether it takes the extra ``context`` argument."""

    name: str
    func: Callable[..., Any]
    takes_context: bool

    @classmethod
    def wrap(cls, name: str, func: Callable[..., Any], arity: int) -> HandlerFunction:
        """Check the signature like the toolkit: ``arity`` or ``arity + 1`` parameters."""
        try:
            count = len(inspect.signature(func).parameters)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"inference.py {name} has no readable signature: {exc}") from exc
        if count not in (arity, arity + 1):
            raise ModelLoadError(
                f"inference.py {name} takes {count} arguments; expected {arity} "
                f"(or {arity + 1} with a context)"
            )
        return cls(name, func, count == arity + 1)

    def __call__(self, context: RequestContext | None, *args: Any) -> Any:
        if self.takes_context:
            return self.func(*args, context)
        return self.func(*args)


def _status_of(exc: BaseException) -> int:
    """A toolkit error's ``status_code`` (``BaseInferenceToolkitError``), else 500."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and 400 <= status <= 599 else 500


def _user_function(module: ModuleType, name: str) -> Callable[..., Any] | None:
    func = getattr(module, name, None)
    if func is not None and not callable(func):
        raise ModelLoadError(f"inference.py {name} is a {type(func).__name__}, not a function")
    return func


@dataclass(frozen=True)
class Functions:
    """The handler functions of one ``inference.py``: its own, then the defaults filled in
    (:meth:`complete`) once ``model_fn`` has said which framework's they are."""

    model_fn: HandlerFunction
    transform_fn: HandlerFunction | None
    input_fn: HandlerFunction | None
    predict_fn: HandlerFunction | None
    output_fn: HandlerFunction | None
    pre_model_fn: HandlerFunction | None
    model_warmup_fn: HandlerFunction | None
    framework: str | None = None  # whose defaults fill the gaps (script_defaults)

    @classmethod
    def resolve(cls, module: ModuleType) -> Functions:
        """Read and check the functions ``module`` defines."""
        found = {
            name: _user_function(module, name)
            for name in (
                "model_fn",
                "transform_fn",
                "input_fn",
                "predict_fn",
                "output_fn",
                "pre_model_fn",
                "model_warmup_fn",
            )
        }
        if found["transform_fn"] and (
            found["input_fn"] or found["predict_fn"] or found["output_fn"]
        ):
            raise ModelLoadError(
                "inference.py cannot define transform_fn together with input_fn, predict_fn "
                "and/or output_fn"
            )
        model_fn = found["model_fn"]
        if model_fn is None:
            raise ModelLoadError("inference.py must define model_fn(model_dir)")

        def optional(name: str, arity: int) -> HandlerFunction | None:
            func = found[name]
            return None if func is None else HandlerFunction.wrap(name, func, arity)

        return cls(
            model_fn=HandlerFunction.wrap("model_fn", model_fn, 1),
            transform_fn=optional("transform_fn", 4),
            input_fn=optional("input_fn", 2),
            predict_fn=optional("predict_fn", 2),
            output_fn=optional("output_fn", 2),
            pre_model_fn=optional("pre_model_fn", 1),
            model_warmup_fn=optional("model_warmup_fn", 2),
        )

    def complete(self, model: Any, setting: object) -> Functions:
        """The functions with ``model``'s framework defaults where ``inference.py`` has none
        (``setting``: its ``MODELFLEET_FRAMEWORK``, if any)."""
        framework = script_defaults.chosen(setting) or script_defaults.framework_of(model)
        if self.transform_fn is not None:
            return replace(self, framework=framework)
        chosen = script_defaults.defaults(framework)
        if self.predict_fn is None and chosen.predict_fn is None:
            raise ModelLoadError(
                "inference.py must define predict_fn(data, model) or transform_fn(model, data, "
                f"content_type, accept): model_fn returned a {type(model).__name__}, which has "
                "no default predict_fn (scikit-learn estimators, torch.nn.Module and XGBoost "
                f"Booster have one; {script_defaults.SETTING} chooses)"
            )

        def default(name: str, func: Callable[..., Any] | None) -> HandlerFunction | None:
            return None if func is None else HandlerFunction(f"default {name}", func, False)

        return replace(
            self,
            input_fn=self.input_fn or default("input_fn", chosen.input_fn),
            predict_fn=self.predict_fn or default("predict_fn", chosen.predict_fn),
            output_fn=self.output_fn or default("output_fn", chosen.output_fn),
            framework=framework,
        )

    def any_takes_context(self) -> bool:
        return any(
            function is not None and function.takes_context
            for function in (self.transform_fn, self.input_fn, self.predict_fn, self.output_fn)
        )


def _run(function: HandlerFunction, context: RequestContext | None, *args: Any) -> Any:
    """Call user code at invocation time, turning its failures into ``ModelInvocationError``:
    any ``BaseException``, so that ``sys.exit()`` fails the request, not the server."""
    try:
        return function(context, *args)
    except ModelError:
        raise
    except BaseException as exc:
        logger.debug("inference.py %s raised", function.name, exc_info=True)
        raise ModelInvocationError(
            f"inference.py {function.name} failed: {type(exc).__name__}: {first_line(exc)}",
            original_status_code=_status_of(exc),
        ) from exc


def _body_of(result: Any) -> bytes:
    if isinstance(result, bytes):
        return result
    if isinstance(result, bytearray | memoryview):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    try:
        return codecs.encode_json(result)
    except (TypeError, ValueError) as exc:
        raise ModelInvocationError(
            f"inference.py returned {type(result).__name__}, which is neither bytes nor str "
            "and does not encode as JSON"
        ) from exc


class ToolkitModel(LoadedModel):
    """A model served by its own ``code/inference.py``."""

    handler_name = INFERENCE_PY

    def __init__(
        self,
        model_id: str,
        model_dir: Path,
        namespace: ModelNamespace,
        functions: Functions,
        model: Any,
        *,
        thread_safe: bool,
    ) -> None:
        self.model_id = model_id
        self.model_dir = model_dir
        self.namespace = namespace
        self.functions = functions
        self.model: Any = model
        self._wants_context = functions.any_takes_context()
        self._lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if thread_safe else threading.Lock()
        )
        self.concurrency = None if thread_safe else 1

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> Prediction:
        if not accept or codecs.media_type(accept) == codecs.ANY:
            accept = codecs.DEFAULT_ACCEPT
        data: bytes | str = body
        if content_type and codecs.media_type(content_type) in codecs.UTF8_TYPES:
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise codecs.bad_payload(codecs.media_type(content_type), exc) from exc
        context = None
        if self._wants_context:
            context = RequestContext(
                self.model_id,
                self.model_dir,
                content_type=content_type,
                accept=accept,
                custom_attributes=custom_attributes,
            )
        functions = self.functions
        transform_fn, predict_fn = functions.transform_fn, functions.predict_fn
        with self._lock:
            if transform_fn is not None:
                result = _run(transform_fn, context, self.model, data, content_type, accept)
            elif predict_fn and functions.input_fn and functions.output_fn:
                decoded = _run(functions.input_fn, context, data, content_type)
                prediction = _run(predict_fn, context, decoded, self.model)
                result = _run(functions.output_fn, context, prediction, accept)
            else:  # pragma: no cover - Functions.complete fills them or refuses the model
                raise ModelInvocationError("inference.py has neither predict_fn nor transform_fn")
        answered = accept.split(",", 1)[0].strip()
        if isinstance(result, tuple) and len(result) == 2:
            result, answered = result[0], str(result[1])
        attributes = context.response_custom_attributes() if context is not None else None
        return Prediction(
            body=_body_of(result), content_type=answered, custom_attributes=attributes
        )

    def close(self) -> None:
        self.model = None
        self.namespace.close()


def _requirements_hint(namespace: ModelNamespace, exc: BaseException) -> str:
    """What to say about a module ``exc`` says is missing (nothing for other errors)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return ""
    missing = exc.name
    if missing.partition(".")[0] in namespace.top_level:
        return (
            f" (a pickle refers to the module '{missing}' of code/, which is private to"
            " the model: see 'Isolation between models' in docs/handlers.md)"
        )
    top = missing.partition(".")[0]
    requirements = namespace.code_dir / REQUIREMENTS
    if requirements.is_file():
        return (
            f" (the module '{top}' is not installed where this server runs; the model's "
            f"code/{REQUIREMENTS} lists its requirements, which SageMaker's multi-model "
            f"containers and this server (by default) do not install: {_INSTALL_HINT})"
        )
    return (
        f" (the module '{top}' is not installed where this server runs, and the model has no "
        f"code/{REQUIREMENTS}: install it in the server's environment)"
    )


def _load_call(
    namespace: ModelNamespace, function: HandlerFunction, context: RequestContext, *args: Any
) -> Any:
    try:
        return function(context, *args)
    except ModelError:
        raise
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the model's failure
        hint = _requirements_hint(namespace, exc)
        key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
        if isinstance(key, str) and key.partition(".")[0] in namespace.top_level:
            hint = (
                f" (a pickle refers to the module '{key}' of code/, which is private"
                " to the model: see 'Isolation between models' in docs/handlers.md)"
            )
        raise ModelLoadError(
            f"inference.py {function.name} failed: {type(exc).__name__}: {first_line(exc)}{hint}"
        ) from exc


def _import_entry(namespace: ModelNamespace) -> ModuleType:
    try:
        return namespace.import_module(_ENTRY_MODULE)
    except BaseException as exc:  # an import that calls sys.exit() fails the load only
        raise ModelLoadError(
            f"Could not import code/inference.py: {type(exc).__name__}: {first_line(exc)}"
            f"{_requirements_hint(namespace, exc)}"
        ) from exc


def load(model_dir: Path, *, model_id: str) -> ToolkitModel:
    """Import ``code/inference.py`` in its own namespace and run ``model_fn``."""
    code_dir = model_dir / "code"
    if not (code_dir / "inference.py").is_file():
        raise ModelLoadError(f"{model_dir.name} has no code/inference.py")
    namespace = ModelNamespace(code_dir, model_id)
    namespace.open()
    try:
        module = _import_entry(namespace)
        functions = Functions.resolve(module)
        context = RequestContext(model_id, model_dir)
        root = str(model_dir)
        if functions.pre_model_fn is not None:
            _load_call(namespace, functions.pre_model_fn, context, root)
        model = _load_call(namespace, functions.model_fn, context, root)
        functions = functions.complete(model, getattr(module, script_defaults.SETTING, None))
        if functions.model_warmup_fn is not None:
            _load_call(namespace, functions.model_warmup_fn, context, root, model)
        thread_safe = getattr(module, _THREAD_SAFE_FLAG, False) is True
    except BaseException:
        namespace.close()
        raise
    logger.debug(
        "Loaded inference.py model %s (namespace %s, %s defaults)",
        model_id,
        namespace.package,
        functions.framework,
    )
    return ToolkitModel(model_id, model_dir, namespace, functions, model, thread_safe=thread_safe)
