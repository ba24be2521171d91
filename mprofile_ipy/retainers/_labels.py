"""Name each step of a reference chain: which container, through which key or attribute.

A path of objects ``[root, o1, o2, ..., target]`` becomes a list of :class:`Step` values.
Internal containers are folded into the step that reads naturally: an instance's
``__dict__`` (``obj.attr``), a module's or a class's namespace (``mod.NAME``,
``Class.attr``), a function's closure tuple and cell (``<closure 'data'>``) or its
defaults tuple (``<default 'acc'>``).

Only identity comparisons are used to find keys: dicts are iterated with ``dict.items``,
sequences with the base type's iterator, attributes are read through C descriptors
(instance ``__dict__``, ``__slots__``, and the C attributes of NumPy and pandas types).
No ``__eq__``, ``__hash__``, ``__repr__``, property or ``__getattr__`` of a user object runs.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

from ._layout import (
    class_dict,
    class_mro,
    module_dict,
    type_module,
    type_name,
)

# The C attributes of these libraries' types may be read (Cython `cdef public` fields).
_TRUSTED_MODULES = ("numpy", "pandas")
_MAX_KEY_REPR = 60


@dataclass(frozen=True)
class Step:
    """One reference of a chain: ``container_type`` holds the next object through ``label``.

    ``kind`` is one of ``attr`` (``.name``), ``key`` (``['k']``), ``index`` (``[3]``),
    ``closure``, ``default``, ``local``, ``dict_key``, ``element``, ``base``, ``buffer``,
    ``class`` or ``internal`` (a reference from C that has no name). ``code`` is True when
    ``label`` is valid Python after an expression for the container (``.x``, ``['k']``).
    ``obj_type`` is the type of the object the step reaches.
    """

    kind: str
    label: str
    container_type: str
    obj_type: str
    code: bool = False

    def __str__(self) -> str:
        return f"{self.container_type}{self.label}"


def safe_repr(key: Any) -> str | None:
    """repr of str/int/float/bytes/bool/None keys (and tuples of them); None otherwise.

    Exact types only: a subclass could override ``__repr__``.
    """
    tp = type(key)
    if key is None or tp is bool or tp is int or tp is float:
        return repr(key)
    if tp is str:
        text = repr(key)
        return text if len(text) <= _MAX_KEY_REPR else text[: _MAX_KEY_REPR - 4] + "...'"
    if tp is bytes:
        return repr(key) if len(key) <= _MAX_KEY_REPR // 2 else None
    if tp is tuple:
        parts = [safe_repr(item) for item in tuple.__iter__(key)]
        if any(part is None for part in parts):
            return None
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"  # type: ignore[arg-type]
    return None


def _key_step(key: Any, container: str, obj: str) -> Step:
    text = safe_repr(key)
    if text is None:
        return Step("key", f"[<{type_name(type(key))} key>]", container, obj)
    return Step("key", f"[{text}]", container, obj, code=True)


def _find_in_dict(mapping: dict, child: Any) -> tuple[str, Any] | None:
    for key, value in dict.items(mapping):
        if value is child:
            return "value", key
    for key in dict.keys(mapping):
        if key is child:
            return "key", key
    return None


def _find_in_sequence(seq: Any, child: Any, iterator: Any) -> int | None:
    for i, item in enumerate(iterator(seq)):
        if item is child:
            return i
    return None


def _instance_dict(obj: Any) -> dict | None:
    """``obj.__dict__`` through the C descriptor of its class (never a user property)."""
    for klass in class_mro(type(obj)):
        desc = class_dict(klass).get("__dict__")
        if desc is None:
            continue
        if type(desc) is types.GetSetDescriptorType:
            try:
                value = desc.__get__(obj, type(obj))
            except Exception:  # noqa: BLE001
                return None
            return value if isinstance(value, dict) else None
        return None
    return None


def _c_attributes(obj: Any) -> Any:
    """``(name, value)`` of slots and trusted C attributes of ``obj``."""
    for klass in class_mro(type(obj)):
        trusted = type_module(klass).split(".")[0] in _TRUSTED_MODULES
        for name, desc in list(class_dict(klass).items()):
            tdesc = type(desc)
            if tdesc is types.MemberDescriptorType or (
                trusted and tdesc is types.GetSetDescriptorType
            ):
                try:
                    yield name, desc.__get__(obj, type(obj))
                except Exception:  # noqa: BLE001 - an unset slot
                    continue


def _attr_in(obj: Any, child: Any) -> str | None:
    d = _instance_dict(obj)
    if d is not None:
        found = _find_in_dict(d, child)
        if found is not None and found[0] == "value" and type(found[1]) is str:
            return found[1]
    for name, value in _c_attributes(obj):
        if value is child:
            return name
    return None


def _tname(obj: Any) -> str:
    return type_name(type(obj))


def _function_label(func: Any) -> str:
    return f"{getattr(func, '__qualname__', '?')}()"


def _frame_label(frame: Any) -> str:
    code = frame.f_code
    return f"frame of {getattr(code, 'co_qualname', code.co_name)}()"


def _locals_of(frame: Any) -> Any:
    local_vars = frame.f_locals
    if type(local_vars) is dict:
        return dict.items(local_vars)
    if type(local_vars).__name__ == "FrameLocalsProxy":
        return list(local_vars.items())
    return []


def label_path(path: list, numpy: Any) -> list[Step]:
    """Steps from ``path[0]`` (a root) to ``path[-1]``."""
    steps: list[Step] = []
    i = 0
    while i < len(path) - 1:
        step, used = _label_at(path, i, numpy)
        steps.append(step)
        i += used
    return steps


def _label_at(path: list, i: int, numpy: Any) -> tuple[Step, int]:
    """The step that starts at ``path[i]`` and how many references it folds (>= 1)."""
    parent, child = path[i], path[i + 1]
    after = path[i + 2] if i + 2 < len(path) else None
    ptype = type(parent)
    pname = _tname(parent)

    def final(j: int) -> str:
        return _tname(path[j])

    if issubclass(ptype, dict):
        found = _find_in_dict(parent, child)
        if found is not None:
            if found[0] == "value":
                return _key_step(found[1], pname, final(i + 1)), 1
            return Step("dict_key", ".<key>", pname, final(i + 1)), 1
    elif issubclass(ptype, (list, tuple)):
        iterator = list.__iter__ if issubclass(ptype, list) else tuple.__iter__
        index = _find_in_sequence(parent, child, iterator)
        if index is not None:
            return Step("index", f"[{index}]", pname, final(i + 1), code=True), 1
    elif issubclass(ptype, (set, frozenset)):
        return Step("element", ".<element>", pname, final(i + 1)), 1
    elif issubclass(ptype, types.ModuleType):
        namespace = module_dict(parent)
        if child is namespace and after is not None:
            found = _find_in_dict(namespace, after)
            if found is not None and found[0] == "value" and type(found[1]) is str:
                modname = namespace.get("__name__")
                return Step("attr", f".{found[1]}", f"module {modname}",
                            final(i + 2), code=True), 2
    elif issubclass(ptype, type):
        namespace = class_dict(parent)
        if after is not None and child is _underlying(namespace):
            found = _find_in_dict(child, after)
            if found is not None and found[0] == "value" and type(found[1]) is str:
                return Step("attr", f".{found[1]}", f"class {type_name(parent)}",
                            final(i + 2), code=True), 2
        for name in ("__bases__", "__mro__"):
            if any(base is child for base in type.__dict__[name].__get__(parent)):
                return Step("attr", f".{name}", f"class {type_name(parent)}", final(i + 1)), 1
    elif ptype is types.FunctionType:
        step = _function_step(parent, child, after, path, i)
        if step is not None:
            return step
    elif ptype is types.CellType:
        return Step("attr", ".cell_contents", "cell", final(i + 1), code=True), 1
    elif ptype is types.MethodType:
        name = "__self__" if parent.__self__ is child else "__func__"
        return Step("attr", f".{name}", "method", final(i + 1), code=True), 1
    elif ptype is types.FrameType:
        step = _frame_step(parent, child, after, path, i)
        if step is not None:
            return step
    elif ptype is types.TracebackType:
        name = "tb_frame" if parent.tb_frame is child else "tb_next"
        return Step("attr", f".{name}", "traceback", final(i + 1), code=True), 1
    elif issubclass(ptype, BaseException):
        for name in ("__traceback__", "__context__", "__cause__", "args"):
            value = BaseException.__dict__[name].__get__(parent)
            if value is child:
                return Step("attr", f".{name}", pname, final(i + 1), code=True), 1
    elif numpy is not None and issubclass(ptype, numpy.ndarray):
        if numpy.base(parent) is child:
            return Step("base", ".base", pname, final(i + 1), code=True), 1
        return Step("element", ".<element>", pname, final(i + 1)), 1
    elif ptype in (types.GeneratorType, types.CoroutineType):
        return Step("attr", ".<frame>", pname, final(i + 1)), 1
    return _object_step(parent, child, after)


def _underlying(proxy: Any) -> Any:
    """The dict behind a class's mappingproxy (what gc.get_referents(cls) gives)."""
    import gc

    refs = gc.get_referents(proxy)
    return refs[0] if refs else None


def _object_step(parent: Any, child: Any, after: Any) -> tuple[Step, int]:
    pname = _tname(parent)
    if child is type(parent):
        return Step("class", ".__class__", pname, _tname(child), code=True), 1
    namespace = _instance_dict(parent)
    if namespace is not None and child is namespace and after is not None:
        found = _find_in_dict(namespace, after)
        if found is not None and found[0] == "value" and type(found[1]) is str:
            return Step("attr", f".{found[1]}", pname, _tname(after), code=True), 2
    name = _attr_in(parent, child)
    if name is not None:
        return Step("attr", f".{name}", pname, _tname(child), code=True), 1
    return Step("internal", ".<C reference>", pname, _tname(child)), 1


def _function_step(func: Any, child: Any, after: Any, path: list,
                   i: int) -> tuple[Step, int] | None:
    fname = _function_label(func)
    code = func.__code__
    closure = func.__closure__
    if closure is not None and child is closure:
        if after is not None:
            for n, cell in enumerate(closure):
                if cell is after:
                    var = code.co_freevars[n] if n < len(code.co_freevars) else str(n)
                    obj_index = i + 3 if i + 3 < len(path) else i + 2
                    return (Step("closure", f".<closure {var!r}>", fname,
                                 _tname(path[obj_index])), obj_index - i)
    defaults = func.__defaults__
    if defaults is not None and child is defaults and after is not None:
        for n, value in enumerate(defaults):
            if value is after:
                names = code.co_varnames[: code.co_argcount]
                offset = len(names) - len(defaults)
                var = names[offset + n] if 0 <= offset + n < len(names) else str(n)
                return Step("default", f".<default {var!r}>", fname, _tname(after)), 2
    kwdefaults = func.__kwdefaults__
    if kwdefaults is not None and child is kwdefaults and after is not None:
        found = _find_in_dict(kwdefaults, after)
        if found is not None and found[0] == "value":
            return Step("default", f".<default {found[1]!r}>", fname, _tname(after)), 2
    if child is func.__globals__:
        if after is not None:
            found = _find_in_dict(child, after)
            if found is not None and found[0] == "value" and type(found[1]) is str:
                return Step("attr", f".__globals__[{found[1]!r}]", fname, _tname(after),
                            code=True), 2
        return Step("attr", ".__globals__", fname, _tname(child), code=True), 1
    namespace = _instance_dict(func)
    if namespace is not None and child is namespace and after is not None:
        found = _find_in_dict(namespace, after)
        if found is not None and found[0] == "value" and type(found[1]) is str:
            return Step("attr", f".{found[1]}", fname, _tname(after), code=True), 2
    for name in ("__code__", "__module__", "__name__", "__qualname__", "__doc__"):
        if getattr(func, name, None) is child:
            return Step("attr", f".{name}", fname, _tname(child), code=True), 1
    return None


def _frame_step(frame: Any, child: Any, after: Any, path: list,
                i: int) -> tuple[Step, int] | None:
    fname = _frame_label(frame)
    if frame.f_back is child:
        return Step("attr", ".f_back", fname, _tname(child)), 1
    for name, value in _locals_of(frame):
        if value is child:
            return Step("local", f".<local {name!r}>", fname, _tname(child)), 1
    if child is frame.f_globals:
        if after is not None:
            found = _find_in_dict(child, after)
            if found is not None and found[0] == "value" and type(found[1]) is str:
                return Step("attr", f".<global {found[1]!r}>", fname, _tname(after)), 2
        return Step("attr", ".f_globals", fname, _tname(child)), 1
    if type(child) is dict and after is not None:  # 3.10: the f_locals dict itself
        found = _find_in_dict(child, after)
        if found is not None and found[0] == "value":
            return Step("local", f".<local {found[1]!r}>", fname, _tname(after)), 2
    return None


def describe_object(obj: Any, numpy: Any) -> str:
    """A short, safe description: the type and, for a few builtins, a size or length."""
    tp = type(obj)
    name = type_name(tp)
    if numpy is not None and issubclass(tp, numpy.ndarray):
        return f"{name} {numpy.describe(obj)}".strip()
    if tp in (list, tuple, dict, set, frozenset):
        return f"{name} of {len(obj)} items"
    if tp in (bytes, bytearray, str):
        return f"{name} of length {len(obj)}"
    module = type_module(tp)
    return name if module in ("builtins", "") else f"{name} ({module})"
