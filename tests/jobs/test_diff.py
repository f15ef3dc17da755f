"""diff on real writers' checkpoints: values against a float64 torch reference, names and shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_cli
from safetensors.torch import save_file
from weights_ref import load

from ckpttui.jobs.diff import diff, module_name
from ckpttui.jobs.runner import ChildJob, JobSpec

EP = "funasr/model.pt.ep{}"


def report(a: Path, b: Path, **kw: Any) -> dict[str, Any]:
    """Drain a diff job; check it starts and ends as every job must; its report."""
    events = list(diff(a, b, **kw))
    assert events[0].kind == "start" and events[-1].kind == "done"
    assert all(e.kind in ("log", "progress") for e in events[1:-1])
    return events[-1].data


def reference(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float, float]:
    """equal, max |B-A| and ||B-A|| / ||A|| in float64, the way a user would compute them."""
    x, y = a.double(), b.double()
    d = y - x
    rel = float(d.norm() / x.norm()) if float(x.norm()) else 0.0
    equal = a.dtype == b.dtype and torch.equal(a, b)
    return equal, float(d.abs().max()) if d.numel() else 0.0, rel


def test_epochs_agree_with_float64_reference(tk_root: Path) -> None:
    a, b = tk_root / EP.format(1), tk_root / EP.format(3)
    data = report(a, b)
    sa, sb = load(a)["state_dict"], load(b)["state_dict"]
    assert data["only_a"] == [] and data["only_b"] == [] and data["changed"] == []
    assert [t["name"] for t in data["tensors"]] == list(sa)
    moved = 0
    for row in data["tensors"]:
        equal, max_abs, rel = reference(sa[row["name"]], sb[row["name"]])
        assert row["equal"] is equal, row["name"]
        assert math.isclose(row["max_abs"], max_abs, rel_tol=1e-12, abs_tol=0), row["name"]
        assert math.isclose(row["rel_change"], rel, rel_tol=1e-9, abs_tol=1e-15), row["name"]
        moved += not equal
    assert moved > 0 and data["identical"] is False
    # Modules: the float64 roll-up of their floating tensors (counters are counted, not weighed).
    for module in data["modules"]:
        names = [n for n in sa if module_name(n) == module["name"]]
        assert module["tensors"] == len(names)
        names = [n for n in names if sa[n].is_floating_point()]
        num = sum(float((sb[n].double() - sa[n].double()).norm() ** 2) for n in names)
        den = sum(float(sa[n].double().norm() ** 2) for n in names)
        assert math.isclose(module["rel_change"], math.sqrt(num / den), rel_tol=1e-9)


def test_a_step_counter_does_not_outweigh_its_modules_weights(tmp_path: Path) -> None:
    """BatchNorm's num_batches_tracked going 100 -> 200 beside weights moved by 1%."""
    w = torch.linspace(-1, 1, 64)
    a = {"enc.bn.weight": w, "enc.bn.num_batches_tracked": torch.tensor(100)}
    b = {"enc.bn.weight": w * 1.01, "enc.bn.num_batches_tracked": torch.tensor(200)}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    data = report(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    (enc,) = data["modules"]
    assert enc["changed"] == 2 and enc["frozen"] is False
    assert enc["rel_change"] == pytest.approx(0.01, rel=1e-5)  # with the counter: 0.99
    assert enc["max_abs"] == pytest.approx(0.01, rel=1e-5)
    rows = {r["name"]: r for r in data["tensors"]}
    assert rows["enc.bn.num_batches_tracked"]["integer"] is True
    assert rows["enc.bn.num_batches_tracked"]["rel_change"] == pytest.approx(1.0)
    assert "integer" not in rows["enc.bn.weight"]
    from ckpttui.diffrows import by_change

    assert [r["name"] for r in by_change(data["tensors"])][0] == "enc.bn.weight"


def test_same_weights_in_another_layout_are_identical(tk_root: Path, tmp_path: Path) -> None:
    a = tk_root / EP.format(2)
    flat = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in load(a)["state_dict"].items()}, flat)
    data = report(a, flat)
    assert data["identical"] is True and data["layout_a"] == "funasr"
    assert all(m["frozen"] for m in data["modules"])


def test_names_shapes_dtypes_and_frozen_modules(tk_root: Path, tmp_path: Path) -> None:
    a = tk_root / "wenet_v2" / "1.pt"
    state = load(a)
    names = list(state)
    gone, reshaped, cast = names[0], names[1], names[2]
    changed_module = "decoder"
    assert any(module_name(n) == changed_module for n in names)
    b_state = dict(state)
    del b_state[gone]
    b_state["extra.head.weight"] = torch.ones(3, 2)
    b_state[reshaped] = state[reshaped].reshape(-1)[:1].clone()
    b_state[cast] = state[cast].to(torch.bfloat16)
    for n in names:
        if module_name(n) == changed_module and state[n].is_floating_point():
            b_state[n] = state[n] * 1.5
    b = tmp_path / "2.pt"
    torch.save(b_state, b)
    data = report(a, b)
    assert data["only_a"] == [gone] and data["only_b"] == ["extra.head.weight"]
    changed = {c["name"]: c for c in data["changed"]}
    assert changed[reshaped]["b"]["shape"] == [1]
    assert changed[cast]["a"]["dtype"] == "float32" and changed[cast]["b"]["dtype"] == "bfloat16"
    rows = {t["name"]: t for t in data["tensors"]}
    assert reshaped not in rows and rows[cast]["equal"] is False
    _, max_abs, _ = reference(state[cast], b_state[cast])
    assert rows[cast]["max_abs"] == pytest.approx(max_abs, rel=1e-12)
    modules = {m["name"]: m for m in data["modules"]}
    assert modules[changed_module]["frozen"] is False
    assert modules[changed_module]["rel_change"] == pytest.approx(0.5, rel=1e-6)  # x1.5 in fp32
    frozen = [m for m in modules.values() if m["frozen"]]
    assert frozen and all(m["rel_change"] == 0.0 for m in frozen)


def test_all_includes_optimizer_state(tk_root: Path) -> None:
    a, b = tk_root / EP.format(1), tk_root / EP.format(2)
    plain = report(a, b)
    full = report(a, b, include_all=True)
    extra = {t["name"] for t in full["tensors"]} - {t["name"] for t in plain["tensors"]}
    assert "optimizer/state/0/exp_avg" in extra
    opt_a, opt_b = load(a)["optimizer"]["state"][0], load(b)["optimizer"]["state"][0]
    row = next(t for t in full["tensors"] if t["name"] == "optimizer/state/0/exp_avg")
    _, max_abs, rel = reference(opt_a["exp_avg"], opt_b["exp_avg"])
    assert row["max_abs"] == pytest.approx(max_abs, rel=1e-12)
    assert row["rel_change"] == pytest.approx(rel, rel=1e-9)
    assert any(m["name"] == "optimizer" for m in full["modules"])


def test_cli_text_and_json(tk_root: Path) -> None:
    a, b = tk_root / EP.format(1), tk_root / EP.format(3)
    proc = run_cli("diff", str(a), str(b), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"only_a", "only_b", "changed", "tensors", "modules"} <= set(doc)
    assert {"name", "equal", "max_abs", "rel_change"} <= set(doc["tensors"][0])
    text = run_cli("diff", str(a), str(b))
    assert text.returncode == 0 and "modules by change:" in text.stdout
    top = max((t for t in doc["tensors"] if not t["equal"]), key=lambda t: t["rel_change"] or 0.0)
    lines = text.stdout.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("tensors by change")))
    assert lines[first + 1].endswith(top["name"])
    missing = run_cli("diff", str(a), str(a.parent / "nope.pt"))
    assert missing.returncode == 1 and "nope.pt: no such file" in missing.stderr
    assert run_cli("diff", str(a)).returncode == 2


def test_runs_in_the_job_child_process(tk_root: Path) -> None:
    spec = JobSpec("diff", {"a": str(tk_root / EP.format(1)), "b": str(tk_root / EP.format(2))})
    events = list(ChildJob(spec).events())
    assert events[-1].kind == "done" and events[-1].data["tensors"]
