"""Merge on a DeepSpeed folder that has nothing to consolidate: the app names the file to export.

The layout answers (`Layout.unmerged_weights`); the app only reads the save folder's ``latest``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ckpttui.ui.jobrequest import JobRequestError, request_for
from ckpttui.ui.widgets.checkpoint_view import CheckpointView
from ckpttui.ui.widgets.tree import NodeData


def _refusal(path: Path) -> str:
    with pytest.raises(JobRequestError) as info:
        request_for("merge", NodeData("dir", str(path)), [], CheckpointView())
    return str(info.value)


def test_save_folder_without_optimizer_shards_names_its_tag_s_weights(
    ds_root: Path, tmp_path: Path
) -> None:
    save = tmp_path / "z2"  # saved without the optimizer shards
    shutil.copytree(
        ds_root / "ws2" / "z2_fp32", save, ignore=shutil.ignore_patterns("*optim_states.pt")
    )
    tag = (save / "latest").read_text().strip()
    message = _refusal(save)
    assert f"Its weights are in {tag}/mp_rank_00_model_states.pt: select that file and press e" in (
        message
    )


def test_zero0_names_the_file_whose_export_loads(ds_root: Path, tmp_path: Path) -> None:
    import torch
    from helpers import run_cli

    save = ds_root / "ws1" / "z0_fp32"
    message = _refusal(save)
    match = re.search(r"Its weights are in (\S+):", message)
    assert match, message
    out = tmp_path / "w.pt"
    proc = run_cli("export", str(save / match.group(1)), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    state = torch.load(out, weights_only=True)
    weights = state["module"]  # DeepSpeed's own loader reads the weights under `module`
    assert any(k.endswith("weight") for k in weights)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())


def test_a_zero_folder_with_its_shards_is_merged(ds_root: Path) -> None:
    save = ds_root / "ws2" / "z3_fp32"
    request = request_for("merge", NodeData("dir", str(save)), [], CheckpointView())
    assert request.kind == "merge" and request.inputs == [str(save)]
