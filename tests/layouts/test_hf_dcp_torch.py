"""inspect --json on files written by transformers' Trainer, save_pretrained, peft, DCP, torch.save."""

from __future__ import annotations

import shutil
from pathlib import Path

from expected import by_path, load_torch, safetensors_truth, tensors_in, torch_file_truth
from helpers import inspect_json


def test_trainer_checkpoints_are_recognised_with_steps(hf_root: Path) -> None:
    report = inspect_json(hf_root / "trainer_gpt2")
    ckpts = by_path(report, "checkpoints")
    for step in (2, 4, 6):
        c = ckpts[f"checkpoint-{step}"]
        assert (c["layout"], c["step"], c["complete"], c["problems"]) == (
            "hf-trainer",
            step,
            True,
            [],
        )
    assert ckpts["checkpoint-6"]["info"]["best_metric"] is not None
    assert report["errors"] == []


def test_trainer_checkpoint_categories_match_the_files(hf_root: Path) -> None:
    ck = hf_root / "trainer_gpt2" / "checkpoint-4"
    report = inspect_json(ck)
    files = by_path(report, "files")
    opt = torch_file_truth(ck / "optimizer.pt")
    rng = torch_file_truth(ck / "rng_state.pth")
    weights = safetensors_truth(ck / "model.safetensors")
    assert files["optimizer.pt"]["tensors"] == opt["tensors"]
    assert files["optimizer.pt"]["storage_bytes"] == opt["storage_bytes"]
    assert files["optimizer.pt"]["categories"]["optimizer"] == {
        "tensors": opt["tensors"],
        "bytes": opt["bytes"],
    }
    assert files["model.safetensors"]["categories"]["weights"] == {
        "tensors": weights["tensors"],
        "bytes": weights["bytes"],
    }
    assert files["rng_state.pth"]["categories"]["other"]["bytes"] == rng["bytes"]
    (c,) = report["checkpoints"]
    assert c["path"] == "" and c["layout"] == "hf-trainer"
    assert c["categories"]["weights"]["bytes"] == weights["bytes"]
    assert c["categories"]["optimizer"]["bytes"] == opt["bytes"]
    assert c["categories"]["other"]["bytes"] == rng["bytes"]
    # Adam keeps two fp32 moments per parameter: optimizer state is about twice the weights.
    assert 1.9 < opt["bytes"] / weights["bytes"] < 2.2


def test_training_args_bin_names_its_classes_without_error(hf_root: Path) -> None:
    files = by_path(inspect_json(hf_root / "trainer_gpt2" / "checkpoint-2"), "files")
    args = files["training_args.bin"]
    assert args["error"] is None and args["tensors"] == 0
    assert "transformers.training_args.TrainingArguments" in args["unsafe_globals"]
    # numpy arrays in the rng state are plain data, not a warning.
    assert files["rng_state.pth"]["unsafe_globals"] == []


def test_sharded_trainer_weights_and_missing_shard(hf_root: Path, tmp_path: Path) -> None:
    run = hf_root / "trainer_gpt2_sharded" / "checkpoint-4"
    shards = sorted(run.glob("model-*.safetensors"))
    assert len(shards) >= 2
    (c,) = inspect_json(run)["checkpoints"]
    assert c["categories"]["weights"]["bytes"] == sum(safetensors_truth(s)["bytes"] for s in shards)
    broken = tmp_path / "checkpoint-4"
    shutil.copytree(run, broken)
    shards[1].name  # noqa: B018 - the one we delete
    (broken / shards[1].name).unlink()
    (c,) = inspect_json(broken)["checkpoints"]
    assert c["complete"] is False
    assert shards[1].name in c["problems"][0]


def test_tmp_checkpoint_and_missing_trainer_state(hf_root: Path, tmp_path: Path) -> None:
    src = hf_root / "trainer_gpt2" / "checkpoint-2"
    shutil.copytree(src, tmp_path / "tmp-checkpoint-8")
    shutil.copytree(src, tmp_path / "checkpoint-10")
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    ckpts = by_path(inspect_json(tmp_path), "checkpoints")
    assert ckpts["tmp-checkpoint-8"]["complete"] is False
    assert "still being written" in ckpts["tmp-checkpoint-8"]["problems"][0]
    assert ckpts["checkpoint-10"]["complete"] is False
    assert "trainer_state.json is missing" in ckpts["checkpoint-10"]["problems"][0]


def test_bin_model_folder_counts_tied_storage_once(hf_root: Path) -> None:
    folder = hf_root / "model_bin"
    truth = torch_file_truth(folder / "pytorch_model.bin")
    report = inspect_json(folder)
    f = by_path(report, "files")["pytorch_model.bin"]
    assert (f["tensors"], f["storage_bytes"]) == (truth["tensors"], truth["storage_bytes"])
    # lm_head.weight is tied to the embedding: named twice, stored once.
    assert f["categories"]["weights"]["bytes"] == truth["bytes"] > truth["storage_bytes"]
    (c,) = report["checkpoints"]
    assert c["layout"] == "hf-model" and c["complete"]


def test_sharded_bin_folder(hf_root: Path) -> None:
    folder = hf_root / "model_bin_sharded"
    report = inspect_json(folder)
    (c,) = report["checkpoints"]
    shards = sorted(folder.glob("pytorch_model-*.bin"))
    assert len(shards) >= 2 and c["layout"] == "hf-model" and c["complete"]
    assert c["categories"]["weights"]["tensors"] == sum(
        torch_file_truth(s)["tensors"] for s in shards
    )


def test_peft_adapter(hf_root: Path) -> None:
    report = inspect_json(hf_root / "peft_lora")
    (c,) = report["checkpoints"]
    truth = safetensors_truth(hf_root / "peft_lora" / "adapter_model.safetensors")
    assert c["layout"] == "peft-adapter" and c["info"]["peft_type"] == "LORA"
    assert c["categories"]["weights"] == {"tensors": truth["tensors"], "bytes": truth["bytes"]}
    assert c["parts"] == {"weights/lora": truth["bytes"]}


def test_dcp_metadata_carries_the_whole_checkpoint(hf_root: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    for name in ("dcp", "dcp_plain"):
        folder = hf_root / name
        meta = FileSystemReader(str(folder)).read_metadata()
        tensors = {
            k: v
            for k, v in meta.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)
        }

        def nbytes(v: TensorStorageMetadata) -> int:
            return v.size.numel() * v.properties.dtype.itemsize

        report = inspect_json(folder)
        f = by_path(report, "files")[".metadata"]
        assert f["format"] == "dcp" and f["tensors"] == len(tensors) and f["error"] is None
        assert f["categories"]["weights"]["bytes"] == sum(
            nbytes(v) for k, v in tensors.items() if k.startswith("model.")
        )
        assert f["categories"]["optimizer"]["bytes"] == sum(
            nbytes(v) for k, v in tensors.items() if k.startswith("optim.")
        )
        (c,) = report["checkpoints"]
        assert (c["layout"], c["complete"]) == ("dcp", True)


def test_dcp_missing_data_file(hf_root: Path, tmp_path: Path) -> None:
    shutil.copytree(hf_root / "dcp", tmp_path / "dcp")
    for f in (tmp_path / "dcp").glob("*.distcp"):
        f.unlink()
    (c,) = inspect_json(tmp_path / "dcp")["checkpoints"]
    assert c["complete"] is False and "__0_0.distcp is missing" in c["problems"][0]


def test_torch_zip_and_legacy_agree_with_torch(hf_root: Path) -> None:
    folder = hf_root / "torch_files"
    report = inspect_json(folder)
    files = by_path(report, "files")
    for name, fmt in (("state.pt", "torch-zip"), ("state_legacy.pt", "torch-legacy")):
        truth = torch_file_truth(folder / name)
        f = files[name]
        assert f["format"] == fmt
        assert (f["tensors"], f["storage_bytes"], f["dtypes"]) == (
            truth["tensors"],
            truth["storage_bytes"],
            truth["dtypes"],
        )
        assert sum(c["bytes"] for c in f["categories"].values()) == truth["bytes"]


def test_legacy_storage_offsets_point_at_the_data(hf_root: Path) -> None:
    import torch

    from ckpttui.formats import read_file

    path = hf_root / "torch_files" / "state_legacy.pt"
    index = read_file(path)
    offsets = index.metadata["storage_offsets"]
    loaded = tensors_in(load_torch(path))
    raw = path.read_bytes()
    for rec in index.tensors:
        t = loaded[rec.path]
        if not t.is_contiguous() or t.numel() == 0:
            continue
        start = offsets[rec.storage] + rec.storage_offset * t.element_size()
        got = raw[start : start + rec.nbytes]
        assert got == t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes(), rec.name


def test_whole_module_pickle_counts_its_parameters_as_weights(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    torch.save(model, tmp_path / "model.pt")  # the discouraged torch.save(model) form
    (f,) = inspect_json(tmp_path)["files"]
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert f["error"] is None and f["categories"]["weights"]["bytes"] == nbytes
    assert "torch.nn.modules.linear.Linear" in f["unsafe_globals"]


def test_accelerate_save_state_names(tmp_path: Path) -> None:
    import torch

    # accelerate/checkpointing.py save_accelerator_state: model.safetensors, optimizer.bin,
    # scheduler.bin, random_states_0.pkl (torch.save of the rng states)
    torch.save(
        {
            "step": 3,
            "random_state": (1, 2),
            "torch_manual_seed": torch.zeros(16, dtype=torch.uint8),
        },
        tmp_path / "random_states_0.pkl",
    )
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.ones(1, 2)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.bin")
    files = by_path(inspect_json(tmp_path), "files")
    assert files["random_states_0.pkl"]["categories"]["other"]["bytes"] == 16
    assert files["optimizer.bin"]["categories"]["optimizer"]["tensors"] == 6
