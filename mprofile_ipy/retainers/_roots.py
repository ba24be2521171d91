"""The roots a user recognises, in the order the search prefers them.

A root is a reference the user can name and act on: a name in the user namespace, an
output-history entry, a module global, the last exception kept by ``sys``, a local
variable of a running function. Everything else is reached from these through the
object graph. Roots are collected fresh for each request and dropped with it.

Enumeration reads dicts with ``dict.items`` on real ``dict`` objects only, compares by
identity only, and never calls ``__getattr__``, ``__eq__`` or ``__hash__`` of user objects.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._layout import module_dict

# Root kinds, as values users can compare against (also the `root_kind` of a Chain).
USER_NS = "user_ns"
OUTPUT_HISTORY = "output_history"
MODULE_GLOBAL = "module_global"
CLOSURE = "closure"
DEFAULT_ARGUMENT = "default_argument"
CLASS_ATTRIBUTE = "class_attribute"
EXCEPTION = "exception"
THREAD_FRAME = "thread_frame"
UNREACHABLE_CYCLE = "unreachable_cycle"
HELD_FROM_C = "held_from_c"

ROOT_KINDS = (USER_NS, OUTPUT_HISTORY, MODULE_GLOBAL, CLOSURE, DEFAULT_ARGUMENT,
              CLASS_ATTRIBUTE, EXCEPTION, THREAD_FRAME, UNREACHABLE_CYCLE, HELD_FROM_C)

_HISTORY_NAME = re.compile(r"_{1,3}|_\d+")
_INPUT_NAME = re.compile(r"_i{1,3}|_i\d+")
_EXCEPTION_GLOBALS = ("last_exc", "last_value", "last_traceback", "last_type")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cleared_with_kind(ref: RootRef) -> bool:
    """True for the roots that a kind-wide command removes (``%reset -f out`` for output
    history, resetting ``sys.last_*`` for exceptions); IPython's own copies
    (``get_ipython()....``) need their own command."""
    return not (ref.expr or "").startswith("get_ipython()")


@dataclass(frozen=True)
class RootRef:
    """How one root entry is named: its kind, display name and an expression for commands.

    ``expr`` evaluates to the root object in the user's namespace (``df``, ``Out[12]``,
    ``mymod.CACHE``), or is None when no such expression exists (a thread's local).
    """

    kind: str
    name: str
    expr: str | None
    priority: int


class Context:
    """Where the roots are: the IPython shell (if any), its user namespace, the modules."""

    def __init__(self, user_ns: dict | None) -> None:
        self.shell = _current_shell()
        if user_ns is None:
            if self.shell is not None:
                user_ns = self.shell.user_ns
            else:
                main = sys.modules.get("__main__")
                user_ns = module_dict(main) or {}
        if type(user_ns) is not dict:
            raise TypeError(f"user_ns must be a dict, not {type(user_ns).__name__}")
        if self.shell is not None and self.shell.user_ns is not user_ns:
            self.shell = None  # a namespace of its own: no output history to speak of
        self.user_ns = user_ns
        self.hidden: dict = {}
        self.output_hist: dict = {}
        if self.shell is not None:
            hidden = getattr(self.shell, "user_ns_hidden", None)
            self.hidden = hidden if type(hidden) is dict else {}
            manager = getattr(self.shell, "history_manager", None)
            hist = getattr(manager, "output_hist", None)
            self.output_hist = hist if type(hist) is dict else {}
        self.module_names = self._module_names()
        self._entries: list[tuple[Any, RootRef]] | None = None

    @property
    def ipython(self) -> bool:
        """True when commands can be IPython magics (``%xdel``, ``%reset``)."""
        return self.shell is not None

    def _module_names(self) -> dict[int, str]:
        """id(module) -> the name the user has for it in the namespace, if any."""
        names: dict[int, str] = {}
        for name, value in list(self.user_ns.items()):
            if type(name) is str and issubclass(type(value), types.ModuleType):
                names.setdefault(id(value), name)
        return names

    def module_expr(self, module_name: str, module: Any) -> str:
        """An expression for a module in commands: the user's alias, or the import."""
        alias = self.module_names.get(id(module))
        if alias is not None:
            return alias
        return f"sys.modules[{module_name!r}]"

    def entries(self) -> list[tuple[Any, RootRef]]:
        """Every root entry, sorted by priority; computed once per request."""
        if self._entries is None:
            self._entries = sorted(self.iter_roots(), key=lambda entry: entry[1].priority)
        return self._entries

    def release(self) -> None:
        """Drop the references to the roots (the end of a request)."""
        self._entries = None

    def iter_roots(self) -> Iterator[tuple[Any, RootRef]]:
        """Every root entry, most recognisable first (priority order)."""
        yield from self._user_roots()
        yield from self._history_roots()
        yield from self._module_roots()
        yield from self._frame_roots()
        yield from self._hidden_roots()

    def containers(self) -> list:
        """Namespaces whose entries are roots themselves: the search does not walk through
        them, so a chain never runs through, e.g., a function's ``__globals__`` back into
        the user namespace, and a root left out of a later pass stays left out."""
        out: list = [self.user_ns, self.hidden, self.output_hist, sys.modules]
        for module in list(sys.modules.values()):
            namespace = module_dict(module)
            if namespace is not None:
                out.append(namespace)
        if self.shell is not None:
            manager = getattr(self.shell, "history_manager", None)
            for name in ("output_hist_reprs", "outputs"):
                namespace = getattr(manager, name, None)
                if isinstance(namespace, dict):
                    out.append(namespace)
            for holder in (getattr(self.shell, "displayhook", None),
                           getattr(self.shell, "InteractiveTB", None),
                           getattr(self.shell, "last_execution_result", None)):
                if holder is None:
                    continue
                # the object itself: on 3.13 its attributes are inline values, which
                # gc.get_referents gives without going through a __dict__
                out.append(holder)
                namespace = getattr(holder, "__dict__", None)
                if type(namespace) is dict:
                    out.append(namespace)
        return out

    # -- the user namespace and the output history --------------------------------------

    def _is_hidden(self, name: str, value: Any) -> bool:
        if name in ("__builtins__", "__builtin__"):
            return True
        return name in self.hidden and self.hidden[name] is value

    def _user_roots(self) -> Iterator[tuple[Any, RootRef]]:
        for name, value in list(self.user_ns.items()):
            if type(name) is not str or name in ("__builtins__", "__builtin__"):
                continue
            if self.shell is not None and (
                _HISTORY_NAME.fullmatch(name) or _INPUT_NAME.fullmatch(name)
                or self._is_hidden(name, value)
                or value is self.output_hist
            ):
                continue
            yield value, RootRef(USER_NS, name, name, 0)

    def _history_roots(self) -> Iterator[tuple[Any, RootRef]]:
        if self.shell is None:
            return
        for key, value in list(self.output_hist.items()):
            yield value, RootRef(OUTPUT_HISTORY, f"Out[{key!r}]", f"Out[{key!r}]", 1)
        for name, value in list(self.user_ns.items()):
            if type(name) is str and _HISTORY_NAME.fullmatch(name):
                yield value, RootRef(OUTPUT_HISTORY, name, name, 1)
        # IPython's hidden namespace keeps its own `_`, `__`, `___`, which `%reset -f out`
        # leaves in place
        for name, value in list(self.hidden.items()):
            if type(name) is str and _HISTORY_NAME.fullmatch(name):
                # `%reset -f out` deletes the numbered ones (`_12`) but not `_`, `__`, `___`
                expr = None if name[1:].isdigit() else f"get_ipython().user_ns_hidden[{name!r}]"
                yield value, RootRef(OUTPUT_HISTORY, f"{name} (IPython's hidden namespace)",
                                     expr, 1)
        # IPython also keeps the text of every displayed output (its repr), out of `Out`
        manager = getattr(self.shell, "history_manager", None)
        reprs = getattr(manager, "output_hist_reprs", None)
        if type(reprs) is dict:
            for key, value in list(reprs.items()):
                expr = f"get_ipython().history_manager.output_hist_reprs[{key!r}]"
                yield value, RootRef(OUTPUT_HISTORY, f"the text of Out[{key!r}]", expr, 1)
        outputs = getattr(manager, "outputs", None)
        if isinstance(outputs, dict):
            for key, value in list(dict.items(outputs)):
                expr = f"get_ipython().history_manager.outputs[{key!r}]"
                yield value, RootRef(OUTPUT_HISTORY, f"the display data of Out[{key!r}]",
                                     expr, 1)
        hook = getattr(self.shell, "displayhook", None)
        for name in ("_", "__", "___"):
            value = getattr(hook, name, None)
            yield value, RootRef(OUTPUT_HISTORY, f"{name} (the display hook)", name, 1)
        formatter = getattr(self.shell, "InteractiveTB", None)
        if formatter is not None:  # IPython's traceback printer keeps the last one for %debug
            yield (getattr(formatter, "tb", None),
                   RootRef(EXCEPTION, "the traceback IPython keeps for %debug",
                           "get_ipython().InteractiveTB.tb", 2))
        last = getattr(self.shell, "last_execution_result", None)
        if last is not None:
            yield (getattr(last, "result", None),
                   RootRef(OUTPUT_HISTORY, "the last cell's result", None, 1))
            yield (getattr(last, "error_in_exec", None),
                   RootRef(EXCEPTION, "the last cell's error", None, 1))

    def _hidden_roots(self) -> Iterator[tuple[Any, RootRef]]:
        if self.shell is None:
            return
        for name, value in list(self.user_ns.items()):
            if type(name) is not str or _HISTORY_NAME.fullmatch(name):
                continue
            if self._is_hidden(name, value) or _INPUT_NAME.fullmatch(name):
                yield value, RootRef(USER_NS, name, name, 5)
        for name, value in list(self.hidden.items()):
            if type(name) is str and not _HISTORY_NAME.fullmatch(name):
                yield value, RootRef(USER_NS, f"{name} (IPython's hidden namespace)", None, 5)

    # -- modules, sys.last_*, threads ---------------------------------------------------

    def _module_roots(self) -> Iterator[tuple[Any, RootRef]]:
        modules = sys.modules
        later: list[tuple[Any, RootRef]] = []
        for modname, module in list(modules.items()):
            if type(modname) is not str:
                continue
            namespace = module_dict(module)
            if namespace is None:
                yield module, RootRef(MODULE_GLOBAL, f"sys.modules[{modname!r}]",
                                      f"sys.modules[{modname!r}]", 2)
                continue
            if namespace is self.user_ns:
                continue
            for name, value in list(namespace.items()):
                if type(name) is not str or name == "__builtins__":
                    continue
                if modname == "sys" and name in _EXCEPTION_GLOBALS:
                    yield value, RootRef(EXCEPTION, f"sys.{name}", f"sys.{name}", 1)
                    continue
                ref = RootRef(MODULE_GLOBAL, f"{modname}.{name}",
                              f"{self.module_expr(modname, module)}.{name}", 2)
                if name.startswith("__"):
                    later.append((value, RootRef(ref.kind, ref.name, ref.expr, 4)))
                else:
                    yield value, ref
            yield module, RootRef(MODULE_GLOBAL, modname, self.module_expr(modname, module), 3)
        yield from later

    def _frame_roots(self) -> Iterator[tuple[Any, RootRef]]:
        # Other threads only: the calling thread's stack is the request itself (a cell, the
        # magic). On 3.10-3.12 reading f_locals stores a snapshot dict on the frame, which
        # keeps those locals referenced until that function returns (3.13 has a proxy).
        names = {t.ident: t.name for t in threading.enumerate()}
        current = threading.get_ident()
        for ident, frame in list(sys._current_frames().items()):
            if ident == current:
                continue
            thread = names.get(ident, str(ident))
            while frame is not None:
                code = frame.f_code
                if not code.co_filename.startswith(_PACKAGE_DIR) and code.co_name != "<module>":
                    local_vars = frame.f_locals
                    if type(local_vars) is dict or type(local_vars).__name__ == "FrameLocalsProxy":
                        for name, value in list(local_vars.items()):
                            yield value, RootRef(
                                THREAD_FRAME,
                                f"thread {thread!r}: {_code_name(code)}() local {name!r}", None, 6)
                frame = frame.f_back
            del frame


def _current_shell() -> Any:
    """The running IPython shell, without importing IPython when it is not loaded."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None) if ipython is not None else None
    if get is None:
        return None
    try:
        shell = get()
    except Exception:  # noqa: BLE001 - a broken IPython is no shell
        return None
    if shell is None or type(getattr(shell, "user_ns", None)) is not dict:
        return None
    return shell


def _code_name(code: types.CodeType) -> str:
    return str(getattr(code, "co_qualname", code.co_name))
