"""Fuzz harness for every reader and sidecar parser: only the project's error types may escape.

Targets: the torch zip, legacy and plain-pickle readers, the safetensors and DCP readers,
`read_file` (sniffing included), and the JSON, YAML and text sidecar parsers. Seeds are real
files written by torch, safetensors and torch.distributed.checkpoint, plus the hostile cases.

* In the suite (tests/formats/test_fuzz.py): a seeded mutator, a fixed number of inputs.
* Long run: ``./dev fuzz [SECONDS]`` runs this file: coverage-guided with atheris when it is
  installed (libFuzzer stops on an escaping exception, a hang past 10 s or 2 GB of memory), else
  the seeded mutator for that long. Either reports the escaping exception types it found.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

PER_INPUT_SECONDS = 10


class Hang(Exception):
    """An input took longer than PER_INPUT_SECONDS."""


_TARGETS: dict[str, Callable[[bytes, Path], None]] = {}


def targets() -> dict[str, Callable[[bytes, Path], None]]:
    """Every reader and sidecar parser, wrapped to swallow only the project's error types.

    Imported lazily, so that `./dev fuzz` can import ckpttui under atheris' instrumentation."""
    if _TARGETS:
        return _TARGETS
    from ckpttui.formats import (
        FormatError,
        dcp,
        read_file,
        safetensors,
        sidecar,
        torch_legacy,
        torch_zip,
    )

    def reader(fn: Callable[[Path, int], Any], name: str) -> Callable[[bytes, Path], None]:
        def run(data: bytes, folder: Path) -> None:
            path = folder / name
            path.write_bytes(data)
            try:
                fn(path, len(data))
            except (FormatError, OSError):
                pass

        return run

    def whole(name: str) -> Callable[[bytes, Path], None]:
        def run(data: bytes, folder: Path) -> None:
            path = folder / name
            path.write_bytes(data)
            index = read_file(path)
            if index.error is not None and "\n" in index.error:
                raise AssertionError("error spans two lines")
            if index.error and index.error.startswith("unreadable ("):
                raise AssertionError(f"a reader let an exception escape: {index.error}")

        return run

    def parser(fn: Callable[[bytes], Any]) -> Callable[[bytes, Path], None]:
        def run(data: bytes, folder: Path) -> None:
            try:
                fn(data)
            except sidecar.SidecarError:
                pass

        return run

    def sidecar_file(fn: Callable[[Path], Any], name: str) -> Callable[[bytes, Path], None]:
        def run(data: bytes, folder: Path) -> None:
            path = folder / name
            path.write_bytes(data)
            try:
                fn(path)
            except sidecar.SidecarError:
                pass

        return run

    _TARGETS.update(
        {
            "zip": reader(torch_zip.read, "model.pt"),
            "legacy": reader(torch_legacy.read, "model.pt"),
            "pickle": reader(torch_legacy.read_plain_pickle, "model.pt"),
            "safetensors": reader(safetensors.read, "model.safetensors"),
            "dcp": reader(dcp.read, ".metadata"),
            "read_file": whole("model.pt"),
            "read_file_st": whole("model.safetensors"),
            "json": parser(sidecar.loads_json),
            "yaml": parser(sidecar.loads_yaml),
            "text": sidecar_file(sidecar.read_text, "counter.ckpt"),
            "json_file": sidecar_file(sidecar.read_json, "trainer_state.json"),
        }
    )
    return _TARGETS


# Which seeds feed which targets.
KIND_TARGETS = {
    "zip": ["zip", "read_file"],
    "legacy": ["legacy", "read_file"],
    "pickle": ["pickle", "read_file"],
    "safetensors": ["safetensors", "read_file_st"],
    "dcp": ["dcp"],
    "json": ["json", "json_file", "text"],
    "yaml": ["yaml", "text"],
}
KIND_TARGETS_ALL = sorted({t for ts in KIND_TARGETS.values() for t in ts})


def seeds() -> list[tuple[str, bytes]]:
    """Real files (torch.save, safetensors, DCP) and hand-built hostile ones, by kind."""
    import io
    import pickle

    import torch
    from safetensors.torch import save as st_save

    out: list[tuple[str, bytes]] = []
    state = {
        "model": {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(3)},
        "step": 7,
        "opt": {"lr": 0.1, "betas": (0.9, 0.99), "names": ["a", "b"]},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    out.append(("zip", buf.getvalue()))
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    out.append(("legacy", buf.getvalue()))
    out.append(("pickle", pickle.dumps({"a": [1, 2.5, "x", None, True], "b": (1,)}, protocol=2)))
    out.append(("pickle", pickle.dumps({"a": [1, 2.5, "x"], "s": {1, 2}}, protocol=4)))
    out.append(("pickle", pickle.dumps({"a": [1, "x"], "b": b"\x00"}, protocol=0)))
    out.append(
        ("safetensors", st_save({"w": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.int8)}))
    )
    with tempfile.TemporaryDirectory() as d:
        import torch.distributed.checkpoint as dist_cp

        dist_cp.save({"w": torch.ones(4, 2), "n": 3}, checkpoint_id=d)
        out.append(("dcp", (Path(d) / ".metadata").read_bytes()))
    out.append(("json", b'{"global_step": 4, "log_history": [{"loss": 1.5, "step": 2}], "x": NaN}'))
    out.append(("yaml", b"epoch: 3\nloss: 1.25\nlist: [1, 2, {a: b}]\nref: &r {x: 1}\nagain: *r\n"))
    from hostile_cases import all_cases

    with tempfile.TemporaryDirectory() as d:
        for i, case in enumerate(all_cases()):
            if case.big or "bomb" in case.name:
                continue
            folder = Path(d) / str(i)
            folder.mkdir()
            case.build(folder, folder / "m")
            for p in folder.rglob("*"):
                if not p.is_file() or p.stat().st_size > 64_000:
                    continue
                kind = _kind(p)
                if kind:
                    out.append((kind, p.read_bytes()))
    return out


def _kind(p: Path) -> str | None:
    head = p.read_bytes()[:16]
    if p.suffix == ".safetensors":
        return "safetensors"
    if p.name == ".metadata":
        return "dcp"
    if p.suffix == ".json":
        return "json"
    if p.suffix == ".yaml":
        return "yaml"
    if head.startswith(b"PK"):
        return "zip"
    if head.startswith(b"\x80\x02\x8a\x0a"):
        return "legacy"
    return "pickle"


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x28, 0x2E, 0x52, 0x63, 0x71, 0x8A, 0x93, 0x94]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """A few random edits: bit flips, interesting bytes, cuts, copies, splices, integers."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(9)
        n = len(buf)
        at = rng.randrange(n) if n else 0
        if op == 0 and n:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[at] = rng.choice(_INTERESTING)
        elif op == 2 and n:
            del buf[at : at + rng.randint(1, 64)]
        elif op == 3 and n:
            chunk = buf[at : at + rng.randint(1, 64)]
            buf[at:at] = chunk * rng.randint(1, 8)
        elif op == 4:
            buf = buf[: rng.randrange(n + 1)]
        elif op == 5 and corpus:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                buf[at:at] = other[start : start + rng.randint(1, 256)]
        elif op == 6 and n >= 8:
            at = rng.randrange(n - 7)
            value = rng.choice([0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**62, 2**40])
            buf[at : at + 8] = (value & (2**64 - 1)).to_bytes(8, "little")
        elif op == 7 and n:
            digits = str(rng.choice([0, -1, 1e400, 10**30, 2**64, -(2**63)])).encode()
            buf[at:at] = digits
        elif op == 8 and n:
            buf[at:at] = bytes([rng.choice(b"[{(]})")]) * rng.randint(1, 2000)
    return bytes(buf)


def run_one(target: str, data: bytes, folder: Path) -> str | None:
    """None when the target handled `data`; else the escaping exception type and where."""
    signal.setitimer(signal.ITIMER_REAL, PER_INPUT_SECONDS)
    try:
        targets()[target](data, folder)
        return None
    except Hang:
        return "hang"
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return f"{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def fuzz(
    iterations: int | None = None,
    seconds: float | None = None,
    seed: int = 12,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the seeded mutator; returns counts, escaping types (with one input each), peak RSS."""
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(seed)
    pool = seeds()
    corpus = [d for _, d in pool]
    found: dict[str, tuple[str, bytes]] = {}
    tried = 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        while True:
            if iterations is not None and tried >= iterations:
                break
            if seconds is not None and time.monotonic() - start > seconds:
                break
            kind, data = rng.choice(pool)
            target = rng.choice(KIND_TARGETS[kind])
            sample = mutate(rng, data, corpus)
            problem = run_one(target, sample, folder)
            tried += 1
            if problem and problem not in found:
                found[problem] = (target, sample)
                if log:
                    log(f"found {problem} ({target}, {len(sample)} bytes)")
            for p in folder.iterdir():
                p.unlink()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "tried": tried,
        "problems": found,
        "seconds": time.monotonic() - start,
        "peak_rss_growth_mb": (rss - rss0) / 1024,
    }


def write_corpus(folder: Path) -> None:
    """Seeds as atheris inputs: first byte = target index, the rest = the file."""
    names = sorted(KIND_TARGETS_ALL)
    for i, (kind, data) in enumerate(seeds()):
        for target in KIND_TARGETS[kind]:
            (folder / f"{i}-{target}").write_bytes(bytes([names.index(target)]) + data)


def atheris_main(seconds: int) -> None:
    """Coverage-guided run with atheris over ckpttui's readers (only ckpttui is instrumented;
    the seeds are written by a child process so torch is never imported here)."""
    import subprocess

    import atheris

    corpus_dir = Path(tempfile.mkdtemp(prefix="ckpttui-fuzz-corpus-"))
    subprocess.run([sys.executable, __file__, "--write-corpus", str(corpus_dir)], check=True)
    with atheris.instrument_imports(include=["ckpttui"]):
        import ckpttui.formats
        import ckpttui.formats.sidecar  # noqa: F401
    names = sorted(KIND_TARGETS_ALL)
    table = targets()
    work = Path(tempfile.mkdtemp(prefix="ckpttui-fuzz-"))

    def one(data: bytes) -> None:
        if data:
            table[names[data[0] % len(names)]](data[1:], work)

    atheris.Setup(
        [
            sys.argv[0],
            str(corpus_dir),
            f"-max_total_time={seconds}",
            # instrumented Python runs several times slower than the 10 s the benchmark holds
            f"-timeout={3 * PER_INPUT_SECONDS}",
            "-rss_limit_mb=2048",
            "-max_len=400000",
            "-print_final_stats=1",
        ],
        one,
    )
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=int, default=600)
    parser.add_argument("--mutator", action="store_true", help="seeded mutator even if atheris")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", "12")))
    parser.add_argument("--write-corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_corpus:
        write_corpus(args.write_corpus)
        return 0
    if not args.mutator:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: seeded mutator", file=sys.stderr)
        else:
            atheris_main(args.seconds)
            return 0
    result = fuzz(seconds=args.seconds, seed=args.seed, log=lambda s: print(s, flush=True))
    print(
        f"{result['tried']} inputs in {result['seconds']:.0f} s, "
        f"{len(result['problems'])} escaping types, "
        f"peak RSS growth {result['peak_rss_growth_mb']:.0f} MB"
    )
    for problem, (target, sample) in result["problems"].items():
        out = Path(tempfile.gettempdir()) / f"ckpttui-fuzz-{target}-{abs(hash(problem))}.bin"
        out.write_bytes(sample)
        print(f"  {problem} via {target}: {out}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
