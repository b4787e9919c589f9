"""A function call to bytes on the worker, and bytes back to values: cloudpickle, functions by value.

Airflow's Python-running decorators (``@task.virtualenv``, ``@task.docker``, ``@task.kubernetes``)
take ``serializer="pickle" | "cloudpickle" | "dill"`` for the arguments and ship the function as
source text. Here the function itself travels pickled, so a closure, a lambda or a function that
calls another one of its DAG file works remotely without the DAG file being there. That needs a
serializer that pickles functions by value: cloudpickle. ``pickle`` would send a DAG file's
function by reference (module and name) and ``dill`` pickles by reference every function of an
importable module, which a DAG file is on the worker; both are refused with that reason.

cloudpickle pickles a function by reference when its module can be imported, and on the worker the
DAG file's module can. The function's own module is therefore registered "by value" while the call
is pickled, unless it is installed (stdlib or site-packages): those the remote side imports as usual.

A pickled function is CPython bytecode: it loads only under the same Python major.minor. The
payload records the version it was made with; the worker checks the remote one before submitting
(``preflight``) and the bootstrap checks again before loading.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from airflow_hpc_provider.errors import JobSpecError, PayloadSerializationError, SerializerUnavailableError

# Airflow's names for serializers (the `serializer` argument of its Python decorators).
AIRFLOW_SERIALIZERS = ("pickle", "cloudpickle", "dill")
DEFAULT_SERIALIZER = "cloudpickle"
INSTALL_HINT = "pip install 'airflow-hpc-provider[cloudpickle]'"

_REFUSED = {
    "pickle": "pickle sends a function by reference (its module and name), and the module of a function "
    "defined in a DAG file does not exist remotely",
    "dill": "dill sends a function of an importable module by reference, and on the worker a DAG file is one; "
    "remotely it does not exist",
}


@dataclass(frozen=True, order=True)
class PythonVersion:
    """A CPython version; ``minor_text`` (``3.11``) is what must match for pickled bytecode to load."""

    major: int
    minor: int
    micro: int = 0

    @classmethod
    def current(cls) -> PythonVersion:
        return cls(*sys.version_info[:3])

    @classmethod
    def parse(cls, text: str) -> PythonVersion:
        parts = text.strip().split(".")
        if not 2 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
            raise ValueError(f"{text!r} is not a Python version (major.minor[.micro])")
        numbers = [int(part) for part in parts]
        return cls(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 0)

    @property
    def minor_text(self) -> str:
        return f"{self.major}.{self.minor}"

    def same_minor(self, other: PythonVersion) -> bool:
        return (self.major, self.minor) == (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"


@dataclass(frozen=True)
class Serializer:
    """The serializer as loaded on the worker: its Airflow name, its release, the module itself."""

    name: str
    version: str
    module: ModuleType

    def dumps(self, value: Any) -> bytes:
        data: bytes = self.module.dumps(value)
        return data

    def loads(self, data: bytes) -> Any:
        return self.module.loads(data)


def check_serializer_name(name: str) -> str:
    """The name, if a Python task can use it; else an error saying why (called at DAG parse time)."""
    if name not in AIRFLOW_SERIALIZERS:
        raise JobSpecError(
            f"Unsupported serializer {name!r}. Expected one of {', '.join(map(repr, AIRFLOW_SERIALIZERS))}"
        )
    if name in _REFUSED:
        raise JobSpecError(
            f"serializer={name!r} cannot ship a function to a cluster: {_REFUSED[name]}. Use 'cloudpickle'"
        )
    return name


def load_serializer(name: str = DEFAULT_SERIALIZER) -> Serializer:
    check_serializer_name(name)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        raise SerializerUnavailableError(
            f"Python tasks need {name} on the Airflow worker ({sys.executable}, Python {PythonVersion.current()}), "
            f"and it is not installed: {INSTALL_HINT}"
        ) from None
    return Serializer(name=name, version=str(getattr(module, "__version__", "unknown")), module=module)


@dataclass(frozen=True)
class SerializedCall:
    """The pickled call and what the remote side must match to load it."""

    data: bytes
    python: PythonVersion
    serializer: str
    serializer_version: str


def serialize_call(
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    serializer: Serializer | None = None,
) -> SerializedCall:
    """Pickle ``function(*args, **kwargs)`` as one payload, or say exactly what cannot be pickled."""
    chosen = serializer or load_serializer()
    positional, named = tuple(args), dict(kwargs or {})
    with _by_value(chosen, function):
        try:
            data = chosen.dumps({"function": function, "args": positional, "kwargs": named})
        except Exception as error:
            culprit, cause = _find_culprit(chosen, function, positional, named, error)
            hint = ""
            if culprit.startswith(("argument", "positional")) and "airflow." in culprit:
                hint = (
                    " (a live Airflow object: with render_template_as_native_obj=True a template like "
                    "'{{ ti }}' renders to one; pass the attributes you need, e.g. '{{ ti.run_id }}')"
                )
            raise PayloadSerializationError(
                f"cannot serialize {culprit} with {chosen.name}: {type(cause).__name__}: {cause}{hint}; "
                "nothing was submitted",
                culprit,
            ) from error
    return SerializedCall(
        data=data, python=PythonVersion.current(), serializer=chosen.name, serializer_version=chosen.version
    )


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _find_culprit(
    serializer: Serializer,
    function: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    error: Exception,
) -> tuple[str, Exception]:
    """Pickle each part alone: the first that fails is named (argument name or position, and type)."""
    name = getattr(function, "__qualname__", None) or repr(function)
    parts: list[tuple[str, Any]] = [(f"the function {name} ({_type_name(function)})", function)]
    parts += [(f"positional argument {index} ({_type_name(value)})", value) for index, value in enumerate(args)]
    parts += [(f"argument {key!r} ({_type_name(value)})", value) for key, value in kwargs.items()]
    for label, value in parts:
        try:
            serializer.dumps(value)
        except Exception as part_error:
            return label, part_error
    return "the call (each part alone pickles, together they do not)", error


def _installed(module: ModuleType) -> bool:
    """True for the stdlib, builtins and site-packages: modules the remote side imports by name."""
    if module.__name__ in sys.builtin_module_names:
        return True
    file = getattr(module, "__file__", None)
    if not file:
        return module.__name__ != "__main__" and not hasattr(module, "__path__")
    path = Path(file).resolve()
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return any(path.is_relative_to(Path(root).resolve()) for root in roots)


@contextmanager
def _by_value(serializer: Serializer, function: Callable[..., Any]) -> Iterator[None]:
    """While pickling, send the function's own module by value unless it is installed remotely too."""
    register = getattr(serializer.module, "register_pickle_by_value", None)
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    if register is None or module is None or module.__name__ == "__main__" or _installed(module):
        yield
        return
    registered: set[str] = getattr(serializer.module, "list_registry_pickle_by_value", set)()
    if module.__name__ in registered:
        yield
        return
    register(module)
    try:
        yield
    finally:
        serializer.module.unregister_pickle_by_value(module)
