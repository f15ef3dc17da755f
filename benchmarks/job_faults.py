"""Job faults: run every fault category against every kind of output; print cases tried/passed.

The issue's categories (issue 12, "Jobs"): two jobs on one output, a file or folder created at
the output during the job, ``--force`` while someone changes the old output, signals to the CLI
(SIGINT, SIGTERM, SIGHUP: a dropped SSH session) and to the app's child runner, kill -9 then
``inspect`` and ``clean``, and a full disk. Each runs against four outputs: export to one
``.safetensors``, export to a folder of shards, export to a slim ``.pt`` and average to
``.safetensors``.

Every job runs in a child process (the real CLI, or the app's runner) whose tensor writers wait
at a gate after each tensor, so a case acts while the job is provably mid-write; nothing depends
on timing. A case passes when no data the job did not own was lost or replaced, nothing of the
job is left behind (``NAME.tmp-*``, ``NAME.lock``), and the job's one-line message names the file
(and the other job's pid) where the category asks for it.

    python benchmarks/job_faults.py [--kinds file,sharded,torch,average] [--cases two-jobs,...]
                                    [--src OTHER_CHECKOUT/src]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

from ckpttui.formats import read_file  # no torch

GATE = r"""
import sys, time
from pathlib import Path

gate = Path(sys.argv[1])
from ckpttui.jobs import atomic, pt_writer, st_writer

if (gate / "no-space-check").exists():
    atomic.check_free_space = lambda *args: None  # as if the disk filled after the check


def gated(orig):
    def write(self, name, tensor):
        n = orig(self, name, tensor)
        (gate / "writing").touch()
        for _ in range(3000):
            if (gate / "go").exists():
                break
            time.sleep(0.05)
        return n
    return write


st_writer.SafetensorsWriter.write = gated(st_writer.SafetensorsWriter.write)
pt_writer.TorchZipWriter.write = gated(pt_writer.TorchZipWriter.write)
if sys.argv[2] == "runner":
    from ckpttui.jobs.runner import main
    sys.exit(main(sys.argv[3:]))
from ckpttui.cli import main
sys.exit(main(sys.argv[2:]))
"""

KINDS = ("file", "sharded", "torch", "average")


JOB_SRC = SRC
"""The ckpttui sources the jobs run from (``--src``: measure another checkout, e.g. main)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(JOB_SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Gated:
    """A job in a child process that waits after each tensor until `go`."""

    def __init__(self, gate: Path, args: list[str], no_space_check: bool = False) -> None:
        gate.mkdir(parents=True, exist_ok=True)
        if no_space_check:
            (gate / "no-space-check").touch()
        self.gate = gate
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GATE, str(gate), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_writing(self) -> None:
        while not (self.gate / "writing").exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended before writing: {self.proc.communicate()[1]}")
            time.sleep(0.02)

    def go(self) -> None:
        (self.gate / "go").touch()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=600)
        return self.proc.returncode, out, err


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckpttui", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )


def make_inputs(folder: Path, count: int, numel: int) -> list[Path]:
    """Two safetensors checkpoints of one model, `count` float32 tensors of `numel` each."""
    import torch
    from safetensors.torch import save_file

    paths = []
    for k in range(2):
        path = folder / f"ckpt{k}.safetensors"
        save_file(
            {f"layer{i}.weight": torch.full((numel,), float(i + k)) for i in range(count)}, path
        )
        paths.append(path)
    return paths


class Case:
    """One kind of output in a fresh folder: builds the job's arguments, checks what is there."""

    def __init__(
        self, kind: str, work: Path, inputs: list[Path], gate_root: Path | None = None
    ) -> None:
        self.kind = kind
        self.gate_root = gate_root or work.parent
        self.work = work
        self.inputs = inputs
        name = {"file": "out.safetensors", "sharded": "shards", "torch": "out.pt"}
        self.out = work / name.get(kind, "avg.safetensors")
        self._gates = 0

    def args(self, *extra: str) -> list[str]:
        if self.kind == "average":
            return ["average", *map(str, self.inputs), "-o", str(self.out), *extra]
        shard = ["--max-shard-size", "20KB"] if self.kind == "sharded" else []
        return ["export", str(self.inputs[0]), "-o", str(self.out), *shard, *extra]

    def spec(self) -> str:
        if self.kind == "average":
            args = {"inputs": list(map(str, self.inputs)), "out": str(self.out)}
            return json.dumps({"kind": "average", "args": args})
        args = {"src": str(self.inputs[0]), "out": str(self.out)}
        if self.kind == "sharded":
            args["max_shard_size"] = "20KB"
        return json.dumps({"kind": "export", "args": args})

    def gated(self, args: list[str], no_space_check: bool = False) -> Gated:
        self._gates += 1
        return Gated(self.gate_root / f"gate{self._gates}", args, no_space_check)

    def leftovers(self) -> list[str]:
        return sorted(
            p.name for p in self.work.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock")
        )

    def output_ok(self) -> bool:
        """The output is a complete checkpoint of every planned tensor."""
        files = sorted(self.out.glob("*.safetensors")) if self.out.is_dir() else [self.out]
        count = 0
        for f in files:
            index = read_file(f)
            if index.error:
                return False
            count += len(index.tensors)
        return count == 4


def one_line(err: str) -> str:
    """The job's one error line (log lines, indented, may come before it)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("  ")]
    assert len(lines) == 1 and "Traceback" not in err, f"not one line: {err!r}"
    return lines[0]


def check(cond: bool, why: str) -> None:
    if not cond:
        raise AssertionError(why)


def put_theirs(path: Path, folder: bool, text: str = "theirs") -> None:
    if folder:
        path.mkdir()
        (path / "theirs.txt").write_text(text)
    else:
        path.write_text(text)


def read_theirs(path: Path, folder: bool) -> str:
    return (path / "theirs.txt").read_text() if folder else path.read_text()


# ------------------------------------------------------------------ the categories


def two_jobs(c: Case, force: bool) -> None:
    first = c.gated(c.args())
    first.wait_writing()
    second = cli(*c.args(*(["--force"] if force else [])))
    check(second.returncode == 1, f"second job exit {second.returncode}")
    line = one_line(second.stderr)
    check(f"pid {first.pid}" in line and str(c.out) in line, f"does not name pid/output: {line}")
    first.go()
    code, _, err = first.finish()
    check(code == 0, f"first job failed: {err}")
    check(c.output_ok(), "first job's output damaged")
    check(c.leftovers() == [], f"left behind: {c.leftovers()}")


def appears(c: Case, folder: bool) -> None:
    job = c.gated(c.args())
    job.wait_writing()
    put_theirs(c.out, folder)
    job.go()
    code, _, err = job.finish()
    check(code == 1, f"job exit {code}")
    line = one_line(err)
    check(str(c.out) in line and "appeared" in line, f"does not name it: {line}")
    check(read_theirs(c.out, folder) == "theirs", "what appeared was changed")
    check(c.leftovers() == [], f"left behind: {c.leftovers()}")


def force(c: Case, change: str) -> None:
    folder = c.kind == "sharded"
    put_theirs(c.out, folder, "old")
    job = c.gated(c.args("--force"))
    job.wait_writing()
    target = c.out / "theirs.txt" if folder else c.out
    if change == "modified":
        target.write_text("changed by someone else")
    elif change == "replaced":
        target.unlink()
        target.write_text("old")  # same bytes, another file
    job.go()
    code, _, err = job.finish()
    if change == "none":
        check(code == 0, f"job failed: {err}")
        replaced = not target.exists() if folder else target.read_bytes() != b"old"
        check(replaced and c.output_ok(), "old output not replaced by the new one")
    else:
        check(code == 1, f"job exit {code}")
        check("changed while this job ran" in one_line(err), f"unclear: {err}")
        want = "changed by someone else" if change == "modified" else "old"
        check(target.read_text() == want, "the changed output was replaced")
    check(c.leftovers() == [], f"left behind: {c.leftovers()}")


def cli_signal(c: Case, signum: int) -> None:
    job = c.gated(c.args())
    job.wait_writing()
    job.proc.send_signal(signum)
    code, _, err = job.finish()
    check(code == 128 + signum, f"exit {code}: {err}")
    check("Traceback" not in err, f"traceback: {err}")
    check(not os.path.lexists(c.out), "an output was written")
    check(c.leftovers() == [], f"left behind: {c.leftovers()}")


def runner_signal(c: Case, signum: int) -> None:
    job = c.gated(["runner", c.spec()])
    job.wait_writing()
    job.proc.send_signal(signum)
    job.go()
    code, out, _ = job.finish()
    last = json.loads(out.splitlines()[-1])
    check(code == 1 and last["kind"] == "error" and last["data"].get("cancelled"), str(last))
    check(not os.path.lexists(c.out), "an output was written")
    check(c.leftovers() == [], f"left behind: {c.leftovers()}")


def _temp_problem(c: Case, temp: str) -> str:
    proc = cli("inspect", str(c.work), "--json")
    check(proc.returncode == 0, proc.stderr)
    report = json.loads(proc.stdout)
    problems = {x["path"]: x["problems"] for x in report["checkpoints"]}
    return problems[temp][0] if problems.get(temp) else ""


def kill9(c: Case) -> None:
    job = c.gated(c.args())
    job.wait_writing()
    (temp,) = [p.name for p in c.work.iterdir() if ".tmp-" in p.name]
    check(f".tmp-{job.pid}-" in temp, f"temp name has no pid: {temp}")
    said = _temp_problem(c, temp)
    check(said == f"still being written by pid {job.pid}", f"while running: {said!r}")
    job.proc.kill()
    job.finish()
    said = _temp_problem(c, temp)
    check(said.startswith(f"abandoned by pid {job.pid}"), f"after kill -9: {said!r}")
    proc = cli("clean", str(c.work), stdin="y\n")
    check(proc.returncode == 0, f"clean: {proc.stdout} {proc.stderr}")
    check(c.leftovers() == [], f"left behind after clean: {c.leftovers()}")


def enospc(c: Case, tiny: Path | None) -> None:
    if tiny is None:
        raise AssertionError("no tmpfs (needs root and mount)")
    for p in tiny.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    big = c.work.parent / "big"
    big.mkdir(exist_ok=True)
    inputs = make_inputs(big, 4, 100_000)  # 1.6 MB > the 1 MiB file system
    case = Case(c.kind, tiny, inputs, gate_root=c.work.parent / "tiny-gates")
    job = case.gated(case.args(), no_space_check=True)
    job.go()
    code, _, err = job.finish()
    check(code == 1, f"exit {code}")
    line = one_line(err)
    check(str(case.out) in line and "No space left on device" in line, f"unclear: {line}")
    check(list(tiny.iterdir()) == [], f"left behind: {list(tiny.iterdir())}")


CASES: dict[str, Callable[[Case, Path | None], None]] = {
    "two-jobs": lambda c, t: two_jobs(c, force=False),
    "two-jobs-force": lambda c, t: two_jobs(c, force=True),
    "file-appears": lambda c, t: appears(c, folder=False),
    "folder-appears": lambda c, t: appears(c, folder=True),
    "force-modified": lambda c, t: force(c, "modified"),
    "force-replaced": lambda c, t: force(c, "replaced"),
    "force-unchanged": lambda c, t: force(c, "none"),
    "cli-sigint": lambda c, t: cli_signal(c, signal.SIGINT),
    "cli-sigterm": lambda c, t: cli_signal(c, signal.SIGTERM),
    "cli-sighup": lambda c, t: cli_signal(c, signal.SIGHUP),
    "runner-sigterm": lambda c, t: runner_signal(c, signal.SIGTERM),
    "runner-sighup": lambda c, t: runner_signal(c, signal.SIGHUP),
    "kill-9-inspect-clean": lambda c, t: kill9(c),
    "disk-full": enospc,
}


def mount_tiny(folder: Path) -> Path | None:
    tiny = folder / "tiny"
    tiny.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], capture_output=True
    )
    return tiny if proc.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--src", type=Path, default=SRC, help="ckpttui sources to run the jobs from")
    opts = ap.parse_args()
    global JOB_SRC
    JOB_SRC = opts.src.resolve()
    kinds = opts.kinds.split(",")
    names = opts.cases.split(",")
    root = Path(tempfile.mkdtemp(prefix="ckpttui-faults-"))
    tiny = mount_tiny(root)
    inputs = make_inputs(root, 4, 8192)
    tried = passed = 0
    failures = []
    try:
        for name in names:
            for kind in kinds:
                case_dir = root / f"{name}-{kind}"
                work = case_dir / "work"
                work.mkdir(parents=True)
                t0 = time.monotonic()
                tried += 1
                try:
                    CASES[name](Case(kind, work, inputs), tiny)
                except Exception as exc:  # a failed case, reported below
                    failures.append((name, kind, f"{type(exc).__name__}: {exc}"))
                    status = "FAIL"
                else:
                    passed += 1
                    status = "ok"
                print(f"{name:22} {kind:8} {status:4} {time.monotonic() - t0:5.1f} s", flush=True)
    finally:
        if tiny is not None:
            subprocess.run(["umount", str(tiny)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    for name, kind, why in failures:
        print(f"FAILED {name} [{kind}]: {why}")
    print(f"job faults: {tried} tried, {passed} passed, {tried - passed} failed")
    return 0 if passed == tried else 1


if __name__ == "__main__":
    raise SystemExit(main())
