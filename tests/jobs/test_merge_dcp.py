"""merge_dcp on real 2-rank FSDP2 / DTensor DCP folders, against torch's own dcp_to_torch_save."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ckpttui.jobs.dcp_merge import merge_dcp
from ckpttui.jobs.events import JobError
from ckpttui.jobs.merge import merge

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def dcp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fsdp2/, fsdp2_app/, columns/ and torch's dcp_to_torch_save of each (NAME.pt)."""
    root = tmp_path_factory.mktemp("dcp")
    subprocess.run(
        [sys.executable, str(HERE / "dcp_fixtures.py"), str(root)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return root


def reference(root: Path, name: str, *keys: str) -> Any:
    """torch's dcp_to_torch_save result (our own file, trusted: weights_only=False)."""
    ref = torch.load(root / f"{name}.pt", weights_only=False)
    for key in keys:
        ref = ref[key]
    return ref


def flat(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a nested dict, keyed by their path joined with dots (DCP's names)."""
    out: dict[str, torch.Tensor] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, (dict, list, tuple)):
            out.update(flat(value, name + "."))
    return out


def same(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(ref)
    for key, value in ref.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize(
    ("name", "keys"),
    [("fsdp2", ("model",)), ("fsdp2_app", ("app", "model")), ("columns", ("state_dict",))],
)
def test_model_weights_equal_dcp_to_torch_save(
    dcp_root: Path, tmp_path: Path, name: str, keys: tuple[str, ...]
) -> None:
    out = tmp_path / "model.safetensors"
    events = list(merge_dcp(dcp_root / name, out))
    assert events[-1].kind == "done"
    same(load_file(out), reference(dcp_root, name, *keys))


def test_pt_output_loads_as_the_model_state_dict(dcp_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    list(merge(dcp_root / "fsdp2", out, workers=1))
    same(torch.load(out, weights_only=True), reference(dcp_root, "fsdp2", "model"))


def test_with_optimizer_writes_every_tensor(dcp_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.safetensors"
    events = list(merge_dcp(dcp_root / "fsdp2", out, with_optimizer=True, max_shard_size=None))
    assert any("non-tensor" in e.message for e in events if e.kind == "log")
    ours = load_file(out)
    same(ours, flat(reference(dcp_root, "fsdp2")))
    assert "optim.state.1.weight.exp_avg_sq" in ours


def test_missing_rank_file_is_named_and_nothing_is_written(dcp_root: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dcp_root / "fsdp2", broken)
    (broken / "__1_0.distcp").unlink()
    out = tmp_path / "out.safetensors"
    with pytest.raises(JobError, match="__1_0.distcp"):
        list(merge_dcp(broken, out))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_truncated_chunk_is_an_error(dcp_root: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dcp_root / "fsdp2", broken)
    data = broken / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:2000])
    with pytest.raises(JobError, match="__0_0.distcp"):
        list(merge_dcp(broken, tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()
