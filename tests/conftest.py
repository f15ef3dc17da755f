"""Session fixtures: real checkpoints written once by the real libraries (see tests/fixtures)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The scan cache (ckpttui.scancache) of the tests and of the processes they start: never the
# user's own cache folder.
os.environ["CKPTTUI_SCAN_CACHE"] = tempfile.mkdtemp(prefix="ckpttui-scan-cache-")

import pytest


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Trainer runs, save_pretrained folders, a PEFT adapter, DCP and torch.save files."""
    from fixtures.hf_writers import write_all

    root = tmp_path_factory.mktemp("hf")
    write_all(root)
    return root


@pytest.fixture(scope="session")
def ds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real DeepSpeed ZeRO 0-3 checkpoints (fp32, bf16, frozen + tied), one and two ranks."""
    from fixtures.ds_writers import default_configs

    from ckpttui.demo.ds_writer import write_deepspeed_checkpoints

    root = tmp_path_factory.mktemp("ds")
    for ws in (1, 2):
        try:
            write_deepspeed_checkpoints(root / f"ws{ws}", default_configs(), world_size=ws)
        except RuntimeError:
            # gloo on a busy 2-core machine has been seen to abort a rank once in a while
            # (SIGABRT while connecting); a second launch on a fresh port goes through.
            write_deepspeed_checkpoints(
                root / f"ws{ws}", default_configs(), world_size=ws, overwrite=True
            )
    return root


@pytest.fixture(scope="session")
def tk_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FunASR, WeNet, fairseq, SpeechBrain, Lightning and adapters layouts (fixtures.toolkit_writers).

    These toolkits cannot be installed here; each writer cites the upstream file it mirrors.
    """
    import os
    import subprocess

    from fixtures import with_tests_on_path

    root = tmp_path_factory.mktemp("toolkits")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = with_tests_on_path(dict(os.environ, PYTHONPATH=src))
    subprocess.run(
        [sys.executable, "-m", "fixtures.toolkit_writers", str(root)],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    return root
