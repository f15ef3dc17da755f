"""Round trip through the real toolkits: train with the toolkit, run ckpttui, load with the toolkit.

Each toolkit lives in ``interop/toolkits/tk_<name>.py``: its pins, how its venv is built, how it
trains a tiny model with its own entry point, which ckpttui commands run on the result and which of
its own loaders must accept each output. This driver (standard library only, run by the project's
own venv) builds each toolkit's venv under ``.interop/venvs/<name>`` (rebuilt when its pins
change), runs the toolkit side in that venv and ckpttui from the project's venv, prints one
``PASS``/``FAIL`` line per check, and writes the results.

    python interop/run.py [--light | --all] [TOOLKIT ...] [--work DIR] [--results FILE]

Exit code 0 when every check passed (or failed as a known, recorded ckpttui fault), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOOLKIT_DIR = HERE / "toolkits"
CACHE = REPO / ".interop"
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
ORDER = ("lightning", "transformers", "adapters", "funasr", "fairseq", "speechbrain", "espnet")


def load_toolkit(name: str) -> ModuleType:
    """Import ``tk_<name>.py`` for its declarations (it imports only the standard library at top)."""
    path = TOOLKIT_DIR / f"tk_{name}.py"
    spec = importlib.util.spec_from_file_location(f"interop_tk_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(TOOLKIT_DIR))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLKIT_DIR))
    return module


def project_python() -> Path:
    """The project's venv python (the one that runs ckpttui)."""
    return REPO / ".venv" / "bin" / "python"


def venv_key(tk: ModuleType) -> str:
    """A hash of everything that decides what the toolkit's venv holds."""
    spec = {
        "base": tk.BASE,
        "pre": list(getattr(tk, "PREINSTALL", [])),
        "pins": list(tk.PINS),
        "pip_args": list(getattr(tk, "PIP_ARGS", [])),
        "uninstall": list(getattr(tk, "UNINSTALL", [])),
        "python": platform.python_version(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def pip(py: Path, args: list[str], log: Path) -> None:
    """Run pip in a venv, appending its output to ``log``; raise with the log's tail on failure."""
    with log.open("a") as out:
        out.write(f"\n$ pip {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(
            [str(py), "-m", "pip", *args], stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if proc.returncode:
        tail = [ln for ln in log.read_text().splitlines() if "is ignored" not in ln][-15:]
        raise RuntimeError(f"pip {' '.join(args)} failed (log {log}):\n" + "\n".join(tail))


def ensure_venv(tk: ModuleType) -> Path:
    """Build (or reuse) ``.interop/venvs/<name>`` and return its python."""
    venv = CACHE / "venvs" / tk.NAME
    stamp = venv / ".ckpttui-interop-key"
    key = venv_key(tk)
    py = venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text().strip() == key and py.exists():
        return py
    if venv.exists():
        shutil.rmtree(venv)
    log = CACHE / "logs" / f"{tk.NAME}-venv.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    started = time.monotonic()
    print(f"[{tk.NAME}] building venv {venv.relative_to(REPO)} (log {log.relative_to(REPO)})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if tk.BASE == "project":
        # Layered on the project's venv: its torch (the CPU wheel) and whatever else it holds are
        # visible after the toolkit's own packages, which shadow them when versions differ.
        purelib = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        base = subprocess.run(
            [
                str(project_python()),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, "_ckpttui_project_venv.pth").write_text(base + "\n")
    # Big wheels fetched once (pip download -d .interop/wheels ...) are taken from there first.
    find_links = ["--find-links", str(CACHE / "wheels")] if (CACHE / "wheels").is_dir() else []
    pre = list(getattr(tk, "PREINSTALL", []))
    if pre and find_links:
        try:  # the multi-GB torch builds: from the local folder alone when they are there
            pip(py, ["install", "--no-index", *find_links, *pre], log)
        except RuntimeError:
            pip(py, ["install", *find_links, *pre], log)
    elif pre:
        pip(py, ["install", *pre], log)
    pip(py, ["install", *find_links, *getattr(tk, "PIP_ARGS", []), *tk.PINS], log)
    uninstall = list(getattr(tk, "UNINSTALL", []))
    if uninstall:
        pip(py, ["uninstall", "-y", *uninstall], log)
    stamp.write_text(key + "\n")
    print(f"[{tk.NAME}] venv ready in {time.monotonic() - started:.0f} s")
    return py


def toolkit_side(py: Path, tk: ModuleType, args: list[str], log: Path) -> tuple[int, str]:
    """Run ``tk_<name>.py ARGS`` in the toolkit venv; return its exit code and its stdout."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "WANDB_DISABLED": "true",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore",
        }
    )
    env.pop("PYTHONPATH", None)
    with log.open("a") as out:
        out.write(f"\n$ {tk.NAME} {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(
            [str(py), str(TOOLKIT_DIR / f"tk_{tk.NAME}.py"), *args],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            env=env,
            check=False,
        )
        out.write(proc.stdout)
    return proc.returncode, proc.stdout


CKPTTUI_SRC: Path | None = None  # --ckpttui-src: run ckpttui from another checkout's src/


def ckpttui(args: list[str], log: Path) -> tuple[int, str]:
    """Run the project's ckpttui; return its exit code and the first error line (or last line)."""
    env = dict(os.environ)
    if CKPTTUI_SRC is not None:
        env["PYTHONPATH"] = str(CKPTTUI_SRC)
    cmd = [str(project_python()), "-m", "ckpttui", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    with log.open("a") as out:
        out.write(f"\n$ ckpttui {' '.join(args)}\n[exit {proc.returncode}]\n")
        out.write(proc.stdout[-4000:])
        out.write(proc.stderr[-4000:])
    err = [ln for ln in proc.stderr.splitlines() if ln.strip() and "\r" not in ln]
    msg = err[-1] if err else (proc.stdout.strip().splitlines() or [""])[-1]
    return proc.returncode, msg.strip()


def ckpttui_revision() -> str:
    """The git branch and commit of the ckpttui that runs (ours, or --ckpttui-src's checkout)."""
    where = CKPTTUI_SRC or REPO
    proc = subprocess.run(
        ["git", "-C", str(where), "log", "-1", "--format=%h", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    branch = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--abbrev-ref", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"{branch.stdout.strip() or '?'} {proc.stdout.strip() or '?'}"


def versions(py: Path, tk: ModuleType) -> dict[str, str]:
    """The installed versions of the packages a toolkit names in ``VERSIONS``."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(py), "-c", code, *tk.VERSIONS], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def run_toolkit(name: str, work_root: Path, reuse: bool = False) -> dict:
    """Build, train, run every check of one toolkit; return its result record."""
    tk = load_toolkit(name)
    work = work_root / name
    trained = work / ".trained"
    reuse = reuse and trained.is_file()
    if work.exists():
        if reuse:
            shutil.rmtree(work / "out", ignore_errors=True)
        else:
            shutil.rmtree(work)
    (work / "out").mkdir(parents=True)
    log = work_root / f"{name}.log"
    log.write_text("")
    record: dict = {"toolkit": name, "date": dt.date.today().isoformat(), "checks": []}
    record["ckpttui"] = ckpttui_revision()
    checks: list[dict] = record["checks"]

    def report(check: str, status: str, detail: str) -> None:
        detail = detail.replace(f"{work}{os.sep}", "").replace(str(REPO) + os.sep, "")
        checks.append({"check": check, "status": status, "detail": detail})
        print(f"[{name}] {status} {check}: {detail}", flush=True)

    try:
        py = ensure_venv(tk)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        report("venv", "FAIL", str(exc).splitlines()[0])
        return record
    record["versions"] = versions(py, tk)
    started = time.monotonic()
    if reuse:
        report("train", "PASS", f"reused {trained.read_text().strip()}")
    else:
        code, output = toolkit_side(py, tk, ["train", str(work)], log)
        last = ([ln for ln in output.splitlines() if ln.strip()] or [""])[-1]
        if code:
            report("train", "FAIL", f"{last} (log {log})")
            return record
        trained.write_text(last + "\n")
        report("train", "PASS", f"{last} ({time.monotonic() - started:.0f} s)")
    known: dict[str, str] = getattr(tk, "KNOWN", {})
    failed: dict[str, str] = {}
    plan = tk.checks(work)
    for check in plan:
        if check.get("after") in failed:  # its input is another check's output
            failed[check["name"]] = failed[check["after"]]
            continue
        for cmd in check.get("ckpttui", []):
            if "-o" in cmd:  # the output's folder exists, as it would for a user
                Path(cmd[cmd.index("-o") + 1]).parent.mkdir(parents=True, exist_ok=True)
            code, msg = ckpttui([str(a) for a in cmd], log)
            if code:
                failed[check["name"]] = f"ckpttui {cmd[0]} exited {code}: {msg}"
                break
    loaders = [c["loader"] for c in plan if c["name"] not in failed]
    verdicts: dict[str, dict] = {}
    if loaders:
        code, output = toolkit_side(py, tk, ["check", str(work), *loaders], log)
        for line in output.splitlines():
            if line.startswith("@@verdict "):
                v = json.loads(line[len("@@verdict ") :])
                verdicts[v["loader"]] = v
        if code and len(verdicts) < len(loaders):
            last = [ln for ln in output.splitlines() if ln.strip()][-1:] or [f"exit {code}"]
            for loader in loaders:
                verdicts.setdefault(loader, {"ok": False, "detail": f"loader crashed: {last[0]}"})
    for check in plan:
        cname = check["name"]
        verdict = verdicts.get(check["loader"], {"ok": False, "detail": "no verdict"})
        problem = failed.get(cname) or ("" if verdict["ok"] else verdict["detail"])
        if problem and cname in known:
            report(cname, "KNOWN", f"{problem} [{known[cname]}]")
        elif problem:
            report(cname, "FAIL", problem)
        elif cname in known:
            report(
                cname, "PASS", f"{verdict['detail']} (listed as known fault: remove it from KNOWN)"
            )
        else:
            report(cname, "PASS", verdict["detail"])
    return record


def write_results(records: list[dict], path: Path) -> None:
    """Merge ``records`` into the results JSON at ``path`` and render RESULTS.md beside the repo's."""
    data: dict = {}
    if path.is_file():
        data = json.loads(path.read_text())
    for rec in records:  # one record per toolkit and ckpttui branch
        data[f"{rec['toolkit']} @ {rec.get('ckpttui', '?').split()[0]}"] = rec
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    if path.resolve() == RESULTS_JSON:
        RESULTS_MD.write_text(render(data))


def render(data: dict) -> str:
    """RESULTS.md: toolkit versions and one line per check."""
    lines = [
        "# Round trip through the real toolkits: results",
        "",
        "Written by `./dev interop` (interop/run.py) from interop/results.json; do not edit by hand.",
        "PASS: the toolkit's own loader accepted ckpttui's output and the values matched.",
        "FAIL: ckpttui or the loader failed (reason given). KNOWN: a known ckpttui fault,",
        "listed in the toolkit's `KNOWN` table (interop/toolkits/tk_NAME.py) with its issue.",
        "The ckpttui column names the branch and commit whose src/ ran (`interop` carries main's",
        "src/ unchanged; another branch is checked with `--ckpttui-src`).",
        "",
    ]

    def order(key: str) -> tuple[int, str]:
        name = data[key]["toolkit"]
        return (ORDER.index(name) if name in ORDER else 99, key)

    names = sorted(data, key=order)
    lines += ["| toolkit | date | ckpttui | PASS | FAIL | KNOWN |", "|---|---|---|---|---|---|"]
    for name in names:
        rec = data[name]
        st = [c["status"] for c in rec["checks"]]
        lines.append(
            f"| {rec['toolkit']} | {rec['date']} | {rec.get('ckpttui', '?')} | {st.count('PASS')} "
            f"| {st.count('FAIL')} | {st.count('KNOWN')} |"
        )
    lines.append("")
    for name in names:
        rec = data[name]
        vers = ", ".join(f"{k} {v}" for k, v in sorted(rec.get("versions", {}).items()))
        lines += [f"## {rec['toolkit']} ({rec['date']}, ckpttui {rec.get('ckpttui', '?')})", ""]
        lines += [f"Versions: {vers or 'n/a'}", ""]
        lines += ["| check | result | detail |", "|---|---|---|"]
        for c in rec["checks"]:
            detail = c["detail"].replace("|", "\\|")
            lines.append(f"| {c['check']} | {c['status']} | {detail} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen toolkits, write results; exit 1 on any FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--light", action="store_true", help="the toolkits that install fast")
    group.add_argument("--all", action="store_true", help="every toolkit, heavy ones included")
    parser.add_argument("toolkits", nargs="*", help="toolkit names (default: --light)")
    parser.add_argument("--venv-only", action="store_true", help="build the venvs, run nothing")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the last training run in WORK, rerun the checks"
    )
    parser.add_argument("--work", type=Path, default=CACHE / "work", help="training folder root")
    parser.add_argument(
        "--results", type=Path, default=RESULTS_JSON, help="results JSON (RESULTS.md beside ours)"
    )
    parser.add_argument(
        "--ckpttui-src", type=Path, help="run ckpttui from this src/ folder (another branch's)"
    )
    args = parser.parse_args(argv)
    global CKPTTUI_SRC
    CKPTTUI_SRC = args.ckpttui_src.resolve() if args.ckpttui_src else None
    available = sorted(p.stem[3:] for p in TOOLKIT_DIR.glob("tk_*.py"))
    if args.toolkits:
        unknown = sorted(set(args.toolkits) - set(available))
        if unknown:
            parser.error(f"unknown toolkit {', '.join(unknown)} (have: {', '.join(available)})")
        names = args.toolkits
    else:
        names = [n for n in available if args.all or load_toolkit(n).LIGHT]
    names = sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else 99)
    if args.venv_only:
        for name in names:
            ensure_venv(load_toolkit(name))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    records = [run_toolkit(n, args.work.resolve(), args.reuse) for n in names]
    write_results(records, args.results)
    statuses = [c["status"] for r in records for c in r["checks"]]
    print(
        f"interop: {statuses.count('PASS')} passed, {statuses.count('FAIL')} failed, "
        f"{statuses.count('KNOWN')} known faults ({', '.join(names)})"
    )
    return 1 if "FAIL" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
