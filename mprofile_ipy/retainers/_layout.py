"""Where a Python object lives inside its memory block, per CPython version.

The sampler records the address the allocator returned. For most objects that is not
``id(obj)``: a GC-tracked object has its ``PyGC_Head`` in front of it, and on 3.11+ a type
with a managed ``__dict__`` (3.12+: or managed weak references) keeps two more pointers in
front. This mirrors CPython's ``_PyType_PreHeaderSize`` (``Include/internal/pycore_object.h``):

- 3.10: ``GC * sizeof(PyGC_Head)``
- 3.11: ``GC * sizeof(PyGC_Head) + MANAGED_DICT * 2 * sizeof(PyObject *)``
- 3.12, 3.13: ``GC * sizeof(PyGC_Head) + (MANAGED_DICT | MANAGED_WEAKREF) * 2 * sizeof(PyObject *)``
  (3.13 free-threaded builds have no ``PyGC_Head`` in front of the object)

It also reads, without running any Python code, the pointers of the separate buffers some
containers own (a list's item array, a dict's keys and values, a set's table, a
bytearray's bytes, an ndarray's data), so that a sampled block that is such a buffer can
be tied to the object that owns it.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import sysconfig
import types
from typing import Any

POINTER_SIZE = struct.calcsize("P")
#: sizeof(PyGC_Head): two uintptr_t on 3.10-3.13 (0 when the GIL is disabled on 3.13).
GC_HEAD_SIZE = 0 if sysconfig.get_config_var("Py_GIL_DISABLED") else 2 * POINTER_SIZE

_TPFLAGS_HAVE_GC = 1 << 14
_TPFLAGS_HEAPTYPE = 1 << 9
_TPFLAGS_MANAGED_WEAKREF = 1 << 3  # 3.12+
_TPFLAGS_MANAGED_DICT = 1 << 4  # 3.11+

if sys.version_info >= (3, 12):
    _PREHEADER_FLAGS = _TPFLAGS_MANAGED_DICT | _TPFLAGS_MANAGED_WEAKREF
elif sys.version_info >= (3, 11):
    _PREHEADER_FLAGS = _TPFLAGS_MANAGED_DICT
else:
    _PREHEADER_FLAGS = 0

#: Every pre-header size an object can have on this interpreter.
PREHEADER_SIZES = tuple(sorted({0, GC_HEAD_SIZE, 2 * POINTER_SIZE,
                                 GC_HEAD_SIZE + 2 * POINTER_SIZE}))

# Safe accessors: C descriptors taken from the builtin types themselves, so that reading a
# class's flags, name or dict never runs a metaclass's __getattribute__.
_type_flags = type.__dict__["__flags__"].__get__
_type_qualname = type.__dict__["__qualname__"].__get__
_type_module = type.__dict__["__module__"].__get__
_type_dict = type.__dict__["__dict__"].__get__
_type_mro = type.__dict__["__mro__"].__get__
_module_dict = types.ModuleType.__dict__["__dict__"].__get__


def preheader_size(tp: type) -> int:
    """Bytes between the start of an instance's memory block and ``id(instance)``."""
    flags = _type_flags(tp)
    size = GC_HEAD_SIZE if flags & _TPFLAGS_HAVE_GC else 0
    if flags & _PREHEADER_FLAGS:
        size += 2 * POINTER_SIZE
    return size


def block_address(obj: object) -> int:
    """The address of the memory block that holds ``obj`` (for heap-allocated objects)."""
    return id(obj) - preheader_size(type(obj))


def is_heap_type(tp: type) -> bool:
    """True for classes created at run time (``class`` statements), False for C types."""
    return bool(_type_flags(tp) & _TPFLAGS_HEAPTYPE)


def type_name(tp: type) -> str:
    """``tp.__qualname__`` read without running a metaclass's code."""
    try:
        return str(_type_qualname(tp))
    except Exception:  # noqa: BLE001 - a broken class still gets a name
        return "?"


def type_module(tp: type) -> str:
    """``tp.__module__`` read without running a metaclass's code ('' when unknown)."""
    try:
        module = _type_module(tp)
    except Exception:  # noqa: BLE001
        return ""
    return module if type(module) is str else ""


def full_type_name(tp: type) -> str:
    """``module.QualName`` for classes outside builtins, else the qualified name."""
    module = type_module(tp)
    name = type_name(tp)
    return name if module in ("builtins", "") else f"{module}.{name}"


def class_dict(tp: type) -> Any:
    """The class's own namespace (a mappingproxy), read safely."""
    return _type_dict(tp)


def class_mro(tp: type) -> tuple:
    """The class's MRO, read safely."""
    try:
        return tuple(_type_mro(tp))
    except Exception:  # noqa: BLE001
        return (tp,)


def module_dict(module: Any) -> dict | None:
    """A module's ``__dict__`` through the C descriptor (a module subclass cannot lie);
    None for objects that only look like modules (cffi's ``Lib``)."""
    try:
        namespace = _module_dict(module)
    except TypeError:
        return None
    return namespace if type(namespace) is dict else None


# --------------------------------------------------------------------------------------------
# Buffers owned by containers (layouts identical on 64-bit CPython 3.10-3.13 with the GIL)

_P = POINTER_SIZE
_LIST_OB_ITEM = 3 * _P  # PyObject_VAR_HEAD, then PyObject **ob_item
_DICT_MA_KEYS = 4 * _P  # ob_refcnt, ob_type, ma_used, ma_version_tag, then ma_keys, ma_values
_DICT_MA_VALUES = 5 * _P
_SET_TABLE = 5 * _P  # ob_refcnt, ob_type, fill, used, mask, then setentry *table
_SET_SMALLTABLE = 8 * _P  # ... table, hash, finger, then setentry smalltable[8]
_BYTEARRAY_OB_BYTES = 4 * _P  # PyObject_VAR_HEAD, ob_alloc, then char *ob_bytes
_LAYOUT_OK = POINTER_SIZE == 8 and not GC_HEAD_SIZE == 0


def _read_pointer(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def buffer_pointers(obj: object) -> list[tuple[int, str]]:
    """``(address, what)`` of the separate memory buffers ``obj`` owns, read from its C
    struct (no Python code runs). Empty for objects without such buffers or on layouts
    this module does not know."""
    if not _LAYOUT_OK:
        return []
    tp = type(obj)
    base = id(obj)
    out: list[tuple[int, str]] = []
    if issubclass(tp, list):
        pointer = _read_pointer(base + _LIST_OB_ITEM)
        if pointer:
            out.append((pointer, "item array"))
    elif issubclass(tp, dict):
        keys = _read_pointer(base + _DICT_MA_KEYS)
        if keys:
            out.append((keys, "hash table (keys)"))
        values = _read_pointer(base + _DICT_MA_VALUES)
        if values:
            out.append((values, "values array"))
    elif issubclass(tp, (set, frozenset)):
        table = _read_pointer(base + _SET_TABLE)
        if table and table != base + _SET_SMALLTABLE:
            out.append((table, "hash table"))
    elif issubclass(tp, bytearray):
        pointer = _read_pointer(base + _BYTEARRAY_OB_BYTES)
        if pointer:
            out.append((pointer, "byte buffer"))
    return out


# --------------------------------------------------------------------------------------------
# NumPy, only when it is already imported (never imported here)


def numpy_ndarray() -> type | None:
    """``numpy.ndarray`` when NumPy is already imported, else None."""
    numpy = sys.modules.get("numpy")
    tp = getattr(numpy, "ndarray", None) if numpy is not None else None
    return tp if isinstance(tp, type) else None


class NumpyAccess:
    """C descriptors of ``numpy.ndarray``: base, data pointer, flags, dtype, shape, flat.

    Reading through the base class's descriptors means an ndarray subclass that overrides
    ``base`` or ``__array_interface__`` with a property cannot run code here.
    """

    def __init__(self, ndarray: type) -> None:
        d = class_dict(ndarray)
        self.ndarray = ndarray
        self._base = d["base"].__get__
        self._interface = d["__array_interface__"].__get__
        self._flags = d["flags"].__get__
        self._dtype = d["dtype"].__get__
        self._shape = d["shape"].__get__
        self._flat = d["flat"].__get__

    def base(self, arr: Any) -> Any:
        """``arr.base`` (the array or object whose memory ``arr`` uses), or None."""
        return self._base(arr)

    def data_pointer(self, arr: Any) -> int:
        """Address of the first element of ``arr``'s data."""
        return int(self._interface(arr)["data"][0] or 0)

    def owns_data(self, arr: Any) -> bool:
        """True when ``arr`` allocated its data itself (``OWNDATA``)."""
        return bool(self._flags(arr).owndata)

    def is_object_array(self, arr: Any) -> bool:
        """True for ``dtype=object`` arrays, whose elements are Python references."""
        return self._dtype(arr).kind == "O"

    def elements(self, arr: Any) -> list:
        """The elements of an object array (references to Python objects)."""
        return list(self._flat(arr))

    def describe(self, arr: Any) -> str:
        """``float64 (1000, 10)``: dtype and shape."""
        try:
            return f"{self._dtype(arr)} {tuple(self._shape(arr))}"
        except Exception:  # noqa: BLE001
            return ""
