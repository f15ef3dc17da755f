"""Hostile and broken files, built by hand: what issue 12 attacked ckpttui with, by category.

Each case writes its files under a folder and says what a safe outcome is:

* ``run``: a code-running pickle. Safe = the file is an error that names ``expect`` among what it
  would run, and the payload never runs (the marker file is never created).
* ``bad``: a malformed input. Safe = every problem is one line, no exception escapes, the scan
  goes on (a good file beside it is still read), within the time and memory limits.

Used by tests/formats/test_hostile_cases.py (all cases, in-process) and benchmarks/hostile.py
(each case in a forked child with a time limit, its peak memory measured).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
PROTO = pickle.dumps(1001, protocol=2)
SYSINFO = pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)


@dataclass
class Case:
    """One hostile input: `build(folder, marker)` writes it; `kind` is "run" or "bad"."""

    name: str
    kind: str
    build: Callable[[Path, Path], None]
    expect: str = ""
    big: bool = False  # tens of MB: skipped by the quick in-suite run


def g(module: str, name: str) -> bytes:
    """GLOBAL opcode (protocol 0-3 spelling)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL with both names as short unicode strings (protocol 4)."""
    return su(module) + su(name) + b"\x93"


def su(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) via MARK ... TUPLE REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def wrap(payload: bytes) -> bytes:
    """A protocol-2 state dict {"state_dict": {}, "payload": <payload>}."""
    return b"\x80\x02}(" + su("state_dict") + b"}" + su("payload") + payload + b"u."


def sh(marker: Path) -> bytes:
    return su(f"touch {marker}")


def zip_bytes(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        with zipfile.ZipFile(buf, "w", compression=method) as z:
            for name, data in entries:
                z.writestr(name, data)
    return buf.getvalue()


def torch_zip(pkl: bytes, extra: list[tuple[str, bytes]] | None = None) -> bytes:
    return zip_bytes(
        [("archive/data.pkl", pkl), ("archive/byteorder", b"little"), *(extra or [])]
        + [("archive/version", b"3\n")]
    )


def legacy(*, magic: bytes = MAGIC, proto: bytes = PROTO, sysinfo: bytes = SYSINFO,
           main: bytes = b"\x80\x02}q\x00.", keys: bytes = b"\x80\x02]q\x00.") -> bytes:  # fmt: skip
    return magic + proto + sysinfo + main + keys


def tensor_body(shape: tuple[int, ...], stride: tuple[int, ...], numel: int = 4,
                offset: int = 0) -> bytes:  # fmt: skip
    """Pickle ops that push one tensor (shape/stride as given) on a FloatStorage of numel."""

    def tup(values: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"\x8a" + _le(v) for v in values) + b"t"

    pid = b"(" + su("storage") + g("torch", "FloatStorage") + su("0") + su("cpu") + b"\x8a"
    pid += _le(numel) + b"tQ"
    body = g("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"\x8a" + _le(offset)
    return body + tup(shape) + tup(stride) + b"\x89" + g("collections", "OrderedDict") + b")RtR"


def tensor_pickle(shape: tuple[int, ...], stride: tuple[int, ...], numel: int = 4) -> bytes:
    """A data.pkl of {"w": tensor}."""
    return b"\x80\x02}(" + su("w") + tensor_body(shape, stride, numel) + b"u."


def _le(v: int) -> bytes:
    raw = v.to_bytes((v.bit_length() + 8) // 8 or 1, "little", signed=True)
    return bytes([len(raw)]) + raw


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def one(name: str, kind: str, filename: str, data: Callable[[Path], bytes], expect: str = "",
        big: bool = False) -> Case:  # fmt: skip
    return Case(name, kind, lambda d, m: write(d, filename, data(m)) and None, expect, big)


# -- code-running pickles ------------------------------------------------------------------------


def _payloads() -> list[tuple[str, str, Callable[[Path], bytes]]]:
    """(name, expected would-run name, pickle body building one value)."""
    return [
        ("os.system", "posix.system", lambda m: call(g("posix", "system"), sh(m))),
        ("builtins.eval", "builtins.eval", lambda m: call(g("builtins", "eval"), su("1+1"))),
        ("builtins.exec", "builtins.exec", lambda m: call(g("builtins", "exec"), su("x=1"))),
        ("collect_env.run", "torch.utils.collect_env.run",
         lambda m: call(g("torch.utils.collect_env", "run"), sh(m))),
        ("_io.open", "_io.open", lambda m: call(g("_io", "open"), su(str(m)), su("w"))),
        ("logging dictConfig", "logging.config.dictConfig",
         lambda m: call(g("logging.config", "dictConfig"), b"}")),
        ("_osx_support", "_osx_support._read_output",
         lambda m: call(g("_osx_support", "_read_output"), sh(m))),
        ("uuid command", "uuid._get_command_stdout",
         lambda m: call(g("uuid", "_get_command_stdout"), su("touch"), su(str(m)))),
        ("numpy load", "numpy.lib._npyio_impl.load",
         lambda m: call(g("numpy.lib._npyio_impl", "load"), su(str(m)))),
        ("sqlite3.connect", "sqlite3.connect", lambda m: call(g("sqlite3", "connect"), su(str(m)))),
        ("reconstructor FileHandler", "logging.FileHandler",
         lambda m: call(g("copyreg", "_reconstructor"), g("logging", "FileHandler"),
                        g("logging", "FileHandler"), su(str(m)))),
        ("dotted posixpath.os.system", "posixpath.os.system",
         lambda m: b"\x80\x04" + call(sg("posixpath", "os.system"), sh(m))),
        ("dotted torch serialization.os", "torch.serialization.os.system",
         lambda m: call(sg("torch", "serialization.os.system"), sh(m))),
        ("getattr __import__", "os.system",
         lambda m: call(call(g("builtins", "getattr"), call(g("builtins", "__import__"), su("os")),
                             su("system")), sh(m))),
        ("methodcaller", "operator.methodcaller",
         lambda m: call(call(g("operator", "methodcaller"), su("system"), sh(m)),
                        call(g("builtins", "__import__"), su("os")))),
        ("attrgetter", "operator.attrgetter",
         lambda m: call(call(call(g("operator", "attrgetter"), su("system")),
                             call(g("importlib", "import_module"), su("os"))), sh(m))),
        ("functools.partial", "posix.system",
         lambda m: call(call(g("functools", "partial"), g("posix", "system"), sh(m)))),
        ("NEWOBJ partial", "posix.system",
         lambda m: call(g("functools", "partial") + b"(" + g("posix", "system") + sh(m)
                        + b"t\x81")),
        ("OrderedDict(map())", "posix.system",
         lambda m: call(g("collections", "OrderedDict"),
                        call(g("builtins", "map"), g("posix", "system"), b"(" + sh(m) + b"l"))),
        ("BUILD __setstate__", "posix.system",
         lambda m: g("argparse", "Namespace") + b")\x81" + b"N}(" + su("__setstate__")
         + g("posix", "system") + b"u\x86b" + sh(m) + b"b"),
        ("INST", "posix.system", lambda m: b"(" + sh(m) + b"iposix\nsystem\n"),
        ("OBJ", "posix.system", lambda m: b"(" + g("posix", "system") + sh(m) + b"o"),
        ("NEWOBJ_EX subprocess", "subprocess.Popen",
         lambda m: g("subprocess", "Popen") + b"(" + su("touch") + su(str(m)) + b"l\x85}\x92"),
        ("defaultdict factory", "posix.system",
         lambda m: call(g("collections", "defaultdict"), g("posix", "system"))),
        ("rebuild_from_type subclass", "evil.Tensor",
         lambda m: call(g("torch._tensor", "_rebuild_from_type_v2"), g("builtins", "print"),
                        g("evil", "Tensor"), b")", b"N")),
        ("numpy _reconstruct subclass", "evil.Array",
         lambda m: call(g("numpy.core.multiarray", "_reconstruct"), g("evil", "Array"),
                        b"(K\x00t", su("b"))),
        ("wrapper subclass", "evil.Tensor",
         lambda m: call(g("torch._utils", "_rebuild_wrapper_subclass"), g("evil", "Tensor"),
                        g("torch", "float32"))),
        ("parameter hooks", "posix.system",
         lambda m: call(g("torch._utils", "_rebuild_parameter"), b"N", b"\x88",
                        g("collections", "OrderedDict") + b")R" + b"q\x07" + b"K\x00"
                        + g("posix", "system") + b"s")),
        ("setattr chain", "builtins.setattr",
         lambda m: call(g("builtins", "setattr"), g("posix", "environ"), su("X"), su("1"))),
        ("breakpoint INST no args", "builtins.breakpoint", lambda m: b"(ibuiltins\nbreakpoint\n"),
        ("apply via reduce of reduce", "posix.system",
         lambda m: call(call(g("builtins", "getattr"), g("posix", "system"), su("__call__")),
                        sh(m))),
    ]  # fmt: skip


def code_running_cases() -> list[Case]:
    cases: list[Case] = []
    for name, expect, body in _payloads():
        cases.append(
            one(f"run/{name}/plain", "run", "model.pt", lambda m, b=body: wrap(b(m)), expect)
        )
        cases.append(one(f"run/{name}/zip", "run", "model.pt",
                         lambda m, b=body: torch_zip(wrap(b(m))), expect))  # fmt: skip
        cases.append(one(f"run/{name}/legacy", "run", "model.pt",
                         lambda m, b=body: legacy(main=wrap(b(m))), expect))  # fmt: skip
        cases.append(one(f"run/{name}/funasr", "run", "model.pt.ep3",
                         lambda m, b=body: torch_zip(b"\x80\x02}(" + su("model") + b"}"
                                                     + su("saved_ckpts") + b(m) + b"u."),
                         expect))  # fmt: skip
    system = _payloads()[0][2]
    for slot in ("magic", "proto", "sysinfo", "keys"):
        cases.append(one(f"run/legacy payload in {slot}", "run", "model.pt",
                         lambda m, s=slot: legacy(**{s: b"\x80\x02" + system(m) + b"."}),
                         "posix.system"))  # fmt: skip
    cases.append(one("run/zip two data.pkl", "run", "model.pt",
                     lambda m: zip_bytes([("archive/data.pkl", b"\x80\x02}."),
                                          ("archive/data.pkl", wrap(system(m))),
                                          ("archive/byteorder", b"little")]),
                     "posix.system"))  # fmt: skip
    cases.append(one("run/zip second root data.pkl", "run", "model.pt",
                     lambda m: zip_bytes([("a/data.pkl", b"\x80\x02}."), ("a/byteorder", b"little"),
                                          ("b/data.pkl", wrap(system(m)))]),
                     "posix.system"))  # fmt: skip
    cases.append(one("run/protocol 0 named model.pt", "run", "model.pt",
                     lambda m: b"(dp0\nS'x'\n" + b"cposix\nsystem\n(S'" + f"touch {m}".encode()
                     + b"'\ntRs.", "posix.system"))  # fmt: skip
    cases.append(
        one(
            "run/payload then parse error",
            "run",
            "model.pt",
            lambda m: b"\x80\x02}(" + su("x") + system(m) + b"\xff\xff",
            "posix.system",
        )
    )
    cases.append(one("run/payload then parse error zip", "run", "model.pt",
                     lambda m: torch_zip(b"\x80\x02}(" + su("x") + system(m) + b"h\x63"),
                     "posix.system"))  # fmt: skip
    return cases


# -- malformed inputs ----------------------------------------------------------------------------


def _safetensors(header: object, body: bytes = b"", raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _bad_crc(data: bytes, name: bytes) -> bytes:
    """Flip one byte of an entry's data so its CRC fails."""
    at = data.index(name) + len(name)
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _set_method(data: bytes, method: int, flag: int = 0) -> bytes:
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = out.find(sig)
        while at >= 0:
            out[at + off : at + off + 2] = struct.pack("<H", method)
            flags = struct.unpack("<H", out[at + off - 2 : at + off])[0] | flag
            out[at + off - 2 : at + off] = struct.pack("<H", flags)
            at = out.find(sig, at + 4)
    return bytes(out)


def _zip_bomb() -> bytes:
    """0.9 MB of deflate that inflates to 1.8 GB, as data.pkl of a torch-like zip."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(b"\x00" * (1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    raw = block * 1800 + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    name = b"archive/data.pkl"
    crc, size = 0, 1800 << 20
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(raw), size,
                        len(name), 0) + name  # fmt: skip
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(raw), size,
                          len(name), 0, 0, 0, 0, 0, 0) + name  # fmt: skip
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central),
                      len(local) + len(raw), 0)  # fmt: skip
    return local + raw + central + end


def _central_version(data: bytes, version: int) -> bytes:
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 6 : at + 8] = struct.pack("<H", version)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def _directory_moved(data: bytes, shift: int) -> bytes:
    """The end record says the central directory starts `shift` bytes later than it does, so
    zipfile places every entry's local header `shift` bytes before the file (found by atheris)."""
    out = bytearray(data)
    at = out.rfind(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", out, at + 16)
    struct.pack_into("<I", out, at + 16, offset + shift)
    return bytes(out)


def _nested_list(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _nested_memo(depth: int) -> bytes:
    """[[[...]]] built one level at a time through the memo: the stack never grows."""
    out = [b"\x80\x02]r\x00\x00\x00\x000"]
    for i in range(1, depth):
        out.append(b"]j" + struct.pack("<I", i - 1) + b"ar" + struct.pack("<I", i) + b"0")
    out.append(b"j" + struct.pack("<I", depth - 1))
    return b"".join(out) + b"."


def _dag(levels: int) -> bytes:
    """L0 = [1, 1]; L(n) = [L(n-1), L(n-1)]: 9 bytes a level, 2**levels leaves when walked."""
    out = [b"\x80\x02](K\x01K\x01eq\x000"]
    for i in range(1, levels):
        out.append(b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i]) + b"0")
    out.append(b"h" + bytes([levels - 1]))
    return b"".join(out) + b"."


def _many_refs(n: int) -> bytes:
    """A list of n references to one tensor."""
    return b"\x80\x02](" + tensor_body((1,), (1,), 1) + b"q\x01" + b"h\x01" * (n - 1) + b"e."


def _small_ints(n: int) -> bytes:
    return b"\x80\x02](" + b"M\x01\x01" * n + b"e."


def _quadratic_set(n: int, m: int) -> bytes:
    out = b"\x80\x02](" + b"K\x01" * n + b"eq\x00" + g("builtins", "frozenset") + b"q\x01]("
    out += b"h\x01h\x00\x85R" * m
    return out + b"e."


def _dcp(offset: bytes, rel: str = "__0_0.distcp") -> bytes:
    """A DCP .metadata whose _StorageInfo offset is `offset` (pickle bytes), in file `rel`."""
    meta = g("torch.distributed.checkpoint.metadata", "Metadata") + b")\x81}("
    meta += su("state_dict_metadata") + b"}" + su("storage_data") + b"}("
    meta += g("torch.distributed.checkpoint.metadata", "MetadataIndex") + b")\x81"
    meta += g("torch.distributed.checkpoint.filesystem", "_StorageInfo") + b")\x81}("
    meta += su("relative_path") + su(rel) + su("offset") + offset
    meta += su("length") + b"K\x04ubu" + su("planner_data") + b"}ub."
    return b"\x80\x02" + meta


def malformed_cases() -> list[Case]:
    good_zip = torch_zip(b"\x80\x02}q\x00.")
    cases = [
        one("bad/zip data.pkl bad CRC", "bad", "model.pt",
            lambda m: _bad_crc(good_zip, b"archive/data.pkl")),
        one("bad/zip byteorder bad CRC", "bad", "model.pt",
            lambda m: _bad_crc(good_zip, b"archive/byteorder")),
        one("bad/zip unknown compression", "bad", "model.pt", lambda m: _set_method(good_zip, 99)),
        one("bad/zip encrypted flag", "bad", "model.pt", lambda m: _set_method(good_zip, 0, 1)),
        one("bad/zip corrupt deflate", "bad", "model.pt",
            lambda m: _set_method(good_zip, zipfile.ZIP_DEFLATED)),
        one("bad/zip invalid utf-8 name", "bad", "model.pt",
            lambda m: _set_method(good_zip.replace(b"archive/version", b"archive/v\xffrsion"),
                                  0, 0x800)),
        one("bad/zip version 99", "bad", "model.pt",
            lambda m: _central_version(good_zip, 99)),
        one("bad/zip bomb 0.9 MB", "bad", "model.pt", lambda m: _zip_bomb()),
        one("bad/zip local headers before the file", "bad", "model.pt",
            lambda m: _directory_moved(good_zip, 10**9), "error"),
        one("bad/zip local headers before the file, an entry twice", "bad", "model.pt",
            lambda m: _directory_moved(torch_zip(b"\x80\x02}q\x00.", [("archive/data/0", b"\0" * 4),
                                                  ("archive/data/0", b"\0" * 4)]), 10**9), "error"),
        one("bad/zip cut to 1 byte", "bad", "model.pt", lambda m: good_zip[:1]),
        one("bad/zip cut to 2 bytes", "bad", "model.pt", lambda m: good_zip[:2]),
        one("bad/zip cut to 3 bytes", "bad", "model.pt", lambda m: good_zip[:3]),
        one("bad/zip cut in half", "bad", "model.pt", lambda m: good_zip[: len(good_zip) // 2]),
        one("bad/safetensors shape 1e400", "bad", "m.safetensors",
            lambda m: _safetensors(None, raw=b'{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}}')),
        one("bad/safetensors 5000-digit int", "bad", "m.safetensors",
            lambda m: _safetensors(None, raw=b'{"w":{"dtype":"F32","shape":[' + b"9" * 5000
                                   + b'],"data_offsets":[0,4]}}')),
        one("bad/safetensors 100k nested arrays", "bad", "m.safetensors",
            lambda m: _safetensors(None, raw=b'{"w":{"dtype":"F32","shape":' + b"[" * 100000
                                   + b"]" * 100000 + b',"data_offsets":[0,4]}}')),
        one("bad/safetensors negative dim", "bad", "m.safetensors",
            lambda m: _safetensors({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}},
                                   b"\0" * 16)),
        one("bad/safetensors overlapping", "bad", "m.safetensors",
            lambda m: _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                                   b"\0" * 12)),
        one("bad/safetensors F4 odd", "bad", "m.safetensors",
            lambda m: _safetensors({"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}},
                                   b"\0")),
        one("bad/safetensors string offsets", "bad", "m.safetensors",
            lambda m: _safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}},
                                   b"\0" * 4)),
        one("bad/safetensors bool shape", "bad", "m.safetensors",
            lambda m: _safetensors({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
                                   b"\0" * 4)),
        one("bad/safetensors dtype list", "bad", "m.safetensors",
            lambda m: _safetensors({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
                                   b"\0" * 4)),
        one("bad/safetensors metadata list", "bad", "m.safetensors",
            lambda m: _safetensors({"__metadata__": [1]})),
        one("bad/safetensors header list", "bad", "m.safetensors", lambda m: _safetensors([1, 2])),
        one("bad/safetensors not utf-8", "bad", "m.safetensors",
            lambda m: _safetensors(None, raw=b'{"\xff":1}')),
        one("bad/safetensors huge shape overflow", "bad", "m.safetensors",
            lambda m: _safetensors({"w": {"dtype": "F32", "shape": [2**62, 2**62],
                                          "data_offsets": [0, 4]}}, b"\0" * 4)),
        one("bad/pickle bytearray(1.5e9)", "bad", "model.pt",
            lambda m: wrap(call(g("builtins", "bytearray"), b"J\x00\x2f\x68\x59"))),
        one("bad/pickle huge LONG_BINPUT", "bad", "model.pt",
            lambda m: b"\x80\x02}r\xff\xff\xff\x7f."),
        one("bad/pickle huge BINBYTES8", "bad", "model.pt",
            lambda m: b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"."),
        one("bad/pickle 5000-digit LONG4", "bad", "model.pt",
            lambda m: b"\x80\x02}(" + su("step") + b"\x8b" + struct.pack("<i", 2100)
            + b"\x07" * 2100 + b"u."),
        one("bad/pickle 5000-digit INT text", "bad", "model.pt",
            lambda m: b"(dp0\nS'step'\nI" + b"9" * 5000 + b"\ns."),
        one("bad/pickle str unknown encoding", "bad", "model.pt",
            lambda m: wrap(call(g("builtins", "str"), b"C\x02ab", su("base64")))),
        one("bad/pickle codecs base64", "bad", "model.pt",
            lambda m: wrap(call(g("_codecs", "encode"), su("abc"), su("base64")))),
        one("bad/pickle 100k nested lists (stack)", "bad", "model.pt", lambda m: _nested_list(100_000)),
        one("bad/pickle 100k nested marks", "bad", "model.pt",
            lambda m: b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b"."),
        one("bad/pickle 100k nested via memo", "bad", "model.pt", lambda m: _nested_memo(100_000)),
        # found by the seeded fuzzer: a global and an attribute named with control characters
        one("bad/pickle names with a newline and NULs", "bad", "model.pt",
            lambda m: b"\x80\x02}(\x8c\n\x00\x00\x00tr\n(cbuiltins\n__import__\n(\x8c\x02ostR"
                      b"\x8c\x06systemtR(\x8c\x04truemtRu.", "error"),
        one("bad/pickle DAG 3 KB", "bad", "model.pt", lambda m: _dag(250)),
        one("bad/pickle quadratic frozenset", "bad", "model.pt", lambda m: _quadratic_set(50_000, 200_000)),
        one("bad/tensor shape (-1, 4)", "bad", "model.pt",
            lambda m: torch_zip(tensor_pickle((2**64 - 1, 4), (4, 1)), [("archive/data/0", b"\0" * 16)])),
        one("bad/tensor negative shape", "bad", "model.pt",
            lambda m: torch_zip(tensor_pickle((-1, 4), (4, 1)), [("archive/data/0", b"\0" * 16)])),
        one("bad/tensor negative stride", "bad", "model.pt",
            lambda m: torch_zip(tensor_pickle((2, 2), (-2, 1)), [("archive/data/0", b"\0" * 16)])),
        one("bad/tensor shape 10**400 stride 0", "bad", "model.pt",
            lambda m: torch_zip(tensor_pickle((10**400,), (0,)), [("archive/data/0", b"\0" * 16)])),
        one("bad/tensor past its storage", "bad", "model.pt",
            lambda m: torch_zip(tensor_pickle((4, 4), (4, 1)), [("archive/data/0", b"\0" * 16)])),
        one("bad/dcp string offset", "bad", ".metadata", lambda m: _dcp(su("12"))),
        one("bad/dcp huge offset", "bad", ".metadata", lambda m: _dcp(b"\x8a\x09" + b"\xff" * 8 + b"\x7f")),
        one("bad/dcp NUL in a data file name", "bad", ".metadata",
            lambda m: _dcp(b"K\x00", "__0\x00_0.distcp"), "error"),
        one("bad/pickle 10M small ints (20 MB)", "bad", "model.pt", lambda m: _small_ints(10_000_000),
            big=True),
        one("bad/pickle 1M small ints (3 MB)", "bad", "model.pt", lambda m: _small_ints(1_000_000)),
        one("bad/pickle 10M refs to one tensor (20 MB)", "bad", "model.pt",
            lambda m: torch_zip(_many_refs(10_000_000), [("archive/data/0", b"\0" * 4)]), big=True),
        one("bad/pickle 1M refs to one tensor", "bad", "model.pt",
            lambda m: torch_zip(_many_refs(1_000_000), [("archive/data/0", b"\0" * 4)])),
    ]  # fmt: skip
    for case in cases:
        if "small ints" not in case.name and "LONG_BINPUT" not in case.name:
            case.expect = "error"  # an invalid file must be reported, not accepted
    cases += sidecar_cases()
    return cases


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/zero", path)


def _alias_bomb() -> bytes:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return ("\n".join(lines) + "\n").encode()


def _hf(folder: Path, state: Callable[[Path], None]) -> None:
    ck = folder / "run" / "checkpoint-4"
    write(ck, "optimizer.pt", torch_zip(b"\x80\x02}q\x00."))
    write(ck, "scheduler.pt", torch_zip(b"\x80\x02}q\x00."))
    state(ck / "trainer_state.json")


def _sb(folder: Path, yaml: Callable[[Path], None], counter: Callable[[Path], None]) -> None:
    ck = folder / "save" / "CKPT+2024-01-01+00-00-00+00"
    write(ck, "model.ckpt", torch_zip(b"\x80\x02}q\x00."))
    yaml(ck / "CKPT.yaml")
    counter(ck / "counter.ckpt")


def _ds(folder: Path, latest: Callable[[Path], None]) -> None:
    ck = folder / "ds" / "global_step2"
    write(ck, "mp_rank_00_model_states.pt", torch_zip(b"\x80\x02}q\x00."))
    latest(folder / "ds" / "latest")


def _text(data: bytes) -> Callable[[Path], None]:
    return lambda p: write(p.parent, p.name, data) and None


def _deep_json() -> bytes:
    return b'{"global_step": 1, "log_history": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _wenet(folder: Path) -> None:
    write(folder, "exp/epoch_3.pt", torch_zip(b"\x80\x02}q\x00."))
    write(folder, "exp/epoch_3.yaml", _alias_bomb())


def sidecar_cases() -> list[Case]:
    ok_yaml = _text(b"epoch: 1\n")
    ok_counter = _text(b"1\n")
    return [
        Case("bad/trainer_state.json is a FIFO", "bad", lambda d, m: _hf(d, _fifo)),
        Case("bad/trainer_state.json -> /dev/zero", "bad", lambda d, m: _hf(d, _zero)),
        Case("bad/trainer_state.json deeply nested", "bad", lambda d, m: _hf(d, _text(_deep_json()))),
        Case("bad/trainer_state.json 5000-digit step", "bad",
             lambda d, m: _hf(d, _text(b'{"global_step": ' + b"9" * 5000 + b"}"))),
        Case("bad/CKPT.yaml is a FIFO", "bad", lambda d, m: _sb(d, _fifo, ok_counter)),
        Case("bad/CKPT.yaml alias bomb", "bad", lambda d, m: _sb(d, _text(_alias_bomb()), ok_counter)),
        Case("bad/CKPT.yaml deeply nested", "bad",
             lambda d, m: _sb(d, _text(b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"), ok_counter)),
        Case("bad/CKPT.yaml python tag", "bad",
             lambda d, m: _sb(d, _text(b"a: !!python/object/apply:os.system ['touch " + str(m).encode()
                                       + b"']\n"), ok_counter)),
        Case("bad/counter.ckpt -> /dev/zero", "bad", lambda d, m: _sb(d, ok_yaml, _zero)),
        Case("bad/counter.ckpt 5000 digits", "bad", lambda d, m: _sb(d, ok_yaml, _text(b"9" * 5000))),
        Case("bad/deepspeed latest is a FIFO", "bad", lambda d, m: _ds(d, _fifo)),
        Case("bad/deepspeed latest -> /dev/zero", "bad", lambda d, m: _ds(d, _zero)),
        Case("bad/wenet epoch_3.yaml alias bomb", "bad",
             lambda d, m: _wenet(d)),
        Case("bad/funasr saved_ckpts 100k deep", "bad",
             lambda d, m: write(d, "model.pt.ep3", torch_zip(b"\x80\x02}(" + su("saved_ckpts")
                                                             + _nested_memo(100_000)[2:-1] + b"u."))
             and None),
        Case("bad/lightning hyper_parameters 100k deep", "bad",
             lambda d, m: write(d, "last.ckpt", torch_zip(b"\x80\x02}(" + su("hyper_parameters")
                                                         + _nested_memo(100_000)[2:-1] + su("state_dict")
                                                         + b"}" + su("pytorch-lightning_version")
                                                         + su("2.0") + b"u.")) and None),
        Case("bad/lightning 5000-digit step", "bad",
             lambda d, m: write(d, "last.ckpt", torch_zip(b"\x80\x02}(" + su("global_step") + b"\x8b"
                                                         + struct.pack("<i", 2100) + b"\x07" * 2100
                                                         + su("state_dict") + b"}u.")) and None),
    ]  # fmt: skip


def all_cases() -> list[Case]:
    return code_running_cases() + malformed_cases()


def check(case: Case, folder: Path, marker: Path) -> str | None:
    """Build `case` in `folder` (empty), scan it as the CLI does; None when the outcome is safe,
    else what went wrong (one line)."""
    from ckpttui.formats import read_file
    from ckpttui.inventory import report_dict, scan
    from ckpttui.textreport import print_report

    (folder / "case").mkdir()
    case.build(folder / "case", marker)
    write(folder, "zz-good/zz-good.pt", torch_zip(b"\x80\x02}q\x00."))
    inv = scan(folder)
    report = report_dict(inv)
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        print_report(inv)
    json.dumps(report)
    if marker.exists():
        return "the payload ran"
    errors = {e["path"]: e["error"] for e in report["errors"]}
    if any("\n" in e for e in errors.values()) or any(
        "\n" in p for c in report["checkpoints"] for p in c["problems"]
    ):
        return "an error spans several lines"
    if "zz-good/zz-good.pt" in errors or not any(
        c["path"].startswith("zz-good") for c in report["checkpoints"]
    ):
        return "the good file beside it was not read"
    files = sorted(p for p in (folder / "case").rglob("*") if p.is_file())
    index = inv.files.get(str(files[0])) or read_file(files[0])
    if case.kind == "run":
        named = " ".join(index.metadata.get("dangerous_globals", []))
        if not index.error or case.expect not in named:
            return f"not reported as running {case.expect}: {index.error!r} ({named})"
        if "RUNS CODE ON LOAD" not in out.getvalue():
            return "the text report does not flag the checkpoint"
    elif case.expect == "error" and not index.error:
        return "accepted though invalid"
    if index.error and index.error.startswith("unreadable ("):
        return f"a reader let an exception escape: {index.error}"
    return None
