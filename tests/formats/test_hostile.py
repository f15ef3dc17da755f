"""Hostile and broken inputs: each gets a one-line error naming the file; nothing ever runs."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from helpers import inspect_json, malicious_pickle, run_cli, torch_zip_bytes

from ckpttui.formats import read_file
from ckpttui.inventory import scan


@pytest.mark.parametrize("kind", ["system", "eval"])
@pytest.mark.parametrize("container", ["zip", "plain", "legacy"])
def test_code_running_pickle_is_reported_and_never_run(
    tmp_path: Path, kind: str, container: str
) -> None:
    marker = tmp_path / "pwned"
    raw = malicious_pickle(marker, kind)
    target = tmp_path / "model.pt"
    if container == "zip":
        target.write_bytes(torch_zip_bytes(raw))
    elif container == "legacy":
        import pickle

        head = b"".join(
            pickle.dumps(x, protocol=2)
            for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
        )
        target.write_bytes(head + raw + pickle.dumps([], protocol=2))
    else:
        target.write_bytes(raw)
    report = inspect_json(tmp_path)
    assert not marker.exists(), "unpickling ran the payload"
    (entry,) = report["files"]
    expected = "posix.system" if kind == "system" else "builtins.eval"
    assert expected in entry["unsafe_globals"]
    assert expected in entry["error"] and "\n" not in entry["error"]
    assert report["errors"] == [{"path": "model.pt", "error": entry["error"]}]


def test_unpickler_never_imports_named_modules(tmp_path: Path) -> None:
    import colorsys
    import pickle
    import sys

    class Calls:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (colorsys.rgb_to_hsv, (1.0, 0.0, 0.0))

    raw = pickle.dumps({"x": Calls()}, protocol=2)
    del sys.modules["colorsys"]
    path = tmp_path / "x.pkl"
    path.write_bytes(raw)
    index = read_file(path)
    assert "colorsys" not in sys.modules, "the reader imported a module the pickle named"
    assert index.unsafe_globals == ["colorsys.rgb_to_hsv"]
    # Allowlist, not denylist: any call outside plain-data constructors would run code.
    assert index.error == (
        "pickle would run code on load: colorsys.rgb_to_hsv (recorded, not executed)"
    )


def test_truncated_zip(tmp_path: Path) -> None:
    good = torch_zip_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "model.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "ok.pt").write_bytes(good)
    report = inspect_json(tmp_path)
    fault = "truncated or damaged zip archive (File is not a zip file)"
    assert report["errors"] == [{"path": "model.pt", "error": fault}]  # ok.pt reads fine
    ckpt = {c["path"]: c for c in report["checkpoints"]}["model.pt"]
    assert ckpt["complete"] is False
    # What a user reads: one line naming the file and the fault, no traceback.
    human = run_cli("inspect", str(tmp_path / "model.pt"))
    assert human.returncode == 0 and "Traceback" not in human.stdout + human.stderr
    (line,) = [ln for ln in (human.stdout + human.stderr).splitlines() if ln.startswith("error ")]
    assert line == f"error {tmp_path / 'model.pt'}: {fault}"


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    report = inspect_json(tmp_path)
    assert report["errors"] == [{"path": "model.pt", "error": "empty file (0 bytes)"}]
    assert report["files"][0]["error"] == "empty file (0 bytes)"


def test_safetensors_header_length_1e12(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    report = inspect_json(tmp_path)
    (err,) = report["errors"]
    assert err["path"] == "model.safetensors"
    assert "1000000000000" in err["error"] and "larger than the file" in err["error"]


def test_safetensors_offsets_past_end(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + b"\0" * 8
    )
    report = inspect_json(tmp_path)
    (err,) = report["errors"]
    assert "past the end of the file" in err["error"] and "'w'" in err["error"]


def test_torch_zip_storage_past_end(tmp_path: Path) -> None:
    # data.pkl declares a 100-element float storage (the opcodes torch.save writes for one
    # tensor, see test_torch_zip), and the archive holds 8 bytes of it.
    pkl = (
        b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07"
        b"\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00"
        b"\x00\x00cpuq\x06Kdtq\x07QK\x00Kd\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rtq\x08"
        b"Rq\x09s."
    )
    (tmp_path / "model.pt").write_bytes(torch_zip_bytes(pkl, {"0": b"\0" * 8}))
    (err,) = inspect_json(tmp_path)["errors"]
    assert "storage data/0 holds 8 bytes but 400 are declared" in err["error"]


def test_git_lfs_pointer(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123456\n"
    )
    (err,) = inspect_json(tmp_path)["errors"]
    assert err["path"] == "model.ckpt" and "git-lfs pointer" in err["error"]


def test_symlink_loop_and_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    os.symlink(tmp_path, tmp_path / "runs" / "back")
    os.symlink(tmp_path / "nowhere.pt", tmp_path / "final.pt")
    os.symlink("self.pt", tmp_path / "self.pt")
    report = inspect_json(tmp_path)
    errors = {e["path"]: e["error"] for e in report["errors"]}
    assert "symlink loop" in errors["runs/back"]
    assert "dangling symlink" in errors["final.pt"]
    assert "symlink loop" in errors["self.pt"]


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(torch_zip_bytes(b"\x80\x02}q\x00."))
    real_open = open

    def deny(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path) == str(target):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    # Tests run as root, where chmod 000 does not stop reads; deny at open() instead.
    monkeypatch.setattr("builtins.open", deny)
    inv = scan(tmp_path)
    assert inv.errors == [(str(target), "permission denied")]


def test_tmp_files_are_incomplete(tmp_path: Path) -> None:
    (tmp_path / "model.pt.ep3.tmp").write_bytes(b"PK\x03\x04partial")
    (tmp_path / "model.safetensors.tmp-1a2b").write_bytes(b"\0" * 10)
    report = inspect_json(tmp_path)
    ckpts = {c["path"]: c for c in report["checkpoints"]}
    for name in ("model.pt.ep3.tmp", "model.safetensors.tmp-1a2b"):
        assert ckpts[name]["complete"] is False
        assert "still being written" in ckpts[name]["problems"][0]


def test_path_that_does_not_exist_exits_1(tmp_path: Path) -> None:
    proc = run_cli("inspect", str(tmp_path / "missing"), "--json")
    assert proc.returncode == 1
    assert "missing" in proc.stderr and proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_dcp_non_tensor_value_that_runs_code_is_reported(tmp_path: Path) -> None:
    """dcp.load hands non-tensor values to torch.load(weights_only=False): they are judged too."""
    import torch
    import torch.distributed.checkpoint as dist_cp
    from helpers import RunsCode

    marker = tmp_path / "pwned"
    folder = tmp_path / "dcp"
    dist_cp.save({"w": torch.ones(2), "extra": RunsCode(marker)}, checkpoint_id=str(folder))
    assert not marker.exists()
    index = read_file(folder / ".metadata")
    assert not marker.exists(), "reading ran the payload"
    assert index.error is not None and "posix.system" in index.error
    clean = tmp_path / "clean"
    dist_cp.save({"w": torch.ones(2), "step": 3}, checkpoint_id=str(clean))
    assert read_file(clean / ".metadata").error is None


def test_a_layout_failing_on_one_file_costs_one_line_not_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpttui.layouts.plain import PlainTorch

    def boom(self: object, ckpt: object, index: object) -> None:
        raise ValueError("hostile value\nwith a second line")

    monkeypatch.setattr(PlainTorch, "describe", boom)
    for name in ("a.pt", "b.pt"):
        (tmp_path / name).write_bytes(torch_zip_bytes(b"\x80\x02}q\x00."))
    from ckpttui.inventory import report_dict

    report = report_dict(scan(tmp_path))
    errors = {e["path"]: e["error"] for e in report["errors"]}
    assert set(errors) == {"a.pt", "b.pt"}
    assert all("ValueError" in e and "\n" not in e for e in errors.values())
