"""`ckpttui demo`: a small experiments folder written by the real libraries, made once and cached.

The writers live beside this module: `hf_writer` (a transformers Trainer run, a peft adapter),
`ds_writer` (a real DeepSpeed engine on the CPU) and `toolkit_writers` (FunASR, WeNet, fairseq,
SpeechBrain, Lightning layouts, imitated by hand with real torch.save output, each citing the
upstream source); `build` is the child process that runs them. The tests' fixtures build on these
writers from tests/fixtures/ (more variants, and files only the tests need).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEMO_VERSION = "1"
_DONE = ".ckpttui-demo-complete"


def default_demo_dir() -> Path:
    """``$XDG_CACHE_HOME/ckpttui/demo-v1`` (``~/.cache`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ckpttui" / f"demo-v{DEMO_VERSION}"


def ensure_demo(target: str | os.PathLike[str] | None = None, regenerate: bool = False) -> Path:
    """The demo experiments folder, generated first if needed (in a child process; ~30 s)."""
    folder = Path(target) if target else default_demo_dir()
    experiments = folder / "experiments"
    if (folder / _DONE).exists() and not regenerate:
        return experiments
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    print(
        f"ckpttui: writing demo checkpoints with torch, transformers and DeepSpeed into "
        f"{folder} (once) ...",
        file=sys.stderr,
    )
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ckpttui.demo.build", str(tmp / "experiments")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise RuntimeError(f"demo generation failed:\n{tail}")
        (tmp / _DONE).write_text(DEMO_VERSION + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return experiments
