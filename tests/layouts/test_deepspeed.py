"""inspect --json on ZeRO checkpoints written by a real DeepSpeed engine on the CPU (ckpttui.demo.ds_writer, tests/fixtures/ds_writers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from expected import by_path, load_torch, tensors_in, torch_file_truth
from helpers import inspect_json

CONFIGS = [
    f"z{s}_{d}{v}" for s in (1, 2, 3) for d in ("fp32", "bf16") for v in ("", "_frozen_tied")
]


@pytest.mark.parametrize("ws", [1, 2])
def test_every_stage_and_dtype_is_recognised_complete(ds_root: Path, ws: int) -> None:
    report = inspect_json(ds_root / f"ws{ws}")
    ckpts = by_path(report, "checkpoints")
    assert report["errors"] == []
    for name in CONFIGS:
        c = ckpts[f"{name}/global_step2"]
        stage = int(name[1])
        assert (c["layout"], c["complete"], c["problems"], c["step"]) == ("deepspeed", True, [], 2)
        assert c["info"]["zero_stage"] == stage and c["info"]["world_size"] == ws
        model_files = [f for f in c["files"] if f.endswith("model_states.pt")]
        optim_files = [f for f in c["files"] if f.endswith("optim_states.pt")]
        assert len(model_files) == (ws if stage == 3 else 1)
        assert len(optim_files) == ws
        assert all(Path(f).name.startswith("bf16_") == ("bf16" in name) for f in optim_files)
    for name in ("z0_fp32", "z0_bf16"):
        c = ckpts[f"{name}/global_step2"]
        assert c["complete"] and c["info"]["zero_stage"] == 0
        assert c["categories"]["optimizer"]["bytes"] > 0  # stage 0 keeps it in model states


@pytest.mark.parametrize("ws", [1, 2])
@pytest.mark.parametrize(
    "name", ["z1_fp32", "z2_bf16_frozen_tied", "z3_fp32_frozen_tied", "z3_bf16"]
)
def test_file_numbers_match_torch(ds_root: Path, ws: int, name: str) -> None:
    tag = ds_root / f"ws{ws}" / name / "global_step2"
    files = by_path(inspect_json(tag), "files")
    for path in sorted(tag.glob("*.pt")):
        truth = torch_file_truth(path, deepspeed=True)
        f = files[path.name]
        assert (f["tensors"], f["storage_bytes"], f["dtypes"]) == (
            truth["tensors"],
            truth["storage_bytes"],
            truth["dtypes"],
        ), path.name
        cats = f["categories"]
        if path.name.endswith("optim_states.pt"):
            assert cats["optimizer"] == {"tensors": truth["tensors"], "bytes": truth["bytes"]}
            masters = [
                t
                for p, t in truth["by_path"].items()
                if p[1] in ("single_partition_of_fp32_groups", "fp32_flat_groups")
            ]
            assert masters and f["parts"]["optimizer/master"] == sum(
                t.numel() * t.element_size() for t in masters
            )
        else:
            module = [
                t
                for p, t in truth["by_path"].items()
                if p[0] in ("module", "frozen_param_fragments")
            ]
            assert cats["weights"]["bytes"] == sum(t.numel() * t.element_size() for t in module)
            assert cats["optimizer"]["tensors"] == 0


def test_zero3_weights_live_in_the_optimizer_partitions(ds_root: Path) -> None:
    (c,) = inspect_json(ds_root / "ws2" / "z3_fp32" / "global_step2")["checkpoints"]
    # module holds empty placeholders: only the buffers carry bytes
    model = load_torch(
        ds_root / "ws2" / "z3_fp32" / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt",
        deepspeed=True,
    )
    buffers = sum(
        model["module"][b].numel() * model["module"][b].element_size()
        for b in model["buffer_names"]
    )
    assert c["categories"]["weights"]["bytes"] == buffers * 2  # one model-states file per rank
    assert c["parts"]["optimizer/master"] > 0


def test_missing_rank_file_is_incomplete_with_reason(ds_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "z2"
    shutil.copytree(ds_root / "ws2" / "z2_fp32", run)
    (run / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    (c,) = inspect_json(run)["checkpoints"]
    assert c["complete"] is False
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in c["problems"][0]
    assert "world size 2" in c["problems"][0]


def test_missing_zero3_model_states(ds_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "z3"
    shutil.copytree(ds_root / "ws2" / "z3_bf16", run)
    (run / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt").unlink()
    (c,) = inspect_json(run)["checkpoints"]
    assert c["complete"] is False
    assert "zero_pp_rank_0_mp_rank_00_model_states.pt" in c["problems"][0]


def test_wenet_and_funasr_tag_folders(ds_root: Path) -> None:
    ckpts = by_path(inspect_json(ds_root / "ws2"), "checkpoints")
    wenet = ckpts["wenet/exp/epoch_3.pt"]
    assert (wenet["layout"], wenet["epoch"], wenet["info"]["variant"], wenet["complete"]) == (
        "deepspeed",
        3,
        "wenet",
        True,
    )
    assert wenet["info"]["cv_loss"] == 1.23 and wenet["info"]["latest"] is True
    funasr = ckpts["funasr/exp/model.pt.ep3"]
    assert (funasr["epoch"], funasr["info"]["variant"], funasr["info"]["zero_stage"]) == (
        3,
        "funasr",
        3,
    )


def test_zero_to_fp32_outputs_are_model_folders(ds_root: Path, tmp_path: Path) -> None:
    from fixtures.ds_writers import write_zero_to_fp32_outputs

    out = tmp_path / "fp32"
    write_zero_to_fp32_outputs(ds_root / "ws2" / "z2_fp32", out)
    report = inspect_json(out)
    ckpts = by_path(report, "checkpoints")
    assert ckpts["safetensors"]["layout"] == "hf-model" and ckpts["safetensors"]["complete"]
    single = by_path(report, "files")["bin/pytorch_model.bin"]
    truth = tensors_in(load_torch(out / "bin" / "pytorch_model.bin"))
    assert single["tensors"] == len(truth)
    assert single["categories"]["weights"]["tensors"] == len(truth)


def test_funasr_tags_rank_by_their_client_state_and_copies_are_not_candidates(
    ds_root: Path, tmp_path: Path
) -> None:
    """FunASR's trainer_ds.py: tags ds-model.pt.ep{N}, plus ds-model.pt and ds-model.pt.best
    copies; val_acc_step_or_eoch in the client state, keyed by tag name."""
    from ckpttui.inventory import scan
    from ckpttui.jobs.select import select_best, select_last

    real = ds_root / "ws2" / "funasr" / "exp" / "model.pt.ep3"
    run = tmp_path / "exp"
    tags = [f"ds-model.pt.ep{e}" for e in (1, 2, 3)] + ["ds-model.pt", "ds-model.pt.best"]
    for tag in tags:
        shutil.copytree(real, run / tag)
    (run / "latest").write_text("ds-model.pt.best")
    inv = scan(run)
    ckpts = {Path(c.path).name: c for c in inv.checkpoints}
    assert {c.info["variant"] for c in ckpts.values()} == {"funasr"}
    assert all(c.complete for c in ckpts.values())
    # the real client state's scores were read (FunASR keys them by tag name)
    assert ckpts["ds-model.pt.ep1"].info["val_acc"] == {"3": 0.5}
    last = select_last(run, 2, inventory=inv)
    assert [p.name for p in last.paths] == ["ds-model.pt.ep2", "ds-model.pt.ep3"]
    scores = {"ds-model.pt.ep1": 0.7, "ds-model.pt.ep2": 0.9, "ds-model.pt.ep3": 0.8}
    for c in ckpts.values():
        c.info["val_acc"] = scores
    best = select_best(run, 2, inventory=inv)
    assert [p.name for p in best.paths] == ["ds-model.pt.ep2", "ds-model.pt.ep3"]
    assert "val_acc" in best.rule and "highest first" in best.rule


def test_a_tag_newer_than_latest_is_incomplete_but_only_against_its_own_kind(
    ds_root: Path, tmp_path: Path
) -> None:
    """DeepSpeed writes `latest` last; WeNet saves step_N.pt and epoch_N.pt tags in one folder."""
    real = ds_root / "ws2" / "wenet" / "exp" / "epoch_3.pt"
    run = tmp_path / "exp"
    for tag in ("epoch_3.pt", "epoch_4.pt", "step_5000.pt"):
        shutil.copytree(real, run / tag)
    (run / "latest").write_text("epoch_3.pt")
    ckpts = by_path(inspect_json(run), "checkpoints")
    assert ckpts["epoch_3.pt"]["complete"] is True
    assert ckpts["epoch_4.pt"]["complete"] is False
    assert "newer than `latest`" in ckpts["epoch_4.pt"]["problems"][0]
    assert ckpts["step_5000.pt"]["complete"] is True
