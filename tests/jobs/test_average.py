"""average and the last/best-N selection on real checkpoints written after real optimizer steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from weights_ref import CancelAfter, digests, identical, load

from ckpttui.jobs import average as average_module
from ckpttui.jobs.average import average
from ckpttui.jobs.events import Event, JobCancelled, JobError
from ckpttui.jobs.select import select_best, select_last

SB_CKPTS = "speechbrain/save"


def run(inputs: list[Path], out: Path, **kw: Any) -> list[Event]:
    """Drain an average job; check it starts and ends as every job must."""
    events = list(average(inputs, out, **kw))
    assert events[0].kind == "start" and events[-1].kind == "done"
    assert all(e.kind in ("log", "progress") for e in events[1:-1])
    return events


def run_python(code: str) -> str:
    """The output of `code` run by a fresh interpreter with this checkout's ckpttui."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of each value of `x` in `dtype` (float64 result)."""
    info = torch.finfo(dtype)
    magnitude = x.abs().double().clamp_min(info.tiny)
    return info.eps * torch.exp2(torch.floor(torch.log2(magnitude)))


def assert_mean(ours: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]]) -> None:
    """Floats: the float64 mean, within float32 rounding (one ulp for half types); ints: last."""
    assert list(ours) == list(states[0])
    n = len(states)
    for key, value in ours.items():
        inputs = [s[key] for s in states]
        assert value.dtype == inputs[0].dtype and value.shape == inputs[0].shape, key
        if not value.is_floating_point():
            assert identical(value, inputs[-1]), key
            continue
        exact = sum(t.double() for t in inputs) / n
        error = (value.double() - exact).abs()
        if value.dtype in (torch.bfloat16, torch.float16):
            assert bool((error <= ulp(exact, value.dtype)).all()), key
        else:
            unit = torch.finfo(value.dtype).eps / 2
            scale = sum(t.double().abs() for t in inputs) / n
            assert bool((error <= (n + 1) * unit * scale + 1e-300).all()), key


def funasr_states(paths: list[Path]) -> list[dict[str, torch.Tensor]]:
    """The ``state_dict`` of each FunASR file."""
    return [load(p)["state_dict"] for p in paths]


def test_funasr_epochs(tk_root: Path, tmp_path: Path) -> None:
    paths = [tk_root / "funasr" / f"model.pt.ep{e}" for e in (1, 2, 3)]
    before = digests(*paths)
    events = run(paths, tmp_path / "model.pt.avg3")
    done = events[-1]
    assert done.data["tensors"] == 80 and done.data["format"] == "torch"
    out_path = tmp_path / "model.pt.avg3"
    assert done.data["sha256"] == {out_path.name: digests(out_path)[str(out_path)]}
    left = [e.message for e in events if e.kind == "log" and " tensors (" in e.message]
    # one line per kind for the three inputs together
    assert left[0].startswith("left out 720 optimizer tensors")
    assert len(left) <= 2 and all(m.endswith("of the 3 inputs") for m in left)
    out = torch.load(tmp_path / "model.pt.avg3", weights_only=True)
    assert list(out) == ["state_dict"]
    assert_mean(out["state_dict"], funasr_states(paths))
    run(paths, tmp_path / "avg.safetensors")
    flat = load_file(tmp_path / "avg.safetensors")
    assert all(identical(flat[k], v) for k, v in out["state_dict"].items())
    assert digests(*paths) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.safetensors", "model.pt.avg3"]


def test_wenet_epochs_integers_from_the_last(tk_root: Path, tmp_path: Path) -> None:
    paths = [tk_root / "wenet" / f"epoch_{e}.pt" for e in (0, 1, 2)]
    run(paths, tmp_path / "avg_3.pt")
    out = torch.load(tmp_path / "avg_3.pt", weights_only=True)
    states = [load(p) for p in paths]
    ints = [k for k, v in states[0].items() if not v.is_floating_point()]
    assert ints and all(not torch.equal(states[0][k], states[-1][k]) for k in ints)
    assert_mean(out, states)


def test_hf_trainer_checkpoint_folders(hf_root: Path, tmp_path: Path) -> None:
    folders = [hf_root / "trainer_gpt2" / f"checkpoint-{s}" for s in (2, 4, 6)]
    before = digests(*folders)
    run(folders, tmp_path / "avg.safetensors")
    with safe_open(tmp_path / "avg.safetensors", framework="pt") as f:
        assert f.metadata()["format"] == "pt"
    assert_mean(
        load_file(tmp_path / "avg.safetensors"),
        [load_file(f / "model.safetensors") for f in folders],
    )
    assert digests(*folders) == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_float_dtypes(
    tk_root: Path, hf_root: Path, tmp_path: Path, dtype: torch.dtype
) -> None:
    """Plain state dicts and safetensors files, in half precision (one ulp) and float64."""
    src = [hf_root / "trainer_gpt2" / f"checkpoint-{s}" / "model.safetensors" for s in (2, 4, 6)]
    st_states = [{k: v.to(dtype) for k, v in load_file(p).items()} for p in src]
    st_paths = []
    for i, state in enumerate(st_states):
        st_paths.append(tmp_path / f"in{i}.safetensors")
        save_file(state, st_paths[-1], metadata={"format": "pt"})
    run(st_paths, tmp_path / "st_avg.safetensors")
    assert_mean(load_file(tmp_path / "st_avg.safetensors"), st_states)

    pt_states = []
    pt_paths = []
    for e in (0, 1, 2):
        state = load(tk_root / "wenet" / f"epoch_{e}.pt")
        pt_states.append({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
        pt_paths.append(tmp_path / f"sd{e}.pt")
        torch.save(pt_states[-1], pt_paths[-1])
    run(pt_paths, tmp_path / "pt_avg.pt")
    assert_mean(load(tmp_path / "pt_avg.pt"), pt_states)


def _variant(src: Path, dest: Path, change: str) -> Path:
    state = load(src)
    if change == "missing":
        del state["decoder.output_layer.bias"]
    elif change == "shape":
        state["decoder.output_layer.bias"] = torch.zeros(3)
    elif change == "dtype":
        state["decoder.output_layer.bias"] = state["decoder.output_layer.bias"].half()
    elif change == "extra":
        state["decoder.extra"] = torch.zeros(3)
    torch.save(state, dest)
    return dest


@pytest.mark.parametrize("change", ["missing", "shape", "dtype", "extra"])
def test_mismatch_names_the_tensor_and_both_files(
    tk_root: Path, tmp_path: Path, change: str
) -> None:
    good = tk_root / "wenet" / "epoch_0.pt"
    bad = _variant(tk_root / "wenet" / "epoch_1.pt", tmp_path / "bad.pt", change)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    name = "decoder.extra" if change == "extra" else "decoder.output_layer.bias"
    with pytest.raises(JobError) as info:
        list(average([good, bad], out_dir / "avg.pt"))
    message = str(info.value)
    assert repr(name) in message and str(good) in message and str(bad) in message
    if change in ("shape", "dtype"):
        assert change in message
    assert list(out_dir.iterdir()) == []


def test_best_funasr_follows_its_rule(tk_root: Path, tmp_path: Path) -> None:
    run_dir = tk_root / "funasr"
    latest = load(run_dir / "model.pt")
    assert latest["avg_keep_nbest_models_type"] == "acc"
    for kind, take in (("acc", slice(None, 2)), ("loss", slice(-2, None))):
        # funasr/train_utils/average_nbest_models.py: sort by value descending, acc takes the
        # first N, loss the last N
        items = sorted(
            latest[f"val_{kind}_step_or_epoch"].items(), key=lambda x: x[1], reverse=True
        )[take]
        chosen = select_best(run_dir, 2, metric=None if kind == "acc" else kind)
        assert {p.name for p in chosen.paths} == {name for name, _ in items}, kind
        assert chosen.values == {str(run_dir / n): v for n, v in items}
    chosen = select_best(run_dir, 2)
    assert [p.name for p in chosen.paths] == ["model.pt.ep1.3", "model.pt.ep3"]  # oldest first
    run(chosen.paths, tmp_path / "model.pt.avg2")
    # the run's own model.pt.avg2 (FunASR's rule, torch.mean of the same two) agrees
    theirs = load(run_dir / "model.pt.avg2")["state_dict"]
    ours = load(tmp_path / "model.pt.avg2")["state_dict"]
    assert all(torch.allclose(ours[k], v, rtol=1e-6, atol=1e-7) for k, v in theirs.items())


@pytest.mark.parametrize(
    ("run_name", "key"), [("wenet", "epoch_*.yaml"), ("wenet_v2", "[0-9]*.yaml")]
)
def test_best_wenet_lowest_cv_loss(tk_root: Path, run_name: str, key: str) -> None:
    run_dir = tk_root / run_name
    scores = []
    for y in sorted(run_dir.glob(key)):
        info = yaml.safe_load(y.read_text())
        scores.append(
            (
                info["loss_dict"]["loss"] if "loss_dict" in info else info["cv_loss"],
                y.with_suffix(".pt").name,
            )
        )
    expected = {name for _, name in sorted(scores)[:2]}
    assert {p.name for p in select_best(run_dir, 2).paths} == expected


def test_best_speechbrain_by_a_named_meta_key(tk_root: Path) -> None:
    save = tk_root / SB_CKPTS
    metas = {d.name: yaml.safe_load((d / "CKPT.yaml").read_text()) for d in save.iterdir()}
    lowest_wer = sorted(metas, key=lambda d: metas[d]["WER"])[:2]
    highest_acc = sorted(metas, key=lambda d: -metas[d]["ACC"])[:2]
    assert {p.name for p in select_best(save, 2, metric="WER").paths} == set(lowest_wer)
    assert {p.name for p in select_best(save, 2, metric="ACC").paths} == set(highest_acc)
    worst = select_best(save, 1, metric="ACC", mode="min").paths[0].name
    assert worst == min(metas, key=lambda d: metas[d]["ACC"])
    with pytest.raises(JobError, match="ACC, WER"):
        select_best(save, 2)


def test_best_hf_trainer_by_eval_loss(hf_root: Path) -> None:
    run_dir = hf_root / "trainer_gpt2"
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    evals = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    best = sorted(evals, key=evals.__getitem__)[:2]
    chosen = select_best(run_dir, 2)
    assert {p.name for p in chosen.paths} == {f"checkpoint-{s}" for s in best}
    assert [p.name for p in select_last(run_dir, 2).paths] == ["checkpoint-4", "checkpoint-6"]


def test_fairseq_selection_and_layout(tk_root: Path, tmp_path: Path) -> None:
    run_dir = tk_root / "fairseq"
    val = {p.name: load(p)["extra_state"]["val_loss"] for p in run_dir.glob("checkpoint[0-9]*.pt")}
    best = sorted(val, key=val.__getitem__)[:2]
    assert {p.name for p in select_best(run_dir, 2).paths} == set(best)
    last = select_last(run_dir, 2).paths
    assert [p.name for p in last] == ["checkpoint2.pt", "checkpoint3.pt"]
    hydra = select_last(tk_root / "fairseq_hydra", 2)
    assert [p.name for p in hydra.paths] == ["checkpoint2.pt", "checkpoint3.pt"]
    assert any("mid-epoch" in n for n in hydra.notes)

    run(last, tmp_path / "checkpoint.avg2.pt")
    out = load(tmp_path / "checkpoint.avg2.pt")
    # scripts/average_checkpoints.py keeps the first input's dict and replaces its model
    first = load(last[0])
    assert list(out) == ["args", "model", "optimizer_history", "extra_state"]
    assert vars(out["args"]) == vars(first["args"])
    assert out["optimizer_history"] == first["optimizer_history"]
    assert out["extra_state"] == first["extra_state"]
    assert (
        out["model"]["decoder.output_projection.weight"]
        is out["model"]["decoder.embed_tokens.weight"]
    )
    assert_mean(out["model"], [load(p)["model"] for p in last])
    # fairseq's own scripts/average_checkpoints.py result on the same two epochs agrees
    theirs = load(run_dir / "checkpoint.avg2.pt")["model"]
    assert all(torch.allclose(out["model"][k], v, rtol=1e-6, atol=1e-7) for k, v in theirs.items())


def test_best_fairseq_kept_best_files(tmp_path: Path) -> None:
    from ckpttui.demo.toolkit_writers import write_fairseq_run

    write_fairseq_run(tmp_path, epochs=4, style="hydra", keep_best_checkpoints=2)
    kept = sorted(tmp_path.glob("checkpoint.best_loss_*.pt"))
    assert len(kept) == 2
    chosen = select_best(tmp_path, 2)
    assert set(chosen.paths) == set(kept)  # fairseq's keep_best_checkpoints already ranked them
    val = {p.name: load(p)["extra_state"]["val_loss"] for p in tmp_path.glob("checkpoint[0-9]*.pt")}
    assert sorted(load(p)["extra_state"]["val_loss"] for p in kept) == sorted(val.values())[:2]
    with pytest.raises(JobError, match="asked for 3 checkpoints but found 2"):
        select_best(tmp_path, 3)


def test_lightning_layout(tk_root: Path, tmp_path: Path) -> None:
    ckpts = tk_root / "lightning" / "lightning_logs" / "version_0" / "checkpoints"
    inputs = [ckpts / "epoch=2-step=30.ckpt", ckpts / "last.ckpt"]
    run(inputs, tmp_path / "avg.ckpt")
    out = torch.load(tmp_path / "avg.ckpt", weights_only=True)
    src = load(inputs[-1])
    assert set(out) == {
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "loops",
        "hparams_name",
        "hyper_parameters",
    }
    for key in ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "loops"):
        assert out[key] == src[key], key
    assert_mean(out["state_dict"], [load(p)["state_dict"] for p in inputs])


def test_speechbrain_folders(tk_root: Path, tmp_path: Path) -> None:
    folders = sorted((tk_root / SB_CKPTS).iterdir())
    run(folders, tmp_path / "model.ckpt", recoverable="model")
    assert_mean(
        torch.load(tmp_path / "model.ckpt", weights_only=True),
        [load(f / "model.ckpt") for f in folders],
    )
    run(folders, tmp_path / "all.safetensors")
    names = list(load_file(tmp_path / "all.safetensors"))
    assert names == [f"model.{k}" for k in load(folders[0] / "model.ckpt")] + [
        f"wav2vec2.{k}" for k in load(folders[0] / "wav2vec2.ckpt")
    ]


def test_cancel_midway_leaves_nothing(tk_root: Path, tmp_path: Path) -> None:
    paths = [tk_root / "wenet" / f"epoch_{e}.pt" for e in (0, 1, 2)]
    before = digests(*paths)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in ("avg.pt", "avg.safetensors"):
        cancel = CancelAfter(40)
        with pytest.raises(JobCancelled):
            list(average(paths, out_dir / name, cancel=cancel))
        assert cancel.checks == 40  # stopped mid-way, not before or after the tensors
    assert list(out_dir.iterdir()) == []
    assert digests(*paths) == before


def test_refusals(tk_root: Path, tmp_path: Path) -> None:
    wenet = tk_root / "wenet"
    paths = [wenet / "epoch_0.pt", wenet / "epoch_1.pt"]
    with pytest.raises(JobError, match="input"):
        list(average(paths, paths[0], force=True))
    out = tmp_path / "avg.pt"
    out.write_bytes(b"keep")
    with pytest.raises(JobError, match="exists"):
        list(average(paths, out))
    assert out.read_bytes() == b"keep"
    run(paths, out, force=True)
    with pytest.raises(JobError, match="not one checkpoint"):
        list(average([wenet, paths[0]], tmp_path / "x.pt"))
    with pytest.raises(JobError, match="at least one"):
        list(average([], tmp_path / "x.pt"))
    with pytest.raises(JobError, match="asked for 9"):
        select_last(wenet, 9)


def test_import_does_not_import_torch() -> None:
    probe = (
        "import json, sys\nimport ckpttui.jobs.average, ckpttui.jobs.export, "
        "ckpttui.jobs.select\nprint(json.dumps(sorted({m.split('.')[0] "
        "for m in sys.modules})))"
    )
    loaded = set(json.loads(run_python(probe)))
    assert not loaded & {"torch", "numpy", "textual", "rich", "safetensors", "yaml"}


def assert_torch_bits(ours: dict[str, torch.Tensor], states: list[dict[str, torch.Tensor]]) -> None:
    """Each mean is, bit for bit, torch's: a float32 (float64, complex) sum in input order, divided
    by N, cast back; integers are the last input's."""
    assert list(ours) == list(states[0])
    for key, value in states[0].items():
        inputs = [s[key] for s in states]
        if value.is_floating_point() or value.is_complex():
            wide = {torch.float64: torch.float64, torch.complex64: torch.complex64}
            acc = inputs[0].to(wide.get(value.dtype, torch.float32), copy=True)
            for t in inputs[1:]:
                acc.add_(t)
            ref = acc.div_(len(states)).to(value.dtype)
        else:
            ref = inputs[-1]
        assert identical(ours[key], ref), key


def test_means_are_torch_bits_without_torch(tk_root: Path, tmp_path: Path) -> None:
    """Float means are computed with numpy on the inputs' bytes: the very bits of torch's float32
    (float64) sum and division, rounded to bfloat16/float16 as torch rounds; complex tensors and
    NaN going into a 16-bit output are left to torch. A FunASR average never imports torch."""
    gen = torch.Generator().manual_seed(3)
    base = {
        "f32": torch.randn(1000, 37, generator=gen),
        "bf": torch.randn(513, 7, generator=gen).bfloat16(),
        "h": torch.randn(999, generator=gen).half(),
        "d": torch.randn(77, generator=gen, dtype=torch.float64),
        "i": torch.arange(5),
        "z": torch.randn(3, dtype=torch.complex64, generator=gen),
        "nan": torch.tensor([1.0, float("nan"), 2.0]).bfloat16(),
    }
    paths = []
    for e in range(5):
        paths.append(tmp_path / f"m{e}.safetensors")
        scale = 1 + 0.37 * e
        save_file({k: v + e if k == "i" else v * scale for k, v in base.items()}, paths[-1])
    states = [load_file(p) for p in paths]
    for n in (3, 5):
        run(paths[-n:], tmp_path / f"avg{n}.safetensors")
        assert_torch_bits(load_file(tmp_path / f"avg{n}.safetensors"), states[-n:])
    funasr = [tk_root / "funasr" / f"model.pt.ep{e}" for e in (1, 2, 3)]
    code = (
        "import sys\nfrom ckpttui.jobs.average import average\n"
        f"events = list(average({[str(p) for p in funasr]!r}, {str(tmp_path / 'f.pt.avg3')!r}))\n"
        "assert events[-1].kind == 'done'\nprint('torch' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"
    assert_mean(load(tmp_path / "f.pt.avg3")["state_dict"], funasr_states(funasr))


def test_large_means_chunked_into_reused_buffers(tmp_path: Path) -> None:
    """Tensors of several MB are summed a chunk at a time into output buffers reused from one
    tensor to the next: every tensor of a .pt output, loaded by torch, is still torch's mean bit
    for bit (none overwritten by the next one's reuse of its buffer), NaN in a late chunk of a
    bfloat16 tensor included."""
    gen = torch.Generator().manual_seed(5)
    base = {
        "a32": torch.randn(700_001, generator=gen),
        "b32": torch.randn(700_001, generator=gen),  # the same size: a reused buffer
        "bf": torch.randn(1_300_003, generator=gen).bfloat16(),
        "h": torch.randn(900_001, generator=gen).half(),
        "d": torch.randn(350_001, generator=gen, dtype=torch.float64),
        "late_nan": torch.randn(1_100_000, generator=gen).bfloat16(),
        "c32": torch.randn(300_000, generator=gen),  # smaller: fits a free larger buffer
    }
    base["late_nan"][-3] = float("nan")
    paths = []
    for e in range(3):
        paths.append(tmp_path / f"m{e}.pt")
        torch.save({k: v * (1 + 0.29 * e) + 0.01 * e for k, v in base.items()}, paths[-1])
    run(paths, tmp_path / "avg.pt")
    states = [torch.load(p, weights_only=True) for p in paths]
    assert_torch_bits(torch.load(tmp_path / "avg.pt", weights_only=True), states)


def test_zero_folders_averaged_as_their_consolidations(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ZeRO-3 checkpoints (one and two ranks) averaged: each input's tensors are gathered
    from its rank files one at a time and summed without torch; the output is torch's mean of
    DeepSpeed's own consolidations of the two, bit for bit."""

    def no_torch(*args: object) -> None:
        raise AssertionError("averaged with torch")

    monkeypatch.setattr(average_module, "_mean", no_torch)
    inputs = [ds_root / f"ws{ws}" / "z3_fp32" / "global_step2" for ws in (1, 2)]
    run(inputs, tmp_path / "avg.safetensors")
    states = [torch.load(ds_reference[f"ws{ws}/z3_fp32"], weights_only=True) for ws in (1, 2)]
    assert_torch_bits(load_file(tmp_path / "avg.safetensors"), states)
