"""Session fixtures: real checkpoints written once by the real libraries (see ckpttui.demo)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Trainer runs, save_pretrained folders, a PEFT adapter, DCP and torch.save files."""
    from ckpttui.demo.hf_writer import write_all

    root = tmp_path_factory.mktemp("hf")
    write_all(root)
    return root


@pytest.fixture(scope="session")
def ds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real DeepSpeed ZeRO 0-3 checkpoints (fp32, bf16, frozen + tied), one and two ranks."""
    from ckpttui.demo.ds_writer import default_configs, write_deepspeed_checkpoints

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
    """FunASR, WeNet, fairseq, SpeechBrain, Lightning and adapters layouts (ckpttui.demo.toolkit_writers).

    These toolkits cannot be installed here; each writer cites the upstream file it mirrors.
    """
    import os
    import subprocess

    root = tmp_path_factory.mktemp("toolkits")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    subprocess.run(
        [sys.executable, "-m", "ckpttui.demo.toolkit_writers", str(root)],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    return root
