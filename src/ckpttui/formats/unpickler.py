"""A restricted unpickler that never imports or calls anything a checkpoint names.

Checkpoints are pickles written by strangers: unpickling one with the standard `pickle` module runs
whatever callables it names (``posix.system`` included). This unpickler resolves every global to a
stand-in instead:

* plain data constructors (``collections.OrderedDict``, ``builtins.set``, ``_codecs.encode``) are
  replaced by our own safe equivalents;
* torch's rebuild functions (``torch._utils._rebuild_tensor_v2`` and friends), storage types, dtypes,
  ``torch.Size`` and ``torch.device`` are replaced by functions that build `TensorRef` records;
* every other global becomes an inert `OpaqueObject` subclass named after it. Calling it, building it
  or setting state on it only records the arguments. Its name is reported in ``unsafe_globals``.

Nothing here imports torch, numpy or any module a pickle names.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from ckpttui.records import shape_numel

# Element sizes by torch dtype name. Sub-byte integer types are stored one per byte.
ELEMENT_SIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "bits8": 1,
    "bits16": 2,
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
    **{f"int{i}": 1 for i in range(1, 8)},
    **{f"uint{i}": 1 for i in range(1, 8)},
}

# torch.<X>Storage class name -> dtype name (the typed storages torch.save still names).
STORAGE_DTYPE: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
    "TypedStorage": "uint8",
}

# Globals that are plain data or torch's own rebuild machinery (torch's weights_only allowlist,
# plus the numpy array/scalar reconstructors that rng states use, plus DCP's metadata records).
_SAFE_PREFIXES = (
    "torch._utils._rebuild_",
    "torch.distributed.checkpoint.metadata.",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.distributed.checkpoint._nested_dict",
)
_SAFE_NAMES = {
    "collections.OrderedDict",
    "collections.Counter",
    "collections.defaultdict",
    "collections.deque",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.complex",
    "builtins.slice",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bytes",
    "builtins.bool",
    "builtins.object",
    "_codecs.encode",
    "copyreg._reconstructor",
    "torch.Size",
    "torch.device",
    "torch.Tensor",
    "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout",
    "torch._tensor._rebuild_from_type_v2",
    "torch.storage.UntypedStorage",
    "torch.storage.TypedStorage",
    "torch.strided",
    "torch.sparse_coo",
    "torch.sparse_csr",
    "torch._mkldnn",
    "torch.contiguous_format",
    "torch.preserve_format",
    "torch.channels_last",
    "torch.channels_last_3d",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
    "pathlib.WindowsPath",
    "pathlib.PureWindowsPath",
    "pathlib._local.PosixPath",
    "pathlib._local.PurePosixPath",
}


def is_safe_global(qualname: str) -> bool:
    """Whether a global is plain data or torch rebuild machinery (and so not worth a warning)."""
    if qualname in _SAFE_NAMES or qualname.startswith(_SAFE_PREFIXES):
        return True
    module, _, name = qualname.rpartition(".")
    if module == "torch" and (name.endswith("Storage") or name in ELEMENT_SIZE):
        return True
    if module.startswith("numpy.dtypes"):
        return True
    return module in ("torch", "torch.cuda") and name.endswith("Tensor")


# Modules whose callables run code or touch the system; a pickle naming them is an attack.
_DANGEROUS_MODULES = {
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pty",
    "webbrowser",
    "code",
    "codeop",
    "pickle",
    "_pickle",
    "marshal",
    "ctypes",
    "builtins.eval",
    "multiprocessing",
    "asyncio",
    "threading",
    "signal",
    "pdb",
    "timeit",
    "commands",
    "platform",
    "tempfile",
    "glob",
    "io",
    "zipimport",
    "types",
    "functools",
    "operator",
    "pydoc",
    "shelve",
    "dill",
    "joblib",
    "cloudpickle",
    "imp",
    "ensurepip",
    "pip",
    "venv",
    "urllib",
    "http",
    "ftplib",
    "smtplib",
    "telnetlib",
    "xmlrpc",
    "gc",
    "inspect",
    "atexit",
    "sysconfig",
    "site",
    "distutils",
    "setuptools",
    "pkgutil",
    "bdb",
    "trace",
    "profile",
    "cProfile",
    "doctest",
    "unittest",
    "idlelib",
    "tkinter",
    "turtle",
    "numpy.lib.npyio",
}
_DANGEROUS_NAMES = {
    "torch.load",
    "torch.serialization.load",
    "torch.hub.load",
    "numpy.load",
    "torch.storage._load_from_bytes",
    "torch.jit.load",
    "torch._C._jit_compile",
    "yaml.load",
    "yaml.unsafe_load",
    "torch.ops.load_library",
    "numpy.testing._private.utils.runstring",
    "torch.utils.cpp_extension.load",
}
_DANGEROUS_BUILTINS = {
    "eval",
    "exec",
    "compile",
    "open",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
    "apply",
    "execfile",
    "file",
    "reload",
}


def is_dangerous_global(qualname: str) -> bool:
    """Whether a global is one that attacks use to run code (os.system, builtins.eval...)."""
    module, _, name = qualname.rpartition(".")
    if qualname in _DANGEROUS_NAMES or module.startswith(
        ("torch.hub", "torch.utils.cpp_extension")
    ):
        return True
    if module in ("builtins", "__builtin__"):
        return name in _DANGEROUS_BUILTINS
    return module.split(".")[0] in _DANGEROUS_MODULES or module in _DANGEROUS_MODULES


class UnpickleError(Exception):
    """A pickle could not be read; the message says where (readers re-raise it as FormatError)."""


@dataclass(frozen=True)
class StorageRef:
    """A storage named by a persistent id: the bytes live elsewhere in the file."""

    key: str
    dtype: str
    nbytes: int
    location: str = "cpu"


@dataclass(eq=False)
class TensorRef:
    """A tensor the pickle would rebuild, described by its storage, offset, shape and stride."""

    storage: StorageRef | None
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    storage_offset: int = 0
    is_parameter: bool = False
    requires_grad: bool = False
    kind: str = "dense"

    @property
    def numel(self) -> int:
        """Number of elements."""
        return shape_numel(self.shape)

    @property
    def nbytes(self) -> int:
        """numel x element size."""
        return self.numel * ELEMENT_SIZE.get(self.dtype, 1)


class OpaqueObject:
    """An object of a class the unpickler refused to import; it keeps what the pickle gave it."""

    __qualname_full__ = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]
    list_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> OpaqueObject:
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", {})
        object.__setattr__(self, "list_items", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Record an APPEND on an object of an unknown list-like class."""
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        """Record an APPENDS on an object of an unknown list-like class."""
        self.list_items.extend(values)

    def __setattr__(self, name: str, value: Any) -> None:
        # BUILD with a slot-state dict ends here; keep it in state rather than on the object.
        if not isinstance(self.state, dict):
            object.__setattr__(self, "state", {})
        self.state[name] = value

    def fields(self) -> dict[str, Any]:
        """Attribute-like values: the BUILD state if it is a dict, or the slot part of a pair."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<{self.__qualname_full__}>"


class TorchConst(str):
    """A torch constant named by the pickle (``torch.float32``, ``torch.strided``), kept as its name."""


class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPE.get(name, "uint8")
        self.untyped = name in ("UntypedStorage", "TypedStorage")


@dataclass
class NumpyArray:
    """A numpy array or scalar held inline in the pickle (rng states); its bytes are not tensors."""

    dtype: Any = None
    shape: tuple[int, ...] = ()
    value: Any = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 5:
            self.shape = tuple(state[1]) if isinstance(state[1], tuple) else ()
            self.dtype = state[2]


class NumpyDType:
    """Stand-in for ``numpy.dtype``: keeps the type string (``f8``, ``<u4``)."""

    def __init__(self, code: Any = "", *_: Any) -> None:
        self.code = str(code)
        self.byteorder = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
            self.byteorder = "<" if state[1] in ("<", "|", "=") else ">"

    def __str__(self) -> str:
        return self.code


_SCALAR_FORMATS = {
    "f8": "d",
    "f4": "f",
    "f2": "e",
    "i8": "q",
    "i4": "i",
    "i2": "h",
    "i1": "b",
    "u8": "Q",
    "u4": "I",
    "u2": "H",
    "u1": "B",
    "b1": "?",
}


def _numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    """Decode a numpy scalar's value from its raw bytes when the dtype is a plain number."""
    code = str(getattr(dtype, "code", dtype))
    order = getattr(dtype, "byteorder", "<")
    fmt = _SCALAR_FORMATS.get(code)
    if fmt and isinstance(data, (bytes, bytearray)) and len(data) == struct.calcsize(fmt):
        return struct.unpack(order + fmt, data)[0]
    return NumpyArray(dtype=dtype, value=data)


def _numpy_reconstruct(
    _cls: Any = None, shape: Any = (0,), dtype: Any = b"b", *_: Any
) -> NumpyArray:
    return NumpyArray(shape=tuple(shape) if isinstance(shape, tuple) else ())


def _codecs_encode(obj: Any, encoding: str = "utf-8", *_: Any) -> bytes:
    if not isinstance(obj, str):
        raise UnpickleError("_codecs.encode called on a non-string")
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnpickleError(f"_codecs.encode with encoding {encoding!r} refused")
    return obj.encode(encoding)


def _size(*args: Any) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def _device(*args: Any) -> TorchConst:
    return TorchConst(":".join(str(a) for a in args) if args else "cpu")


def _tensor_from(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    dtype: str | None = None,
    requires_grad: Any = False,
) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise UnpickleError("tensor rebuilt from something that is not a storage")
    shape = tuple(int(d) for d in size) if isinstance(size, (tuple, list)) else ()
    strides = tuple(int(s) for s in stride) if isinstance(stride, (tuple, list)) else None
    return TensorRef(
        storage=storage,
        dtype=dtype or storage.dtype,
        shape=shape,
        stride=strides,
        storage_offset=int(offset) if isinstance(offset, int) else 0,
        requires_grad=bool(requires_grad),
    )


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    return _tensor_from(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    *_: Any,
    **__: Any,
) -> TensorRef:
    return _tensor_from(storage, offset, size, stride, requires_grad=requires_grad)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    _hooks: Any = None,
    dtype: Any = None,
    *_: Any,
    **__: Any,
) -> TensorRef:
    name = str(dtype).removeprefix("torch.") if dtype is not None else None
    return _tensor_from(storage, offset, size, stride, name, requires_grad)


def _rebuild_qtensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    ref = _tensor_from(storage, offset, size, stride)
    ref.kind = "quantized"
    return ref


def _rebuild_parameter(data: Any, requires_grad: Any = True, *_: Any) -> Any:
    if isinstance(data, TensorRef):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


def _rebuild_meta(dtype: Any, size: Any, *_: Any) -> TensorRef:
    shape = tuple(size) if isinstance(size, (tuple, list)) else ()
    return TensorRef(
        storage=None, dtype=str(dtype).removeprefix("torch."), shape=shape, kind="meta"
    )


def _rebuild_from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any = None) -> Any:
    if callable(func) and isinstance(args, tuple) and func in _TENSOR_FUNCS:
        return func(*args)
    return OpaqueObject("torch._tensor._rebuild_from_type_v2")


def _parameter(data: Any = None, requires_grad: Any = True) -> Any:
    return _rebuild_parameter(data, requires_grad)


_TENSOR_FUNCS: set[Callable[..., Any]] = {
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_qtensor,
}

_BUILTINS: dict[str, Any] = {
    "set": set,
    "frozenset": frozenset,
    "bytearray": bytearray,
    "complex": complex,
    "slice": slice,
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "int": int,
    "float": float,
    "str": str,
    "bytes": bytes,
    "bool": bool,
}

_IMPLEMENTED: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,
    "collections.deque": collections.deque,
    "_codecs.encode": _codecs_encode,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._utils._rebuild_meta_tensor_no_storage": _rebuild_meta,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.Size": _size,
    "torch.device": _device,
    "torch.serialization._get_layout": lambda name="torch.strided": TorchConst(str(name)),
    "numpy.core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy._core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.dtype": NumpyDType,
}


def _defaultdict(factory: Any = None, *_: Any) -> collections.defaultdict[Any, Any]:
    # The factory is never kept: a default_factory could be any callable the pickle named.
    return collections.defaultdict(None)


_IMPLEMENTED["collections.defaultdict"] = _defaultdict


@dataclass
class UnpickleResult:
    """What one pickle held, and the globals it named."""

    data: Any
    globals: set[str] = field(default_factory=set)

    @property
    def unsafe_globals(self) -> list[str]:
        """Globals that are not plain data or torch rebuild machinery, sorted."""
        return sorted(g for g in self.globals if not is_safe_global(g))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` hands out stand-ins only (see the module docstring)."""

    def __init__(self, file: IO[bytes], persistent: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self.seen: set[str] = set()
        self._stubs: dict[str, type] = {}
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":
            module = "builtins"
        qualname = f"{module}.{name}"
        self.seen.add(qualname)
        if qualname in _IMPLEMENTED:
            return _IMPLEMENTED[qualname]
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if qualname.startswith(("torch._utils._rebuild_", "torch._utils._rebuild_device")):
            return self._stub(qualname)
        if module in ("torch", "torch.storage", "torch.cuda") and name.endswith("Storage"):
            return StorageType(name)
        if module == "torch" and (name in ELEMENT_SIZE or is_safe_global(qualname)):
            return TorchConst(qualname)
        return self._stub(qualname)

    def _stub(self, qualname: str) -> type:
        stub = self._stubs.get(qualname)
        if stub is None:
            stub = type(
                qualname.rpartition(".")[2] or "Opaque",
                (OpaqueObject,),
                {"__qualname_full__": qualname, "__module__": "ckpttui.opaque"},
            )
            self._stubs[qualname] = stub
        return stub

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnpickleError("persistent id in a pickle that should have none")
        return self._persistent(pid)


def storage_from_pid(pid: Any) -> StorageRef:
    """Turn torch's ``('storage', type, key, location, numel, ...)`` persistent id into a record."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise UnpickleError(f"unexpected persistent id {str(pid)[:60]}")
    stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    if not isinstance(stype, StorageType) or not isinstance(numel, int) or numel < 0:
        raise UnpickleError(f"malformed storage persistent id for key {key!r}")
    elsize = 1 if stype.untyped else ELEMENT_SIZE.get(stype.dtype, 1)
    return StorageRef(
        key=str(key), dtype=stype.dtype, nbytes=numel * elsize, location=str(location)
    )


def restricted_load(
    data: bytes | IO[bytes], persistent: Callable[[Any], Any] | None = None
) -> UnpickleResult:
    """Unpickle without importing or calling anything the pickle names."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    unpickler = RestrictedUnpickler(stream, persistent)
    try:
        obj = unpickler.load()
    except UnpickleError as exc:
        raise UnpickleError(f"{exc} (pickle byte {_tell(stream)})") from None
    except RecursionError:
        raise UnpickleError("pickle nests too deeply") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        MemoryError,
        UnicodeDecodeError,
    ) as exc:
        reason = "pickle ends early" if isinstance(exc, EOFError) else f"bad pickle: {exc}"
        raise UnpickleError(f"{reason} (pickle byte {_tell(stream)})") from None
    return UnpickleResult(data=obj, globals=unpickler.seen)


def _tell(stream: IO[bytes]) -> int:
    try:
        return stream.tell()
    except (OSError, ValueError):
        return -1


def iter_tensors(obj: Any, max_depth: int = 200) -> list[tuple[tuple[str, ...], TensorRef]]:
    """Every tensor reachable from an unpickled object, with its path of keys, in pickle order."""
    found: list[tuple[tuple[str, ...], TensorRef]] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), obj)]
    on_path: set[int] = set()
    # Depth-first with an explicit stack; `on_path` guards against self-referencing pickles.
    while stack:
        path, node = stack.pop()
        if isinstance(node, TensorRef):
            found.append((path, node))
            continue
        if len(path) > max_depth:
            continue
        children: list[tuple[str, Any]]
        if isinstance(node, dict):
            children = [(str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(node)]
        elif isinstance(node, OpaqueObject):
            children = list(node.fields().items()) + [(str(k), v) for k, v in node.items.items()]
            children += [(str(i), v) for i, v in enumerate(node.list_items)]
            if not children:
                children = [(f"arg{i}", v) for i, v in enumerate(node.args)]
        else:
            continue
        if id(node) in on_path:
            continue
        on_path.add(id(node))
        stack.extend((path + (key,), child) for key, child in reversed(children))
    return found
