"""export on real checkpoints: exact weights out, slim layouts their loaders read, HF folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from weights_ref import AttributeDict, CancelAfter, digests, identical, load

from ckpttui.jobs.events import Event, JobCancelled, JobError
from ckpttui.jobs.export import export

LIGHTNING = "lightning/lightning_logs/version_0/checkpoints/last.ckpt"
SB_FOLDER = "speechbrain/save"


def run(src: Path, out: Path, **kw: Any) -> list[Event]:
    """Drain an export job; check it starts and ends as every job must."""
    events = list(export(src, out, **kw))
    assert events[0].kind == "start" and events[-1].kind == "done"
    return events


def first_sb(tk_root: Path) -> Path:
    """The first SpeechBrain CKPT+ folder."""
    return min((tk_root / SB_FOLDER).iterdir())


# source (relative to its root fixture) -> the weights its framework loads
CASES: dict[str, tuple[str, str, Callable[[Any], dict[str, torch.Tensor]]]] = {
    "funasr": ("tk", "funasr/model.pt.ep3", lambda d: d["state_dict"]),
    "fairseq": ("tk", "fairseq/checkpoint3.pt", lambda d: d["model"]),
    "fairseq_hydra": ("tk", "fairseq_hydra/checkpoint_2_6.pt", lambda d: d["model"]),
    "lightning": ("tk", LIGHTNING, lambda d: d["state_dict"]),
    "wenet": ("tk", "wenet/epoch_2.pt", lambda d: d),
    "hf_bin_tied": ("hf", "model_bin/pytorch_model.bin", lambda d: d),
    "hf_trainer": ("hf", "trainer_gpt2/checkpoint-6/model.safetensors", lambda d: d),
}


def source(case: str, tk_root: Path, hf_root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A case's input path and its reference weights."""
    root, rel, pick = CASES[case]
    path = (tk_root if root == "tk" else hf_root) / rel
    data = load_file(path) if path.suffix == ".safetensors" else load(path)
    return path, pick(data)


@pytest.mark.parametrize("case", list(CASES))
def test_safetensors_holds_exactly_the_weights(
    tk_root: Path, hf_root: Path, tmp_path: Path, case: str
) -> None:
    path, ref = source(case, tk_root, hf_root)
    if path.name == "model.safetensors":
        path = path.parent  # the checkpoint-N folder itself
    before = digests(path)
    events = run(path, tmp_path / "w.safetensors")
    ours = load_file(tmp_path / "w.safetensors")
    assert list(ours) == list(ref)
    assert all(identical(ours[k], v) for k, v in ref.items())
    assert events[-1].data["tensors"] == len(ref)
    assert digests(path) == before


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_dtype_casts_floating_tensors_only(tk_root: Path, tmp_path: Path, dtype: str) -> None:
    target = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    src = tk_root / "wenet" / "epoch_2.pt"
    run(src, tmp_path / "w.safetensors", dtype=dtype)
    ours = load_file(tmp_path / "w.safetensors")
    ref = load(src)
    assert any(not v.is_floating_point() for v in ref.values())
    for key, value in ref.items():
        expected = value.to(target) if value.is_floating_point() else value
        assert identical(ours[key], expected), key


def test_slim_funasr_pt(tk_root: Path, tmp_path: Path) -> None:
    src = tk_root / "funasr" / "model.pt.ep3"
    events = run(src, tmp_path / "model.pt.slim")
    out = torch.load(tmp_path / "model.pt.slim", weights_only=True)
    assert list(out) == ["state_dict"]
    ref = load(src)["state_dict"]
    assert list(out["state_dict"]) == list(ref)
    assert all(identical(out["state_dict"][k], v) for k, v in ref.items())
    ratio = (tmp_path / "model.pt.slim").stat().st_size / src.stat().st_size
    assert 0.25 < ratio < 0.4, ratio  # weights, without AdamW's two moments per weight
    assert any("optimizer" in e.message for e in events if e.kind == "log")


@pytest.mark.parametrize("run_name", ["fairseq", "fairseq_hydra"])
def test_slim_fairseq_keeps_what_its_loader_reads(
    tk_root: Path, tmp_path: Path, run_name: str
) -> None:
    src = tk_root / run_name / "checkpoint3.pt"
    run(src, tmp_path / "slim.pt", dtype="fp16")
    out = load(tmp_path / "slim.pt")  # weights_only, argparse.Namespace allowed
    ref = load(src)
    assert "last_optimizer_state" not in out
    assert set(out) == set(ref) - {"last_optimizer_state"}
    if run_name == "fairseq":
        assert vars(out["args"]) == vars(ref["args"])
    else:
        assert out["args"] is None and out["cfg"] == ref["cfg"]
    # checkpoint_utils._upgrade_state_dict indexes these
    assert out["optimizer_history"][-1] == ref["optimizer_history"][-1]
    assert out["extra_state"]["train_iterator"] == ref["extra_state"]["train_iterator"]
    assert out["extra_state"]["metrics"] == ref["extra_state"]["metrics"]
    model = out["model"]
    assert model["decoder.output_projection.weight"] is model["decoder.embed_tokens.weight"]
    for key, value in ref["model"].items():
        assert identical(model[key], value.half() if value.is_floating_point() else value), key


def test_slim_lightning(tk_root: Path, tmp_path: Path) -> None:
    src = tk_root / LIGHTNING
    events = run(src, tmp_path / "slim.ckpt")
    out = torch.load(tmp_path / "slim.ckpt", weights_only=True)
    ref = load(src)
    assert list(out) == [
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "loops",
        "hparams_name",
        "hyper_parameters",
    ]
    assert out["hyper_parameters"] == ref["hyper_parameters"]
    assert all(identical(out["state_dict"][k], v) for k, v in ref["state_dict"].items())
    logs = " ".join(e.message for e in events if e.kind == "log")
    assert "callbacks, optimizer_states, lr_schedulers" in logs


def test_opaque_metadata_is_dropped_and_named(tmp_path: Path) -> None:
    import fractions

    src = tmp_path / "model.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.2",
            "epoch": 0,
            "global_step": 1,
            "state_dict": {"w": torch.ones(2)},
            "hyper_parameters": {
                "lr": 0.1,
                "ratio": fractions.Fraction(1, 3),
                "dtype": torch.bfloat16,
                "optim": AttributeDict(name="adamw", betas=(0.9, 0.98)),
            },
        },
        src,
    )
    events = run(src, tmp_path / "slim.ckpt")
    out = torch.load(tmp_path / "slim.ckpt", weights_only=True)
    assert out["hyper_parameters"] == {
        "lr": 0.1,
        "dtype": torch.bfloat16,
        "optim": {"name": "adamw", "betas": (0.9, 0.98)},
    }
    assert type(out["hyper_parameters"]["optim"]) is dict
    logs = [e.message for e in events if e.kind == "log"]
    assert any("fractions.Fraction" in m and "hyper_parameters.ratio" in m for m in logs)


def test_tied_weights(hf_root: Path, tmp_path: Path) -> None:
    src = hf_root / "model_bin"
    ref = load(src / "pytorch_model.bin")
    assert ref["lm_head.weight"].data_ptr() == ref["transformer.wte.weight"].data_ptr()
    run(src, tmp_path / "w.safetensors")
    ours = load_file(tmp_path / "w.safetensors")
    assert identical(ours["lm_head.weight"], ref["transformer.wte.weight"])
    with safe_open(tmp_path / "w.safetensors", framework="pt") as f:
        aliases = json.loads(f.metadata()["ckpttui.aliases"])
    assert aliases == {"lm_head.weight": "transformer.wte.weight"}
    run(src, tmp_path / "w.bin")
    pt = torch.load(tmp_path / "w.bin", weights_only=True)
    assert pt["lm_head.weight"] is pt["transformer.wte.weight"]


def test_strip_prefix(tk_root: Path, tmp_path: Path) -> None:
    src = first_sb(tk_root) / "wav2vec2.ckpt"
    ref = load(src)
    assert all(k.startswith("model.") for k in ref)
    run(src, tmp_path / "w.safetensors", strip_prefix="model.")
    ours = load_file(tmp_path / "w.safetensors")
    assert list(ours) == [k.removeprefix("model.") for k in ref]
    with pytest.raises(JobError, match="no tensor name starts with 'module.'"):
        list(export(src, tmp_path / "x.safetensors", strip_prefix="module."))
    clash = tmp_path / "clash.pt"
    torch.save({"module.a": torch.ones(1), "a": torch.zeros(1)}, clash)
    with pytest.raises(JobError, match="same name 'a'"):
        list(export(clash, tmp_path / "y.safetensors", strip_prefix="module."))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clash.pt", "w.safetensors"]


def test_sharded_outputs(hf_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import GPT2LMHeadModel

    src = hf_root / "model_bin"
    events = run(src, tmp_path / "hf", max_shard_size="40KB", config=src)
    folder = tmp_path / "hf"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    assert set(events[-1].data["sha256"]) == {
        *shards,
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
    }
    model = GPT2LMHeadModel.from_pretrained(folder)
    ref = load(src / "pytorch_model.bin")
    state = model.state_dict()
    assert all(identical(state[k], v) for k, v in ref.items())

    run(hf_root / "model_safetensors", tmp_path / "plain", max_shard_size="40KB")
    merged: dict[str, torch.Tensor] = {}
    for shard in (tmp_path / "plain").glob("*.safetensors"):
        merged.update(load_file(shard))
    ref = load_file(hf_root / "model_safetensors" / "model.safetensors")
    assert set(merged) == set(ref) and all(identical(merged[k], v) for k, v in ref.items())


def test_speechbrain_wav2vec2_to_an_hf_folder(
    tk_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import Wav2Vec2Model

    from ckpttui.demo.toolkit_writers import _hf_wav2vec2

    config_dir = tmp_path / "config"
    _hf_wav2vec2(16).model.config.save_pretrained(config_dir)  # the config the fixture used
    src = first_sb(tk_root) / "wav2vec2.ckpt"
    run(src, tmp_path / "w2v", strip_prefix="model.", config=config_dir / "config.json")
    assert sorted(p.name for p in (tmp_path / "w2v").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    model = Wav2Vec2Model.from_pretrained(tmp_path / "w2v")
    state = model.state_dict()
    ref = {k.removeprefix("model."): v for k, v in load(src).items()}
    assert set(state) == set(ref)
    assert all(identical(state[k], v) for k, v in ref.items())


def test_cancel_midway_leaves_nothing(tk_root: Path, hf_root: Path, tmp_path: Path) -> None:
    src = tk_root / "funasr" / "model.pt.ep3"
    before = digests(src, hf_root / "model_bin")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cases: list[tuple[Path, Path, dict[str, Any]]] = [
        (src, out_dir / "w.safetensors", {}),
        (src, out_dir / "w.pt", {}),
        (src, out_dir / "shards", {"max_shard_size": "10KB"}),
        (hf_root / "model_bin", out_dir / "hf", {"config": hf_root / "model_bin"}),
    ]
    for path, out, kw in cases:
        cancel = CancelAfter(10)
        with pytest.raises(JobCancelled):
            list(export(path, out, cancel=cancel, **kw))
        assert cancel.checks == 10
    assert list(out_dir.iterdir()) == []
    assert digests(src, hf_root / "model_bin") == before


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    from helpers import RunsCode

    marker = tmp_path / "ran"
    src = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": RunsCode(marker)}, src)
    with pytest.raises(JobError, match="would run code"):
        list(export(src, tmp_path / "w.safetensors"))
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_refusals(tk_root: Path, tmp_path: Path) -> None:
    src = tk_root / "funasr" / "model.pt.ep3"
    with pytest.raises(JobError, match="input"):
        list(export(src, src, force=True))
    with pytest.raises(JobError, match="dtype must be"):
        list(export(src, tmp_path / "w.safetensors", dtype="int8"))
    with pytest.raises(JobError, match="folder name"):
        list(export(src, tmp_path / "w.pt", max_shard_size="1MB"))
    with pytest.raises(JobError, match="not one checkpoint"):
        list(export(tk_root / "funasr", tmp_path / "w.safetensors"))
    with pytest.raises(JobError, match="is a folder"):
        list(export(src, tmp_path / "w.safetensors", config=tk_root / "funasr"))
    assert list(tmp_path.iterdir()) == []


def test_same_dtype_export_never_imports_torch(tk_root: Path, tmp_path: Path) -> None:
    """Values copied as they are go from the input's bytes to the output without torch (its
    import is most of a small export's time); the outputs are what torch.load reads."""
    import subprocess
    import sys

    path, ref = source("funasr", tk_root, tk_root)
    outs = [tmp_path / "w.safetensors", tmp_path / "slim.pt"]
    code = (
        "import sys\nfrom ckpttui.jobs.export import export\n"
        f"for out in {[str(o) for o in outs]!r}:\n"
        f"    events = list(export({str(path)!r}, out))\n"
        "    assert events[-1].kind == 'done', events[-1]\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    for ours in (load_file(outs[0]), torch.load(outs[1], weights_only=True)["state_dict"]):
        assert list(ours) == list(ref)
        assert all(identical(ours[k], v) for k, v in ref.items())
