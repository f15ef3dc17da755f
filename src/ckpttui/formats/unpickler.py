"""A restricted unpickler that never imports or calls anything a checkpoint names.

Checkpoints are pickles written by strangers: unpickling one with the standard `pickle` module runs
whatever callables it names (``posix.system`` included). This module is its own pickle machine,
written opcode by opcode after ``pickle.py`` (``_Unpickler``) and ``pickletools``, so that it can
judge every call a real unpickler would make and bound every cost:

* plain data constructors (``collections.OrderedDict``, ``builtins.set``, ``_codecs.encode``) are
  replaced by our own safe, size-checked equivalents;
* torch's rebuild functions (``torch._utils._rebuild_tensor_v2`` and friends), storage types, dtypes,
  ``torch.Size`` and ``torch.device`` are replaced by functions that build `TensorRef` records;
* every other global becomes an inert `OpaqueObject` subclass named after it.

What pickle would do with a global decides what is reported (the allowlist is modelled on torch's
own ``weights_only`` unpickler, torch/_weights_only_unpickler.py):

* a global outside the allowlist that the pickle *calls* (REDUCE, NEWOBJ with arguments, INST,
  OBJ, a ``__setstate__`` planted by BUILD, a callable handed to such a call, or the result of such
  a call called again: ``getattr``/``partial``/``methodcaller`` chains) goes to ``would_run``;
* a class that is only instantiated and filled (NEWOBJ without arguments then BUILD, or
  ``copyreg._reconstructor(cls, object, None)``) is only listed: loading it needs the class.

Every cost is bounded by the size of the pickle: memo, stack and mark depth, integer and string
sizes, work done by calls (copies), nesting depth and shared references of the result.
Nothing here imports torch, numpy or any module a pickle names.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


# Globals a pickle may call without running anything but data construction: plain data
# constructors, torch's rebuild machinery (torch/_weights_only_unpickler.py `_get_allowed_globals`
# and `_tensor_rebuild_functions`), numpy's array/scalar reconstructors (rng states), DCP's records.
ALLOWED_CALLS: set[str] = {
    "collections.OrderedDict",
    "collections.Counter",
    "collections.defaultdict",
    "collections.deque",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "builtins.bytes",
    "builtins.complex",
    "builtins.slice",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bool",
    "builtins.object",
    "_codecs.encode",
    "copyreg._reconstructor",
    "copyreg.__newobj__",
    "copyreg.__newobj_ex__",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter",
    "torch.Tensor",
    "torch.Size",
    "torch.device",
    "torch.serialization._get_layout",
    "torch.storage.UntypedStorage",
    "torch.storage.TypedStorage",
    "torch.torch_version.TorchVersion",
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
    "pathlib._local.WindowsPath",
    "pathlib._local.PureWindowsPath",
    "datetime.datetime",
    "datetime.date",
    "datetime.time",
    "datetime.timedelta",
    "datetime.timezone",
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
}

# Torch constants a pickle names without calling (dtypes, layouts, memory formats, qschemes).
_TORCH_CONSTANTS = {
    "strided",
    "sparse_coo",
    "sparse_csr",
    "sparse_csc",
    "sparse_bsr",
    "sparse_bsc",
    "_mkldnn",
    "contiguous_format",
    "preserve_format",
    "channels_last",
    "channels_last_3d",
    "per_tensor_affine",
    "per_channel_affine",
    "per_tensor_symmetric",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
}

# Calls real frameworks make when they pickle plain values (enum lookups such as
# ``IntervalStrategy('steps')``). The layouts, which know the frameworks, add their own names
# through `allow_data_calls`; a call to one of them is data, not code.
_DATA_CALLS: set[str] = set()


def allow_data_calls(names: set[str] | frozenset[str] | list[str]) -> None:
    """Declare framework classes whose calls only look up or build plain values (enums)."""
    _DATA_CALLS.update(names)


def is_safe_global(qualname: str) -> bool:
    """Whether a global is plain data or torch rebuild machinery (and so not worth a note)."""
    if qualname in ALLOWED_CALLS:
        return True
    module, _, name = qualname.rpartition(".")
    if module == "torch" and (
        name in ELEMENT_SIZE or name in _TORCH_CONSTANTS or name.endswith("Storage")
    ):
        return True
    if module == "torch.storage" and name.endswith("Storage"):
        return True
    if module in ("numpy.dtypes", "numpy._core.dtypes") and name.isidentifier():
        return True
    return module in ("torch", "torch.cuda") and name.endswith("Tensor") and name.isidentifier()


# Standard-library number types whose constructors only parse plain arguments (str, int, float).
_PLAIN_ARG_CALLS = {"fractions.Fraction", "decimal.Decimal"}


def is_call_allowed(qualname: str) -> bool:
    """Whether calling this global builds plain data only (allowlist or a layout's enum)."""
    return is_safe_global(qualname) or qualname in _DATA_CALLS


# Globals attacks name; a pickle that merely refers to one is reported even if it does not call it.
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "webbrowser", "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "multiprocessing",
    "asyncio", "threading", "signal", "pdb", "timeit", "commands", "platform", "tempfile", "glob",
    "io", "_io", "zipimport", "functools", "operator", "pydoc", "shelve", "dill",
    "joblib", "cloudpickle", "imp", "ensurepip", "pip", "venv", "urllib", "http", "ftplib",
    "smtplib", "telnetlib", "xmlrpc", "gc", "inspect", "atexit", "sysconfig", "site", "distutils",
    "setuptools", "pkgutil", "bdb", "trace", "profile", "cProfile", "doctest", "unittest",
    "idlelib", "tkinter", "turtle", "_posixsubprocess", "posixpath", "ntpath", "sqlite3",
    "logging",
}  # fmt: skip
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
    "torch.utils.collect_env.run",
    "uuid._get_command_stdout",
    "_osx_support._read_output",
    "types.FunctionType",
    "types.CodeType",
}
_DANGEROUS_BUILTINS = {
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals",
    "locals", "vars", "input", "breakpoint", "apply", "execfile", "file", "reload", "print",
    "exit", "quit", "help", "memoryview", "type", "super", "classmethod", "staticmethod",
    "property", "map", "filter", "iter", "next", "sorted", "min", "max", "sum", "any", "all",
}  # fmt: skip


def is_dangerous_global(qualname: str) -> bool:
    """Whether a global is one that attacks use to run code (os.system, builtins.eval...)."""
    module, _, name = qualname.rpartition(".")
    if qualname in _DANGEROUS_NAMES or module.startswith(
        ("torch.hub", "torch.utils.cpp_extension", "numpy.lib")
    ):
        return True
    if module in ("builtins", "__builtin__"):
        return name.split(".")[0] in _DANGEROUS_BUILTINS
    if "." in name or "__" in name.replace("__init__", ""):
        return True  # dotted (protocol 4) names reach through attributes: os.system, __globals__
    return module.split(".")[0] in _DANGEROUS_MODULES


class UnpickleError(Exception):
    """A pickle could not be read; the message says where and what it would have run (readers
    re-raise it as FormatError)."""

    def __init__(self, message: str, would_run: list[str] | None = None) -> None:
        super().__init__(message)
        self.would_run = would_run or []


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


# Bounds. Costs are charged per opcode and per element a call copies; the budget grows with the
# pickle's size, so a checkpoint of any size loads while a small file cannot do unbounded work.
MAX_INT_BYTES = 256  # LONG1/LONG4 (2048 bits); numpy's PCG64 state needs 16
MAX_INT_DIGITS = 640  # INT/LONG text opcodes and int('...') calls
MAX_MARK_DEPTH = 1000
MAX_DEPTH = 200  # nesting of the loaded object (what layouts and renderers walk)
WORK_PER_BYTE = 16
WORK_BASE = 1_000_000
MAX_INT64 = (1 << 63) - 1


def _limit_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BYTES * 8:
        raise UnpickleError(f"integer of {value.bit_length()} bits refused")
    return value


def _numpy_reconstruct(
    _cls: Any = None, shape: Any = (0,), dtype: Any = b"b", *_: Any
) -> NumpyArray:
    return NumpyArray(shape=tuple(shape) if isinstance(shape, tuple) else ())


_TEXT_ENCODINGS = ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii")


def _check_encoding(encoding: Any, what: str) -> str:
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in _TEXT_ENCODINGS:
        raise UnpickleError(f"{what} with encoding {str(encoding)[:20]!r} refused")
    return encoding


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: Any = "strict", *_: Any) -> bytes:
    if not isinstance(obj, str):
        raise UnpickleError("_codecs.encode called on a non-string")
    return obj.encode(_check_encoding(encoding, "_codecs.encode"), "replace")


def _bytes_like(kind: type, source: Any = b"", encoding: Any = None, *_: Any) -> Any:
    if isinstance(source, int) and not isinstance(source, bool):
        # bytearray(1_500_000_000) is 41 bytes of pickle: a size is never a pickle's data.
        if not 0 <= source <= 4096:
            raise UnpickleError(f"{kind.__name__}({source}) refused: a size, not data")
        return kind(source)
    if isinstance(source, str):
        return kind(source, _check_encoding(encoding or "utf-8", kind.__name__), "replace")
    if isinstance(source, (bytes, bytearray)):
        return kind(source)
    if isinstance(source, (list, tuple)) and all(
        isinstance(b, int) and 0 <= b < 256 for b in source
    ):
        return kind(source)
    raise UnpickleError(f"{kind.__name__}() of a {type(source).__name__} refused")


def _str(obj: Any = "", encoding: Any = None, errors: Any = "strict") -> str:
    if encoding is None:
        if isinstance(obj, (str, int, float, bool)) or obj is None:
            return str(obj)
        raise UnpickleError(f"str() of a {type(obj).__name__} refused")
    if not isinstance(obj, (bytes, bytearray)):
        raise UnpickleError("str() with an encoding of a non-bytes value refused")
    return bytes(obj).decode(_check_encoding(encoding, "str()"), "replace")


def _int(x: Any = 0, base: Any = None) -> int:
    if isinstance(x, str) and len(x) > MAX_INT_DIGITS:
        raise UnpickleError(f"int() of a {len(x)}-character string refused")
    if isinstance(x, (str, bytes, bytearray)):
        return _limit_int(int(x, base if isinstance(base, int) else 10))
    if isinstance(x, (int, float)):
        return _limit_int(int(x))
    raise UnpickleError(f"int() of a {type(x).__name__} refused")


def _float(x: Any = 0.0) -> float:
    if isinstance(x, (str, bytes)) and len(x) > MAX_INT_DIGITS:
        raise UnpickleError("float() of a long string refused")
    if isinstance(x, (str, bytes, int, float)):
        return float(x)
    raise UnpickleError(f"float() of a {type(x).__name__} refused")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if isinstance(real, (int, float)) and isinstance(imag, (int, float)):
        return complex(real, imag)
    raise UnpickleError("complex() of non-numbers refused")


def _size(*args: Any) -> tuple[int, ...]:
    dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
    return tuple(dims)


def _device(*args: Any) -> TorchConst:
    return TorchConst(":".join(str(a)[:40] for a in args) if args else "cpu")


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > 64:
        raise UnpickleError(f"tensor {what} is not a short tuple of integers")
    for d in value:
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= MAX_INT64:
            raise UnpickleError(f"tensor {what} {_short(value)} is not non-negative integers")
    return tuple(value)


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
    shape = _dims(size, "shape")
    strides = _dims(stride, "stride") if stride is not None else None
    if strides is not None and len(strides) != len(shape):
        raise UnpickleError(f"tensor shape {list(shape)} and stride {list(strides)} differ")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_INT64:
        raise UnpickleError(f"tensor storage offset {_short(offset)} is not a non-negative int")
    if shape_numel(shape) > MAX_INT64:
        raise UnpickleError(f"tensor shape {_short(list(shape))} has more than 2**63 elements")
    return TensorRef(
        storage=storage,
        dtype=dtype or storage.dtype,
        shape=shape,
        stride=strides,
        storage_offset=offset,
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
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, str) else None
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
    return TensorRef(
        storage=None,
        dtype=str(dtype).removeprefix("torch.")[:40],
        shape=_dims(size, "shape"),
        kind="meta",
    )


def _rebuild_from_type_v2(func: Any, _new_type: Any, args: Any, _state: Any = None) -> Any:
    if callable(func) and isinstance(args, tuple) and func in _TENSOR_FUNCS:
        return func(*args)
    return OpaqueObject("torch._tensor._rebuild_from_type_v2")


def _parameter(data: Any = None, requires_grad: Any = True) -> Any:
    return _rebuild_parameter(data, requires_grad)


def _defaultdict(factory: Any = None, *_: Any) -> collections.defaultdict[Any, Any]:
    # The factory is never kept: a default_factory could be any callable the pickle named.
    return collections.defaultdict(None)


def _plain_dict(kind: Callable[[], Any]) -> Callable[..., Any]:
    def build(source: Any = None, **kwargs: Any) -> Any:
        out = kind()
        if isinstance(source, dict):
            out.update(source)
        elif isinstance(source, (list, tuple)):
            for pair in source:
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise UnpickleError("dict() of something that is not key-value pairs")
                out[pair[0]] = pair[1]
        elif source is not None:
            raise UnpickleError(f"dict() of a {type(source).__name__} refused")
        out.update(kwargs)
        return out

    return build


def _plain_seq(kind: Callable[..., Any]) -> Callable[..., Any]:
    def build(source: Any = (), *_: Any) -> Any:
        if not isinstance(source, (list, tuple, set, frozenset, dict, str, bytes, bytearray)):
            raise UnpickleError(
                f"{getattr(kind, '__name__', 'seq')}() of a {type(source).__name__}"
            )
        return kind(source)

    return build


def _slice(*args: Any) -> slice:
    return slice(*args[:3])


_TENSOR_FUNCS: set[Callable[..., Any]] = {
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_qtensor,
}

# Our safe stand-ins for allowlisted callables (the rest of the allowlist becomes quiet stubs).
_IMPLEMENTED: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": _plain_dict(collections.OrderedDict),
    "collections.Counter": _plain_dict(collections.Counter),
    "collections.deque": _plain_seq(collections.deque),
    "collections.defaultdict": _defaultdict,
    "builtins.set": _plain_seq(set),
    "builtins.frozenset": _plain_seq(frozenset),
    "builtins.list": _plain_seq(list),
    "builtins.tuple": _plain_seq(tuple),
    "builtins.dict": _plain_dict(dict),
    "builtins.bytearray": lambda *a: _bytes_like(bytearray, *a),
    "builtins.bytes": lambda *a: _bytes_like(bytes, *a),
    "builtins.complex": _complex,
    "builtins.slice": _slice,
    "builtins.int": _int,
    "builtins.float": _float,
    "builtins.str": _str,
    "builtins.bool": lambda x=False: bool(x) if isinstance(x, (int, float, str)) else True,
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
    "torch.serialization._get_layout": lambda name="torch.strided": TorchConst(str(name)[:40]),
    "numpy.core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy._core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.dtype": NumpyDType,
}
_IMPL_NAMES = {id(f): name for name, f in _IMPLEMENTED.items()}
_FAST_TENSOR = _IMPLEMENTED["torch._utils._rebuild_tensor_v2"]
_FAST_DICT = _IMPLEMENTED["collections.OrderedDict"]
_SIZED = (tuple, dict, collections.OrderedDict)
_FAST_ARG_TYPES = frozenset({StorageRef, int, bool, tuple, dict, collections.OrderedDict})


def _fast_tensor_args(args: Any) -> bool:
    """``_rebuild_tensor_v2(storage, offset, size, stride[, requires_grad[, hooks]])`` with plain
    arguments and no backward hooks: nothing in it can name or run code."""
    return (
        type(args) is tuple
        and 4 <= len(args) <= 6
        and all(type(a) in _FAST_ARG_TYPES for a in args)
        and not (len(args) > 5 and args[5])
    )


# Calls special to the machine itself (they instantiate a class without calling it).
_RECONSTRUCTOR = "copyreg._reconstructor"
_NEWOBJ = ("copyreg.__newobj__", "copyreg.__newobj_ex__")


@dataclass
class UnpickleResult:
    """What one pickle held, the globals it named, and the calls it would make on load."""

    data: Any
    globals: set[str] = field(default_factory=set)
    would_run: list[str] = field(default_factory=list)

    @property
    def unsafe_globals(self) -> list[str]:
        """Globals that are not plain data or torch rebuild machinery, sorted."""
        return sorted(g for g in self.globals if not is_safe_global(g))


def _short(value: Any, n: int = 40) -> str:
    if isinstance(value, OpaqueObject):
        return describe(value)
    if isinstance(value, type) and issubclass(value, OpaqueObject):
        return value.__qualname_full__
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "<int>"
        return text if len(text) <= n else text[: n - 3] + "..."
    return f"<{type(value).__name__}>"


def describe(value: Any) -> str:
    """What an opaque value stands for: ``posix.system``, or ``os.system`` for getattr(os, ...)."""
    if isinstance(value, type) and issubclass(value, OpaqueObject):
        return value.__qualname_full__
    if not isinstance(value, OpaqueObject):
        return _short(value)
    name = value.__qualname_full__
    args = value.args
    base = name.rpartition(".")[2]
    if base in ("__import__", "import_module") and args and isinstance(args[0], str):
        return args[0][:60]
    if base == "getattr" and len(args) >= 2 and isinstance(args[1], str):
        return f"{describe(args[0])}.{args[1][:40]}"
    if base in ("attrgetter", "methodcaller") and args and isinstance(args[0], str):
        return f"{name}({args[0][:40]!r})"
    if base == "partial" and args:
        return f"functools.partial({describe(args[0])})"
    return name


class _Machine:
    """One pass of the pickle machine over `buf` from `pos` (see the module docstring)."""

    def __init__(
        self,
        buf: Any,
        pos: int,
        persistent: Callable[[Any], Any] | None,
        budget: int,
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)
        self.persistent = persistent
        self.work = budget
        self.seen: set[str] = set()
        self.would_run: dict[str, None] = {}
        self.stubs: dict[str, type] = {}
        self.proto = 0

    # -- reading ---------------------------------------------------------------------------
    def take(self, n: int) -> Any:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise UnpickleError(f"pickle ends early: needs {n} bytes at byte {pos}")
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def line(self) -> bytes:
        buf, pos = self.buf, self.pos
        nl = buf.find(b"\n", pos, min(self.end, pos + 4096))
        if nl < 0:
            raise UnpickleError(f"pickle text argument at byte {pos} has no end of line")
        self.pos = nl + 1
        return bytes(buf[pos:nl])

    def charge(self, n: int) -> None:
        self.work -= n
        if self.work < 0:
            raise UnpickleError("pickle does more work than its size allows (refused)")

    # -- globals and calls -----------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if not (module and name) or len(module) + len(name) > 300:
            raise UnpickleError("pickle names an empty or over-long global")
        qualname = f"{module}.{name}"
        if not qualname.isprintable():  # no module has such a name; shown escaped, on one line
            qualname = qualname.encode("unicode_escape").decode("ascii")
        self.seen.add(qualname)
        impl = _IMPLEMENTED.get(qualname)
        if impl is not None:
            return impl
        if module in ("torch", "torch.storage", "torch.cuda") and name.endswith("Storage"):
            return StorageType(name)
        if module == "torch" and (name in ELEMENT_SIZE or name in _TORCH_CONSTANTS):
            return TorchConst(qualname)
        return self.stub(qualname)

    def stub(self, qualname: str) -> type:
        stub = self.stubs.get(qualname)
        if stub is None:
            stub = type(
                qualname.rpartition(".")[2][:60] or "Opaque",
                (OpaqueObject,),
                {"__qualname_full__": qualname, "__module__": "ckpttui.opaque"},
            )
            self.stubs[qualname] = stub
        return stub

    def runs(self, what: str) -> None:
        if not what.isprintable():  # names built from the pickle's strings: shown on one line
            what = what.encode("unicode_escape").decode("ascii")
        self.would_run.setdefault(what[:120], None)

    def runs_callables_in(self, args: Any) -> None:
        """Callables handed to a call of unknown code may be called by it (partial, map...)."""
        for a in args if isinstance(args, (tuple, list)) else (args,):
            if isinstance(a, type) and issubclass(a, OpaqueObject):
                self.runs(a.__qualname_full__)
            elif isinstance(a, OpaqueObject) and not type(a).__qualname_full__.endswith(
                ("__import__", "import_module")
            ):
                self.runs(describe(a))

    def classes_handed_to(self, name: str, args: tuple[Any, ...]) -> None:
        """A class outside the allowlist handed to an allowed call is built or called by it
        (``_reconstruct(Subclass, ...)``, ``_rebuild_wrapper_subclass(cls, ...)``): it runs."""
        for a in args:
            if (
                isinstance(a, type)
                and issubclass(a, OpaqueObject)
                and not is_call_allowed(a.__qualname_full__)
            ):
                self.runs(a.__qualname_full__)
            elif isinstance(a, OpaqueObject) and a.__qualname_full__ in self.would_run:
                self.runs(describe(a))

    def call(self, func: Any, args: Any, kwargs: dict[str, Any] | None, how: str) -> Any:
        """What REDUCE/NEWOBJ/INST/OBJ would do with `func`; records what it would run."""
        if not isinstance(args, tuple):
            if isinstance(args, list):
                args = tuple(args)
            else:
                raise UnpickleError(f"{how} arguments are not a tuple")
        kwargs = kwargs or {}
        self.charge(len(args) + len(kwargs))
        if isinstance(func, type) and issubclass(func, OpaqueObject):
            name = func.__qualname_full__
            if how == "NEWOBJ" and not args and not kwargs:
                return func()  # instantiated and filled: loading needs the class, nothing runs
            plain = name in _PLAIN_ARG_CALLS and all(
                type(a) in _LEAVES for a in (*args, *kwargs.values())
            )
            if not plain and not is_call_allowed(name):
                self.runs(name)
                self.runs_callables_in(args)
                self.runs_callables_in(tuple(kwargs.values()))
            else:
                self.classes_handed_to(name, (*args, *kwargs.values()))
            return func(*args, **kwargs)
        if isinstance(func, OpaqueObject):
            # calling what an earlier call returned: getattr(...)(...), partial(...)(...)
            self.runs(describe(func))
            self.runs_callables_in(args)
            inst = self.stub(type(func).__qualname_full__)(*args)
            return inst
        impl_name = _IMPL_NAMES.get(id(func))
        if impl_name is not None:
            if impl_name != "collections.defaultdict":  # its factory is judged in call_impl
                self.classes_handed_to(impl_name, (*args, *kwargs.values()))
            return self.call_impl(impl_name, func, args, kwargs, how)
        if isinstance(func, (StorageType, TorchConst)):
            return self.stub(str(getattr(func, "name", func)))(*args)
        raise UnpickleError(f"{how} calls a {type(func).__name__} value")

    def call_impl(
        self,
        name: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
        how: str,
    ) -> Any:
        for a in args:
            if isinstance(a, (list, tuple, dict, set, frozenset, str, bytes, bytearray)):
                self.charge(len(a))
            elif isinstance(a, OpaqueObject) and name.startswith(("builtins.", "collections.")):
                # set(obj), dict(obj)... would run the object's own __iter__/keys
                self.runs(describe(a))
                raise UnpickleError(f"{name} of an object of {describe(a)} refused", [])
        if name == "collections.defaultdict" and args:
            factory = args[0]
            if isinstance(factory, type) and issubclass(factory, OpaqueObject):
                if not is_call_allowed(factory.__qualname_full__):
                    self.runs(factory.__qualname_full__)
            elif isinstance(factory, OpaqueObject):
                self.runs(describe(factory))
        if name == "torch._tensor._rebuild_from_type_v2" and len(args) >= 2:
            if args[0] not in _TENSOR_FUNCS:
                self.runs(describe(args[0]))  # torch calls func(*args) whatever it is
            new_type = args[1]
            if (
                isinstance(new_type, type)
                and issubclass(new_type, OpaqueObject)
                and not is_call_allowed(new_type.__qualname_full__)
            ):
                self.runs(new_type.__qualname_full__)
        hook_at = 5 if name.startswith("torch._utils._rebuild_tensor_v") else 2
        if name.startswith(("torch._utils._rebuild_tensor_v", "torch._utils._rebuild_param")):
            hooks = args[hook_at] if len(args) > hook_at else None
            if isinstance(hooks, dict) and hooks:
                self.runs_callables_in(tuple(hooks.values()))
        return func(*args, **kw)

    def reconstructor(self, args: tuple[Any, ...]) -> Any:
        """copyreg._reconstructor(cls, base, state): base.__new__(cls, state) then base.__init__."""
        if len(args) != 3:
            raise UnpickleError("copyreg._reconstructor takes 3 arguments")
        cls, base, state = args
        base_name = describe(base) if not callable(base) or isinstance(base, type) else ""
        if isinstance(base, type) and issubclass(base, OpaqueObject):
            base_name = base.__qualname_full__
        elif id(base) in _IMPL_NAMES:
            base_name = _IMPL_NAMES[id(base)]
        if base_name != "builtins.object" and not is_call_allowed(base_name):
            self.runs(base_name)
        if isinstance(cls, type) and issubclass(cls, OpaqueObject):
            inst = cls()
            if state is not None:
                inst.__setstate__(state)
            return inst
        if id(cls) in _IMPL_NAMES:
            return self.call(cls, (state,) if state is not None else (), None, "REDUCE")
        raise UnpickleError("copyreg._reconstructor of something that is not a class")

    def reduce(self, func: Any, args: Any) -> Any:
        name = _IMPL_NAMES.get(id(func)) if not isinstance(func, type) else None
        if isinstance(func, type) and issubclass(func, OpaqueObject):
            name = func.__qualname_full__
        if name == _RECONSTRUCTOR:
            return self.reconstructor(args if isinstance(args, tuple) else ())
        if name in _NEWOBJ and isinstance(args, tuple) and args:
            kwargs = args[2] if name.endswith("_ex__") and len(args) > 2 else None
            rest = args[1] if name.endswith("_ex__") and len(args) > 1 else args[1:]
            return self.call(args[0], rest, kwargs if isinstance(kwargs, dict) else None, "NEWOBJ")
        return self.call(func, args, None, "REDUCE")

    def build(self, inst: Any, state: Any) -> None:
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, dict) and "__setstate__" in part:
                # a planted __setstate__ is called by the next BUILD on this object
                self.runs(describe(part["__setstate__"]))
        setstate = getattr(inst, "__setstate__", None)
        if isinstance(inst, OpaqueObject):
            stored = inst.fields().get("__setstate__") if isinstance(inst.state, dict) else None
            if stored is not None:
                self.runs(describe(stored))
            inst.__setstate__(state)
        elif isinstance(inst, (NumpyArray, NumpyDType)) and setstate is not None:
            setstate(state)
        # BUILD on our own records (tensors, dicts) changes nothing a reader looks at.

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent is None:
            raise UnpickleError("persistent id in a pickle that should have none")
        return self.persistent(pid)

    # -- the machine -----------------------------------------------------------------------
    def load(self) -> Any:
        """Run opcodes until STOP; returns the object (see pickle.py `_Unpickler.load`)."""
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        memo: dict[int, Any] = {}
        buf = self.buf
        end = self.end
        take = self.take
        unpack = struct.unpack
        unpack_from = struct.unpack_from
        ops = 0
        while True:
            pos = self.pos
            if pos >= end:
                raise UnpickleError(f"pickle ends early (byte {pos}, no STOP opcode)")
            op = buf[pos]
            self.pos = pos + 1
            ops += 1
            if ops >= 4096:
                self.charge(ops)
                ops = 0
            if op == 0x71:  # BINPUT (the hot opcodes read their argument inline)
                memo[buf[pos + 1]] = stack[-1]
                self.pos = pos + 2
            elif op == 0x94:  # MEMOIZE
                memo[len(memo)] = stack[-1]
            elif op == 0x68:  # BINGET
                stack.append(memo[buf[pos + 1]])
                self.pos = pos + 2
            elif op == 0x8C:  # SHORT_BINUNICODE
                n = buf[pos + 1]
                if pos + 2 + n > end:
                    raise UnpickleError(f"pickle ends early: needs {n} bytes at byte {pos}")
                stack.append(str(buf[pos + 2 : pos + 2 + n], "utf-8", "surrogatepass"))
                self.pos = pos + 2 + n
            elif op == 0x4B:  # BININT1
                stack.append(buf[pos + 1])
                self.pos = pos + 2
            elif op == 0x4D:  # BININT2
                stack.append(unpack_from("<H", buf, pos + 1)[0])
                self.pos = pos + 3
            elif op == 0x4A:  # BININT
                stack.append(unpack_from("<i", buf, pos + 1)[0])
                self.pos = pos + 5
            elif op == 0x6A:  # LONG_BINGET
                stack.append(memo[unpack_from("<I", buf, pos + 1)[0]])
                self.pos = pos + 5
            elif op == 0x72:  # LONG_BINPUT
                memo[unpack_from("<I", buf, pos + 1)[0]] = stack[-1]
                self.pos = pos + 5
            elif op == 0x28:  # MARK
                if len(metastack) >= MAX_MARK_DEPTH:
                    raise UnpickleError(f"pickle nests more than {MAX_MARK_DEPTH} marks")
                metastack.append(stack)
                stack = []
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x86:  # TUPLE2
                stack[-2:] = [(stack[-2], stack[-1])]
            elif op == 0x87:  # TUPLE3
                stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
            elif op == 0x74:  # TUPLE
                items = stack
                stack = metastack.pop()
                stack.append(tuple(items))
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x75:  # SETITEMS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if len(items) % 2:
                    raise UnpickleError("SETITEMS with an odd number of items")
                self._setitems(target, items)
            elif op == 0x73:  # SETITEM
                value = stack.pop()
                key = stack.pop()
                self._setitems(stack[-1], [key, value])
            elif op == 0x65:  # APPENDS
                items = stack
                stack = metastack.pop()
                self._appends(stack[-1], items)
            elif op == 0x61:  # APPEND
                value = stack.pop()
                self._appends(stack[-1], [value])
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                func = stack[-1]
                if func is _FAST_TENSOR and _fast_tensor_args(args):
                    # What `reduce` would do for a plain tensor (no hooks, no class in its
                    # arguments), without its general checks: one call per tensor is hot.
                    self.charge(len(args) + sum(len(a) for a in args if type(a) in _SIZED))
                    stack[-1] = _rebuild_tensor_v2(*args)
                elif func is _FAST_DICT and args == ():
                    stack[-1] = func()
                else:
                    stack[-1] = self.reduce(func, args)
            elif op == 0x62:  # BUILD
                state = stack.pop()
                self.build(stack[-1], state)
            elif op == 0x93:  # STACK_GLOBAL
                name = stack.pop()
                module = stack.pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    raise UnpickleError("STACK_GLOBAL names are not strings")
                stack.append(self.find_class(module, name))
            elif op == 0x63:  # GLOBAL
                module = self.line().decode("utf-8", "replace")
                name = self.line().decode("utf-8", "replace")
                stack.append(self.find_class(module, name))
            elif op == 0x81:  # NEWOBJ
                args = stack.pop()
                cls = stack.pop()
                stack.append(self.call(cls, args, None, "NEWOBJ"))
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = stack.pop()
                args = stack.pop()
                cls = stack.pop()
                if not isinstance(kwargs, dict):
                    raise UnpickleError("NEWOBJ_EX keyword arguments are not a dict")
                stack.append(self.call(cls, args, {str(k): v for k, v in kwargs.items()}, "NEWOBJ"))
            elif op == 0x51:  # BINPERSID
                stack[-1] = self.persistent_load(stack[-1])
            elif op == 0x58:  # BINUNICODE
                (n,) = unpack("<I", take(4))
                stack.append(str(take(n), "utf-8", "surrogatepass"))
            elif op == 0x8D:  # BINUNICODE8
                (n,) = unpack("<Q", take(8))
                stack.append(str(take(n), "utf-8", "surrogatepass"))
            elif op == 0x8A:  # LONG1
                n = take(1)[0]
                stack.append(self._long(take(n)))
            elif op == 0x8B:  # LONG4
                (n,) = unpack("<i", take(4))
                if n < 0 or n > MAX_INT_BYTES:
                    raise UnpickleError(f"integer of {n} bytes refused")
                stack.append(self._long(take(n)))
            elif op == 0x47:  # BINFLOAT
                stack.append(unpack(">d", take(8))[0])
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x43:  # SHORT_BINBYTES
                n = take(1)[0]
                stack.append(bytes(take(n)))
            elif op == 0x42:  # BINBYTES
                (n,) = unpack("<I", take(4))
                stack.append(bytes(take(n)))
            elif op == 0x8E:  # BINBYTES8
                (n,) = unpack("<Q", take(8))
                stack.append(bytes(take(n)))
            elif op == 0x96:  # BYTEARRAY8
                (n,) = unpack("<Q", take(8))
                stack.append(bytearray(take(n)))
            elif op == 0x55:  # SHORT_BINSTRING
                n = take(1)[0]
                stack.append(str(take(n), "latin-1"))
            elif op == 0x54:  # BINSTRING
                (n,) = unpack("<i", take(4))
                stack.append(str(take(n), "latin-1"))
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x90:  # ADDITEMS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if not isinstance(target, set):
                    raise UnpickleError("ADDITEMS on something that is not a set")
                self.charge(len(items))
                target.update(self._hashable(items))
            elif op == 0x91:  # FROZENSET
                items = stack
                stack = metastack.pop()
                stack.append(frozenset(self._hashable(items)))
            elif op == 0x95:  # FRAME
                take(8)
            elif op == 0x80:  # PROTO
                self.proto = take(1)[0]
                if self.proto > 5:
                    raise UnpickleError(f"unsupported pickle protocol {self.proto}")
            elif op == 0x2E:  # STOP
                if len(stack) != 1 or metastack:
                    raise UnpickleError("pickle stops with a malformed stack")
                return stack[0]
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    stack = metastack.pop()
            elif op == 0x31:  # POP_MARK
                stack = metastack.pop()
            elif op == 0x32:  # DUP
                stack.append(stack[-1])
            elif op == 0x64:  # DICT
                items = stack
                stack = metastack.pop()
                d: dict[Any, Any] = {}
                self._setitems(d, items)
                stack.append(d)
            elif op == 0x6C:  # LIST
                items = stack
                stack = metastack.pop()
                stack.append(items)
            elif op == 0x4C:  # LONG
                text = self.line()
                if len(text) > MAX_INT_DIGITS:
                    raise UnpickleError(f"integer of {len(text)} digits refused")
                stack.append(int(text.rstrip(b"L") or b"0"))
            elif op == 0x49:  # INT
                text = self.line()
                if len(text) > MAX_INT_DIGITS:
                    raise UnpickleError(f"integer of {len(text)} digits refused")
                if text == b"00":
                    stack.append(False)
                elif text == b"01":
                    stack.append(True)
                else:
                    stack.append(int(text))
            elif op == 0x46:  # FLOAT
                stack.append(float(self.line()))
            elif op == 0x53:  # STRING
                text = self.line().rstrip()
                if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
                    raise UnpickleError("STRING opcode argument is not quoted")
                stack.append(str(codecs.escape_decode(text[1:-1])[0], "latin-1"))
            elif op == 0x56:  # UNICODE
                stack.append(str(self.line(), "raw-unicode-escape"))
            elif op == 0x67:  # GET
                stack.append(memo[int(self.line())])
            elif op == 0x70:  # PUT
                index = int(self.line())
                if index < 0:
                    raise UnpickleError("negative memo index")
                memo[index] = stack[-1]
            elif op == 0x50:  # PERSID
                stack.append(self.persistent_load(self.line().decode("ascii", "replace")))
            elif op == 0x69:  # INST
                module = self.line().decode("utf-8", "replace")
                name = self.line().decode("utf-8", "replace")
                cls = self.find_class(module, name)
                items = stack
                stack = metastack.pop()
                stack.append(self.instantiate(cls, tuple(items)))
            elif op == 0x6F:  # OBJ
                items = stack
                stack = metastack.pop()
                if not items:
                    raise UnpickleError("OBJ without a class")
                stack.append(self.instantiate(items[0], tuple(items[1:])))
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                raise UnpickleError("pickle uses the copyreg extension registry (refused)")
            elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise UnpickleError("pickle uses out-of-band buffers (refused)")
            else:
                raise UnpickleError(f"invalid pickle opcode 0x{op:02x} at byte {pos}")

    def instantiate(self, cls: Any, args: tuple[Any, ...]) -> Any:
        """INST/OBJ: pickle calls cls(*args) (protocol 0/1 classes; real files use copyreg)."""
        if isinstance(cls, type) and issubclass(cls, OpaqueObject):
            if not is_call_allowed(cls.__qualname_full__):
                self.runs(cls.__qualname_full__)
                self.runs_callables_in(args)
            return cls(*args)
        return self.call(cls, args, None, "INST")

    def _long(self, raw: bytes) -> int:
        if len(raw) > MAX_INT_BYTES:
            raise UnpickleError(f"integer of {len(raw)} bytes refused")
        return int.from_bytes(raw, "little", signed=True)

    def _hashable(self, items: list[Any]) -> list[Any]:
        for item in items:
            if isinstance(item, tuple) and _tuple_depth(item) > MAX_DEPTH:
                raise UnpickleError("pickle nests a key too deeply")
        return items

    def _setitems(self, target: Any, items: list[Any]) -> None:
        self.charge(len(items))
        if isinstance(target, dict):
            self._hashable(items[::2])
            for i in range(0, len(items), 2):
                target[items[i]] = items[i + 1]
        elif isinstance(target, OpaqueObject):
            self._hashable(items[::2])
            for i in range(0, len(items), 2):
                target.items[items[i]] = items[i + 1]
        else:
            raise UnpickleError(f"SETITEMS on a {type(target).__name__}")

    def _appends(self, target: Any, items: list[Any]) -> None:
        self.charge(len(items))
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, OpaqueObject):
            target.list_items.extend(items)
        elif isinstance(target, (set, collections.deque)):
            target.extend(items) if isinstance(target, collections.deque) else target.update(
                self._hashable(items)
            )
        else:
            raise UnpickleError(f"APPENDS on a {type(target).__name__}")


def _tuple_depth(value: tuple[Any, ...]) -> int:
    depth = 0
    level: list[Any] = [value]
    while level and depth <= MAX_DEPTH:
        depth += 1
        level = [x for t in level for x in t if isinstance(x, (tuple, frozenset))][:10_000]
    return depth


def check_graph(
    obj: Any, max_depth: int = MAX_DEPTH, max_nodes: int = 1_000_000
) -> tuple[int, int, int]:
    """Raise UnpickleError when `obj` nests deeper than `max_depth` or, with shared references
    expanded the way a tree walk expands them, holds more than `max_nodes` nodes.

    Returns (expanded nodes, expanded tensor references, distinct tensors). Linear in distinct
    objects; each container's children are grouped by identity first (at C speed), so a list of
    ten million references to one object costs one visit.
    """
    size: dict[int, tuple[int, int, int]] = {}  # id -> (depth, nodes, tensors)
    groups: dict[int, tuple[int, dict[int, Any], Counter[int]]] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    keep: list[Any] = []
    distinct = 0
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            leaves, by_id, counts = groups.pop(key)
            depth, nodes, tensors = (1 if leaves else 0), 1 + leaves, 0
            for cid, mult in counts.items():
                got = size.get(cid)
                if got is None:  # a cycle back to a node on the path counts once
                    continue
                depth = max(depth, got[0])
                nodes = min(nodes + mult * got[1], max_nodes + 1)
                tensors = min(tensors + mult * got[2], max_nodes + 1)
            if depth + 1 > max_depth:
                raise UnpickleError(f"pickle nests more than {max_depth} levels deep")
            if nodes > max_nodes:
                raise UnpickleError(
                    f"pickle shares objects so much that walking it visits over {max_nodes} nodes"
                )
            size[key] = (depth + 1, nodes, tensors)
            continue
        if type(node) is TensorRef:
            if key not in size:
                size[key] = (1, 1, 1)
                keep.append(node)
                distinct += 1
            continue
        kids = _children(node)
        if not kids:
            if key not in size:
                size[key] = (1, 1, 0)
                keep.append(node)
            continue
        if key in size or key in on_path:
            continue
        if len(on_path) > max_depth:
            raise UnpickleError(f"pickle nests more than {max_depth} levels deep")
        on_path.add(key)
        keep.append(node)
        if set(map(type, kids)) <= _LEAVES:  # numbers and strings only (at C speed)
            groups[key] = (len(kids), {}, Counter())
            stack.append((node, True))
            continue
        inner = [k for k in kids if type(k) not in _LEAVES]
        by_id = dict(zip(map(id, inner), inner))
        counts = Counter(map(id, inner))
        groups[key] = (len(kids) - len(inner), by_id, counts)
        stack.append((node, True))
        for cid, child in by_id.items():
            if cid not in size:
                stack.append((child, False))
    top = size.get(id(obj), (1, 1, 0))
    return top[1], top[2], distinct


_LEAVES = frozenset({int, float, str, bytes, bool, type(None), complex, TorchConst})


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()] if node else []
    if isinstance(node, (list, tuple, set, frozenset, collections.deque)):
        return list(node)
    if isinstance(node, OpaqueObject):
        return [
            *node.args,
            *node.kwargs.values(),
            node.state,
            *node.items.keys(),
            *node.items.values(),
            *node.list_items,
        ]
    return []


def storage_from_pid(pid: Any) -> StorageRef:
    """Turn torch's ``('storage', type, key, location, numel, ...)`` persistent id into a record."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise UnpickleError(f"unexpected persistent id {_short(pid, 60)}")
    stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise UnpickleError(f"storage key {_short(key)} is not a string")
    if (
        not isinstance(stype, StorageType)
        or not isinstance(numel, int)
        or isinstance(numel, bool)
        or not 0 <= numel <= MAX_INT64
    ):
        raise UnpickleError(f"malformed storage persistent id for key {_short(key)}")
    elsize = 1 if stype.untyped else ELEMENT_SIZE.get(stype.dtype, 1)
    return StorageRef(
        key=str(key), dtype=stype.dtype, nbytes=numel * elsize, location=str(location)[:40]
    )


class PickleReader:
    """Reads one or more pickles in a row from a buffer (bytes or mmap) with one shared budget.

    ``would_run`` and ``globals`` accumulate across loads, so a file of several pickles (torch's
    legacy format) is judged as a whole; an error raised mid-way still names what was seen.
    """

    def __init__(self, buf: Any, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.globals: set[str] = set()
        self.would_run: dict[str, None] = {}
        self.work = WORK_PER_BYTE * (len(buf) - pos) + WORK_BASE
        self.nodes_left = 2 * (len(buf) - pos) + 1_000_000

    def load(self, persistent: Callable[[Any], Any] | None = None) -> UnpickleResult:
        """The next pickle: its object (checked for depth and sharing) and what it names."""
        start = self.pos
        m = _Machine(self.buf, self.pos, persistent, self.work)
        try:
            try:
                obj = m.load()
                nodes, tensors, distinct = check_graph(obj, MAX_DEPTH, max(self.nodes_left, 0))
                if tensors > 10_000 and tensors > 16 * distinct:
                    raise UnpickleError(
                        f"pickle refers to its {distinct} tensor(s) {tensors} times (refused)"
                    )
                self.nodes_left -= nodes
            except UnpickleError:
                raise
            except RecursionError:
                raise UnpickleError("pickle nests too deeply") from None
            except (IndexError, KeyError) as exc:
                what = "memo" if isinstance(exc, KeyError) else "stack"
                raise UnpickleError(f"bad pickle: {what} reference out of range") from None
            except MemoryError:
                raise UnpickleError("bad pickle: out of memory") from None
            except (
                ValueError,
                TypeError,
                AttributeError,
                OverflowError,
                UnicodeError,
                struct.error,
            ) as exc:
                text = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
                raise UnpickleError(f"bad pickle: {text}") from None
        except UnpickleError as exc:
            self.globals |= m.seen
            self.would_run.update(m.would_run)
            self.would_run.update(dict.fromkeys(exc.would_run))
            msg = str(exc)
            if "(pickle byte" not in msg:
                msg = f"{msg} (pickle byte {m.pos - start})"
            raise UnpickleError(msg, list(self.would_run)) from None
        finally:
            self.work = m.work
        self.pos = m.pos
        self.globals |= m.seen
        self.would_run.update(m.would_run)
        return UnpickleResult(data=obj, globals=set(m.seen), would_run=list(m.would_run))


def restricted_load(
    data: bytes | bytearray | memoryview | Any, persistent: Callable[[Any], Any] | None = None
) -> UnpickleResult:
    """Unpickle one pickle without importing or calling anything it names.

    `data` is the pickle's bytes (or an mmap). Raises UnpickleError naming the problem and,
    when the pickle would run code, what it would run (``exc.would_run``).
    """
    buf = bytes(data) if isinstance(data, memoryview) else data
    return PickleReader(buf).load(persistent)


def is_pickle(head: bytes) -> bool:
    """Whether bytes start like a pickle of any protocol (recognised by opcodes, not names)."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    reader = PickleReader(head)
    m = _Machine(head, 0, lambda pid: None, reader.work)
    try:
        m.load()
        return True
    except Exception:
        # text fails within its first bytes; a pickle that names a global, or runs valid
        # opcodes for a while before a problem, is a (damaged or hostile) pickle
        return bool(m.seen or m.would_run) or m.pos >= 8


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
            children = [(str(k), v) for k, v in node.items() if type(v) not in _LEAVES]
        elif isinstance(node, (list, tuple)):
            if set(map(type, node)) <= _LEAVES:
                continue  # numbers and strings only (checked at C speed)
            children = [(str(i), v) for i, v in enumerate(node) if type(v) not in _LEAVES]
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
        stack.extend(
            (path + (key,), child)
            for key, child in reversed(children)
            if type(child) not in _LEAVES
        )
    return found
