"""reclaim on the real writers' layouts: the plan, slimmed checkpoints loading in their consumer
with equal weights, hard links and symlinks, refusals, kill -9 at random points, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SRC, run_cli

from ckpttui.inventory import scan
from ckpttui.jobs.events import drive
from ckpttui.jobs.owner import LockOwner, host_name
from ckpttui.jobs.reclaim import plan_reclaim, reclaim
from ckpttui.jobs.runner import JobSpec

HOUR = 3600.0


def _copy(src: Path, dest: Path) -> Path:
    """A copy of a run whose files look settled (an hour old), as a training run's are."""
    shutil.copytree(src, dest, symlinks=True)
    old = time.time() - HOUR
    for folder, _dirs, names in os.walk(dest):
        for name in names:
            os.utime(Path(folder) / name, (old, old), follow_symlinks=False)
    return dest


def _run(*paths: Path, **kw: Any) -> list[Any]:
    events = list(drive(reclaim([str(p) for p in paths], **kw), "reclaim"))
    assert events[-1].kind == "done", events[-1].message
    return events


def _load(path: Path) -> Any:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True, map_location="cpu")


def _equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _reclaimable(path: Path) -> int:
    inv = scan(path)
    total = 0
    for c in inv.checkpoints:
        cats = inv.checkpoint_breakdown(c).categories
        total += sum(cats.get("optimizer", {}).values())
    return total


def test_plan_keeps_newest_and_best_and_reads_no_tensors(tk_root: Path, tmp_path: Path) -> None:
    run = _copy(tk_root / "funasr", tmp_path / "funasr")
    code = (
        "import sys; from ckpttui.jobs.reclaim import plan_reclaim; "
        f"p = plan_reclaim([{str(run)!r}]); print(len(p.slimmed)); "
        "assert 'torch' not in sys.modules"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plan = plan_reclaim([run])
    by_name = {Path(i.path).name: i for i in plan.items}
    assert by_name["model.pt.ep3"].action == "keep"
    assert "newest" in by_name["model.pt.ep3"].reason and "best" in by_name["model.pt.ep3"].reason
    assert "model.pt.best" not in by_name and "model.pt.avg2" not in by_name  # copies, averages
    slim = [i for i in plan.items if i.action == "slim"]
    assert len(slim) == 5 and all(i.freed > 0 and i.after < i.size for i in slim)
    assert plan.total_freed == sum(i.freed for i in slim)
    assert plan.to_dict()["total_freed"] == plan.total_freed
    assert json.dumps(plan.to_dict())
    # marked checkpoints: the keep rules apply among them, per run
    other = _copy(tk_root / "fairseq", tmp_path / "fairseq")
    marked = [run / "model.pt.ep1", run / "model.pt.ep2", other / "checkpoint1.pt"]
    plan3 = plan_reclaim(marked, keep_best=0)
    assert [(Path(i.path).name, i.action) for i in plan3.items] == [
        ("model.pt.ep1", "slim"),
        ("model.pt.ep2", "keep"),
        ("checkpoint1.pt", "keep"),
    ]
    assert all(i.action == "slim" for i in plan_reclaim(marked, keep_last=0, keep_best=0).items)
    plan2 = plan_reclaim([run], keep_last=2, keep_best=0)
    assert [Path(i.path).name for i in plan2.items if i.action == "keep"] == [
        "model.pt.ep2.3",
        "model.pt.ep3",
    ]


@pytest.mark.parametrize("run_name", ["funasr", "fairseq", "lightning"])
def test_slimmed_files_load_with_equal_weights(
    tk_root: Path, tmp_path: Path, run_name: str
) -> None:
    run = _copy(tk_root / run_name, tmp_path / run_name)
    plan = plan_reclaim([run], keep_last=1, keep_best=0)
    if run_name == "lightning":
        plan = plan_reclaim([run], keep_last=0, keep_best=0)
    items = plan.slimmed
    assert items
    before = {i.path: _load(Path(i.path)) for i in items}
    keep = 0 if run_name == "lightning" else 1
    _run(run, keep_last=keep, keep_best=0)
    for item in items:
        path = Path(item.path)
        old, new = before[item.path], _load(path)
        key = {"funasr": "state_dict", "fairseq": "model", "lightning": "state_dict"}[run_name]
        _equal(old[key], new[key])
        optim = {"funasr": "optimizer", "fairseq": "last_optimizer_state"}.get(
            run_name, "optimizer_states"
        )
        assert optim in old and optim not in new
        # what the loader needs beside the weights stays (--drop optimizer keeps the rest)
        assert set(new) == set(old) - {optim}
        assert path.stat().st_size <= item.after + 4096
        assert _reclaimable(path) == 0  # inspect shows nothing left to reclaim
    again = plan_reclaim([run], keep_last=keep, keep_best=0)
    assert not again.slimmed  # a rerun finds nothing left to do
    assert not list(run.rglob("*.tmp-*")) and not list(run.rglob("*.lock"))


def test_drop_training_leaves_only_what_the_loader_reads(tk_root: Path, tmp_path: Path) -> None:
    run = _copy(tk_root / "lightning", tmp_path / "lightning")
    (item,) = plan_reclaim([run], keep_last=0, keep_best=0, drop="training").slimmed
    _run(run, keep_last=0, keep_best=0, drop="training")
    new = _load(Path(item.path))
    assert "optimizer_states" not in new and "lr_schedulers" not in new
    assert "state_dict" in new


def test_hf_trainer_checkpoint_loads_with_from_pretrained(hf_root: Path, tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    run = _copy(hf_root / "trainer_gpt2", tmp_path / "run")
    plan = plan_reclaim([run], drop="training")
    (first, *_) = plan.slimmed
    names = {Path(f).name for f in first.removes}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names
    weights = Path(first.path) / "model.safetensors"
    ino = weights.stat().st_ino
    _run(run, drop="training")
    folder = Path(first.path)
    assert not (folder / "optimizer.pt").exists() and (folder / "trainer_state.json").exists()
    assert weights.stat().st_ino == ino  # kept files are the same file (hard link, no copy)
    model = GPT2LMHeadModel.from_pretrained(folder)
    ref = GPT2LMHeadModel.from_pretrained(hf_root / "trainer_gpt2" / folder.name)
    _equal(model.state_dict(), ref.state_dict())
    assert _reclaimable(folder) == 0


def test_hf_trainer_with_deepspeed_drops_the_rank_optimizer_files(
    hf_root: Path, ds_root: Path, tmp_path: Path
) -> None:
    # Trainer with DeepSpeed: the model at the checkpoint's root (written by the Trainer), the
    # engine's own save in global_stepN/ (real rank files), no optimizer.pt.
    from transformers import GPT2LMHeadModel

    src = tmp_path / "src"
    shutil.copytree(hf_root / "trainer_gpt2", src)
    folders = sorted(src.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in folders:
        (folder / "optimizer.pt").unlink(missing_ok=True)
        tag = f"global_step{folder.name.split('-')[1]}"
        shutil.copytree(ds_root / "ws2/z2_fp32/global_step2", folder / tag)
        (folder / "latest").write_text(tag)
    run = _copy(src, tmp_path / "run")
    _run(run, keep_last=1, keep_best=0)
    *older, newest = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert older and list(newest.glob("global_step*/*optim_states.pt"))
    for folder in older:
        assert not list(folder.glob("global_step*/*optim_states.pt"))
        model = GPT2LMHeadModel.from_pretrained(folder)
        ref = GPT2LMHeadModel.from_pretrained(src / folder.name)
        _equal(model.state_dict(), ref.state_dict())


@pytest.mark.parametrize("drop", ["optimizer", "training"])
def test_speechbrain_folder_stays_complete(tk_root: Path, tmp_path: Path, drop: str) -> None:
    run = _copy(tk_root / "speechbrain", tmp_path / "sb")
    plan = plan_reclaim([run], drop=drop)
    slim = plan.slimmed
    removed = {Path(f).name for i in slim for f in i.removes}
    assert slim and "optimizer.ckpt" in removed
    if drop == "training":  # the scheduler goes too; normaliser statistics and counters stay
        assert any("scheduler" in n for n in removed)
        assert not any("normaliz" in n or "counter" in n for n in removed)
    else:
        assert removed == {"optimizer.ckpt"}
    models = {i.path: (Path(i.path) / "model.ckpt").read_bytes() for i in slim}
    _run(run, drop=drop)
    inv = scan(run)
    for item in slim:
        ckpt = next(c for c in inv.checkpoints if c.path == item.path)
        assert ckpt.complete, ckpt.problems
        assert (Path(item.path) / "model.ckpt").read_bytes() == models[item.path]
        assert _reclaimable(Path(item.path)) == 0


def test_hardlinks_free_nothing_and_keep_the_other_name(tk_root: Path, tmp_path: Path) -> None:
    run = _copy(tk_root / "funasr", tmp_path / "funasr")
    other = tmp_path / "elsewhere.pt"
    os.link(run / "model.pt.ep1", other)
    plan = plan_reclaim([run])
    item = next(i for i in plan.items if Path(i.path).name == "model.pt.ep1")
    assert item.action == "slim" and item.freed == 0
    assert any("hard link" in n for n in item.notes)
    original = _load(other)
    _run(run)
    assert "optimizer" in _load(other) and "optimizer" not in _load(run / "model.pt.ep1")
    _equal(_load(other)["state_dict"], original["state_dict"])


def test_symlinks_keep_their_target_and_are_never_replaced(tk_root: Path, tmp_path: Path) -> None:
    run = _copy(tk_root / "funasr", tmp_path / "funasr")
    os.symlink("model.pt.ep1", run / "model.pt.keep")
    plan = plan_reclaim([run])
    item = next(i for i in plan.items if Path(i.path).name == "model.pt.ep1")
    assert item.action == "keep" and "model.pt.keep links to it" in item.reason
    # given the link itself: its target is slimmed once, the link stays a link
    os.symlink("model.pt.ep2", run / "model.pt.mine")
    plan = plan_reclaim([run / "model.pt.mine", run / "model.pt.ep2"], keep_last=0, keep_best=0)
    assert [Path(i.path).name for i in plan.items] == ["model.pt.ep2"]
    _run(run / "model.pt.mine", keep_last=0, keep_best=0)
    assert (run / "model.pt.mine").is_symlink()
    assert "optimizer" not in _load(run / "model.pt.mine")


def test_checkpoints_being_written_are_refused(tk_root: Path, tmp_path: Path) -> None:
    run = _copy(tk_root / "funasr", tmp_path / "funasr")
    temp = f"model.pt.ep1.tmp-{os.getpid()}-0123abcd"
    (run / temp).write_bytes(b"partial")
    lock = LockOwner(os.getpid(), host_name(), time.time(), temp).to_json()
    (run / "model.pt.ep1.lock").write_text(lock + "\n")
    os.utime(run / "model.pt.ep2")  # just written
    plan = plan_reclaim([run])
    by_name = {Path(i.path).name: i for i in plan.items}
    assert by_name["model.pt.ep1"].action == "refuse"
    assert f"pid {os.getpid()}" in by_name["model.pt.ep1"].reason
    assert by_name["model.pt.ep2"].action == "refuse"
    assert "may still be being written" in by_name["model.pt.ep2"].reason
    assert by_name["model.pt.ep1"].freed == 0 and by_name["model.pt.ep1"].writes == []


def _child(spec: JobSpec) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.Popen(
        [sys.executable, "-m", "ckpttui.jobs.runner", spec.to_json()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _weights_of(path: Path) -> dict[str, Any]:
    """A checkpoint's weights as its loader sees them, whichever state it is in."""
    if (path / "model.ckpt").is_file():  # SpeechBrain: the model recoverable
        return dict(_load(path / "model.ckpt"))
    if path.is_dir():  # a ZeRO folder: slimmed (consolidated weights) or original (complete)
        if (path / "pytorch_model.bin").is_file():
            assert not list(path.glob("*optim_states.pt"))
            return dict(_load(path / "pytorch_model.bin"))
        assert scan(path).checkpoints[0].complete
        return {}
    return dict(_load(path)["state_dict"])


@pytest.mark.parametrize(
    ("run_name", "seed"),
    [("funasr", 1), ("funasr", 2), ("funasr", 3), ("speechbrain", 4), ("deepspeed", 5)],
)
def test_kill_9_never_loses_a_checkpoint(
    request: pytest.FixtureRequest, tmp_path: Path, run_name: str, seed: int
) -> None:
    if run_name == "deepspeed":  # two ZeRO-3 tag folders of one run
        src = request.getfixturevalue("ds_root") / "ws2" / "z3_fp32"
        run = _copy(src, tmp_path / "ds")
        tag = run / (run / "latest").read_text().strip()
        shutil.copytree(tag, run / "global_step1", symlinks=True)
        paths = [tag.with_name("global_step1"), tag]
    else:
        run = _copy(request.getfixturevalue("tk_root") / run_name, tmp_path / run_name)
        paths = [run]
    options = {"keep_last": 0, "keep_best": 0} if run_name == "deepspeed" else {}
    plan = plan_reclaim(paths, **options)
    assert plan.slimmed
    weights = {i.path: _weights_of(Path(i.path)) for i in plan.items}
    rng = random.Random(seed)
    spec = JobSpec("reclaim", {"paths": [str(p) for p in paths], **options})
    proc = _child(spec)
    assert proc.stdout is not None
    kill_after = rng.randint(1, 3 * len(plan.slimmed))  # events of the slimming itself
    seen = 0
    for line in proc.stdout:
        if '"plan_line":true' not in line:
            seen += 1
        if seen > kill_after:
            time.sleep(rng.random() * 0.02)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for item in plan.items:  # every checkpoint is there, whole: original or slimmed
        state = _weights_of(Path(item.path))
        if state and weights[item.path]:
            _equal(state, weights[item.path])
    _run(*paths, **options)  # a rerun finishes, removing what the killed job left
    assert not plan_reclaim(paths, **options).slimmed
    assert not list(run.rglob("*.tmp-*")) and not list(run.rglob("*.lock"))
    for item in plan.items:
        if item.action == "slim":
            state = _weights_of(Path(item.path))
            assert state
            if weights[item.path]:
                _equal(state, weights[item.path])


def test_cli_exit_codes(tk_root: Path, tmp_path: Path) -> None:
    run = _copy(tk_root / "fairseq", tmp_path / "fairseq")
    dry = run_cli("reclaim", str(run), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "slim    checkpoint1.pt" in dry.stdout and "total: 2 checkpoints slimmed" in dry.stdout
    as_json = json.loads(run_cli("reclaim", str(run), "--dry-run", "--json").stdout)
    assert as_json["total_freed"] > 0 and len(as_json["items"]) == 3
    no_tty = run_cli("reclaim", str(run))
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    assert "optimizer" in str(_load(run / "checkpoint1.pt").keys())
    assert run_cli("reclaim", str(tmp_path / "missing")).returncode == 1
    assert run_cli("reclaim", str(run), "--drop", "everything").returncode == 2
    done = run_cli("reclaim", str(run), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["kind"] == "done"
    assert "last_optimizer_state" not in _load(run / "checkpoint1.pt")


@pytest.mark.parametrize("name", ["z3_fp32", "z2_fp32_frozen_tied"])
def test_deepspeed_folder_keeps_consolidated_weights(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, name: str
) -> None:
    run = _copy(ds_root / "ws2" / name, tmp_path / name)
    tag = run / (run / "latest").read_text().strip()
    plan = plan_reclaim([tag], keep_last=0, keep_best=0)
    (item,) = plan.slimmed
    assert item.writes == [str(tag / "pytorch_model.bin")]
    assert item.removes and all(f.endswith("_optim_states.pt") for f in item.removes)
    _run(tag, keep_last=0, keep_best=0)
    assert not list(tag.glob("*optim_states.pt"))
    mine = torch.load(tag / "pytorch_model.bin", weights_only=True)
    ref = torch.load(ds_reference[f"ws2/{name}"], weights_only=True)
    _equal(mine, ref)  # DeepSpeed's own zero_to_fp32 of the original folder
    (ckpt,) = scan(tag).checkpoints
    assert ckpt.complete and _reclaimable(tag) == 0
    assert not plan_reclaim([tag], keep_last=0, keep_best=0).slimmed


def test_wenet_plain_saves_are_already_slim(tk_root: Path, tmp_path: Path) -> None:
    """WeNet's own saves (wenet/utils/checkpoint.py) hold the model's state dict only: reclaim
    finds nothing to take and leaves every file as it was, final.pt's link included."""
    run = _copy(tk_root / "wenet_v2", tmp_path / "wenet_v2")
    files = sorted(p for p in run.iterdir())
    before = {p: (p.is_symlink(), p.read_bytes()) for p in files}
    plan = plan_reclaim([run])
    assert not plan.slimmed
    regular = {Path(i.path).name: i for i in plan.items}
    assert all(regular[n].action == "keep" for n in ("0.pt", "1.pt", "2.pt"))
    assert "already slim" in regular["0.pt"].reason
    _run(run)
    assert sorted(run.iterdir()) == files
    assert {p: (p.is_symlink(), p.read_bytes()) for p in files} == before


@pytest.mark.parametrize("ws", [1, 2])
def test_wenet_deepspeed_tags_keep_the_best_by_cv_loss(
    ds_root: Path, ds_reference: dict[str, Any], tmp_path: Path, ws: int
) -> None:
    """A WeNet DeepSpeed run (tags epoch_N.pt/ with WeNet's epoch_N.yaml beside them): the
    newest and the lowest cv_loss are kept whole, the other tag gets its consolidated weights."""
    run = tmp_path / "exp"
    shutil.copytree(ds_root / f"ws{ws}" / "wenet" / "exp", run)
    for epoch in (1, 2):
        shutil.copytree(run / "epoch_3.pt", run / f"epoch_{epoch}.pt")
    for epoch, loss in ((1, 0.9), (2, 1.5), (3, 1.23)):
        (run / f"epoch_{epoch}.yaml").write_text(
            f"epoch: {epoch}\ncv_loss: {loss}\nstep: {14 * epoch}\n"
        )
    _copy(run, tmp_path / "run")
    run = tmp_path / "run"
    sidecars = {p.name: p.read_bytes() for p in run.glob("*.yaml")}
    plan = plan_reclaim([run])
    actions = {Path(i.path).name: (i.action, i.reason) for i in plan.items}
    assert actions["epoch_1.pt"] == ("keep", "best by cv loss (0.9)")
    assert actions["epoch_3.pt"] == ("keep", "newest")
    assert actions["epoch_2.pt"][0] == "slim"
    _run(run)
    slim = run / "epoch_2.pt"
    assert not list(slim.glob("*optim_states.pt"))
    assert list((run / "epoch_1.pt").glob("*optim_states.pt"))
    _equal(
        torch.load(slim / "pytorch_model.bin", weights_only=True),
        torch.load(ds_reference[f"ws{ws}/wenet_z2"], weights_only=True),
    )
    assert {p.name: p.read_bytes() for p in run.glob("*.yaml")} == sidecars
    ckpt = next(c for c in scan(run).checkpoints if c.path == str(slim))
    assert ckpt.complete and ckpt.info["consolidated"] == "pytorch_model.bin"
    assert ckpt.info["cv_loss"] == 1.5
    assert not plan_reclaim([run]).slimmed
