"""v verify, D diff, d reclaim and m on a LoRA adapter, from the app, as the user sees them."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_app import footer_shown
from test_jobs_ui import select

from ckpttui.ui.app import CkptApp, make_app
from ckpttui.ui.screens.diff import DiffScreen
from ckpttui.ui.screens.job_form import JobForm
from ckpttui.ui.widgets.jobs import JobRow, JobsPane
from ckpttui.ui.widgets.tree import CheckpointTree


async def settle(app: CkptApp, pilot: Any) -> None:
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await app.screen.workers.wait_for_complete()
    await pilot.pause()


async def wait_jobs(app: CkptApp, pilot: Any, timeout: float = 60) -> list[JobRow]:
    for _ in range(int(timeout / 0.1)):
        rows = app.query_one(JobsPane).rows()
        if rows and not any(r.running for r in rows):
            await settle(app, pilot)
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError("job did not end")


def text(widget: Any) -> str:
    return str(widget.render()) if not hasattr(widget, "content") else str(widget.content)


def make_run(root: Path) -> Path:
    """step1 -> step2 fine-tunes the decoder only; step3 is step2 with NaN in a weight."""
    import torch

    torch.manual_seed(0)
    root.mkdir(parents=True)
    a = {
        "encoder.layer.weight": torch.randn(8, 8),
        "encoder.layer.bias": torch.randn(8),
        "decoder.out.weight": torch.randn(4, 8),
        "decoder.out.bias": torch.randn(4),
    }
    b = dict(a)
    b["decoder.out.weight"] = a["decoder.out.weight"] + 0.5 * torch.randn(4, 8)
    b["decoder.out.bias"] = a["decoder.out.bias"] + 1e-3
    bad = dict(b)
    bad["decoder.out.weight"] = b["decoder.out.weight"].clone()
    bad["decoder.out.weight"][0, :3] = float("nan")
    for name, sd in (("step1.pt", a), ("step2.pt", b), ("step3.pt", bad)):
        torch.save(sd, root / name)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("appjobs") / "run")


async def test_verify_fills_health_column_and_tensor_statistics(run: Path) -> None:
    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("v")
        await wait_jobs(app, pilot)
        table = app.query_one("#folder-table")
        health = {Path(k.value).name: str(table.get_cell(k, "health")) for k in table.rows}
        assert health["step1.pt"] == "healthy" and health["step2.pt"] == "healthy"
        assert health["step3.pt"] == "1 problem"
        assert "2 healthy, 1 with 1 problem(s)" in text(app.query_one("#folder-totals"))
        # the broken one's Tensors tab names the tensor and shows its statistics
        await select(app, pilot, "step3.pt")
        await pilot.press("3")
        await settle(app, pilot)
        line = text(app.query_one("#tensor-health"))
        assert "1 problem" in line and "decoder.out.weight" in line and "3 NaN" in line
        tensors = app.query_one("#tensor-table")
        cells = {
            str(tensors.get_cell(k, "name")): {
                c: str(tensors.get_cell(k, c)) for c in ("nan/inf", "mean", "std")
            }
            for k in tensors.rows
        }
        assert cells["decoder.out.weight"]["nan/inf"] == "3 NaN"
        assert cells["encoder.layer.weight"]["nan/inf"] == ""
        assert float(cells["encoder.layer.weight"]["std"]) > 0.5


async def test_diff_of_two_marked_lists_the_changed_tensor_first(run: Path) -> None:
    app = make_app(str(run))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "step1.pt")
        await pilot.press("space")
        await select(app, pilot, "step2.pt")
        await pilot.press("space")
        await settle(app, pilot)
        shown = footer_shown(app)
        assert {"D Diff", "a Avg", "d Reclaim", "q Quit"} <= shown, shown
        await pilot.press("D")
        await wait_jobs(app, pilot)
        screen = app.screen
        assert isinstance(screen, DiffScreen)
        tensors = screen.query_one("#diff-tensors")
        first = [str(tensors.get_cell_at((row, 0))) for row in range(tensors.row_count)]
        assert first[:2] == ["decoder.out.weight", "decoder.out.bias"]
        header = text(screen.query_one("#diff-header"))
        assert "2 changed, 2 equal" in header
        assert "frozen (unchanged): encoder" in header
        modules = screen.query_one("#diff-modules")
        assert str(modules.get_cell("encoder", "note")) == "frozen"
        await pilot.press("escape")
        assert not isinstance(app.screen, DiffScreen)


async def test_diff_asks_for_two_marks(run: Path) -> None:
    app = make_app(str(run))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle(app, pilot)
        assert "D Diff" not in footer_shown(app)
        await pilot.press("D")
        await settle(app, pilot)
        toasts = [str(t.render()) for t in app.screen.query("Toast")]
        assert any("Mark two checkpoints" in t for t in toasts), toasts
        assert not app.query_one(JobsPane).rows()


# --------------------------------------------------------------------------------- reclaim


def old_copy(src: Path, dst: Path) -> Path:
    """A copy of a run whose files were written long ago (reclaim refuses fresh ones)."""
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        os.utime(path, (1.7e9, 1.7e9))
    return dst


async def test_reclaim_plan_then_job_updates_sizes_and_keeps_cursor(
    ui_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ckpttui.jobs.reclaim")
    from ckpttui.ui.screens.confirm import ConfirmScreen
    from ckpttui.ui.screens.reclaim import ReclaimScreen

    root = tmp_path / "runs"
    root.mkdir()
    old_copy(ui_root / "asr-funasr" / "exp", root / "exp")
    app = make_app(str(root))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "exp")
        folder = app.query_one("#folder")
        before = {Path(p).name: s.size for p, s in folder.stats.items()}
        # the user walks the list to a row, then goes back to the tree
        app.query_one("#folder-table").focus()
        await pilot.press("j", "j")
        row = folder.current_path()
        assert row is not None
        app.query_one(CheckpointTree).focus()
        await pilot.press("d")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, ReclaimScreen)
        plan = screen.query_one("#reclaim-plan")
        rows = {
            str(plan.get_cell_at((r, 0))): (
                str(plan.get_cell_at((r, 1))),
                str(plan.get_cell_at((r, plan.ordered_columns.index(plan.columns["why"])))),
            )
            for r in range(plan.row_count)
        }
        kept = {name: why for name, (action, why) in rows.items() if action == "keep"}
        assert kept.get("model.pt.ep3") and "newest" in kept["model.pt.ep3"], rows
        slim = [name for name, (action, _) in rows.items() if action == "slim"]
        assert slim
        assert "frees" in text(screen.query_one("#reclaim-total"))
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(app, pilot)
        rows_done = await wait_jobs(app, pilot, timeout=120)
        assert rows_done[-1].state == "done", rows_done[-1].log_lines
        # the folder view (exp) was read again: slimmed files are smaller, the cursor stayed
        after = {Path(p).name: s.size for p, s in folder.stats.items()}
        for name in slim:
            assert after[name] < before[name], (name, before[name], after[name])
        assert after["model.pt.ep3"] == before["model.pt.ep3"]
        assert folder.current_path() == row


async def test_reclaim_options_replan_once_typing_pauses(
    ui_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ckpttui.jobs.reclaim")
    from ckpttui.ui.screens import reclaim as screen_module

    plans: list[dict[str, object]] = []
    real = screen_module.compute_plan

    def counted(paths: list[str], options: dict[str, object]) -> object:
        plans.append(dict(options))
        return real(paths, options)

    monkeypatch.setattr(screen_module, "compute_plan", counted)
    exp = old_copy(ui_root / "asr-funasr" / "exp", tmp_path / "exp")
    app = make_app(str(exp.parent))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "exp")
        await pilot.press("d")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, screen_module.ReclaimScreen)
        assert len(plans) == 1  # the defaults, planned once
        keep_last = screen.query_one("#reclaim-last")
        keep_last.focus()
        keep_last.value = ""
        await pilot.press("1", "0")  # typed fast: one plan for "10", none for "1"
        await pilot.pause(0.6)
        await settle(app, pilot)
        assert [p["keep_last"] for p in plans] == [1, 10]
        plan = screen.query_one("#reclaim-plan")
        actions = {str(plan.get_cell_at((r, 1))) for r in range(plan.row_count)}
        assert actions == {"keep"}  # keep the last 10: nothing is slimmed
        await pilot.press("escape")


async def test_reclaim_on_a_checkpoint_says_what_to_select(run: Path) -> None:
    app = make_app(str(run))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "step1.pt")
        await pilot.press("d")
        await settle(app, pilot)
        toasts = [str(t.render()) for t in app.screen.query("Toast")]
        assert any("Select a run folder" in t for t in toasts), toasts


# ------------------------------------------------------------------------------------ LoRA


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/{base (HF llama), adapter (PEFT LoRA naming base by its path)}, ref.pt (PEFT's merge)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("lora") / "models"
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    peft = get_peft_model(
        base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(root / "adapter")
    fresh = AutoModelForCausalLM.from_pretrained(root / "base")
    merged = PeftModel.from_pretrained(fresh, root / "adapter").merge_and_unload()
    torch.save({k: v.clone() for k, v in merged.state_dict().items()}, root.parent / "ref.pt")
    return root


async def test_m_on_a_lora_adapter_prefills_its_base_and_merges(lora: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    app = make_app(str(lora))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "adapter")
        await pilot.press("m")
        await settle(app, pilot)
        form = app.screen
        assert isinstance(form, JobForm)
        assert form.query_one("#form-base").value == str(lora / "base")
        assert form.query_one("#form-output").value == str(lora / "adapter-merged")
        reads = text(form.query_one("#form-reads"))
        assert "peft LoRA: 1 update(s)" in reads and "base" in reads
        await pilot.press("ctrl+s")
        rows = await wait_jobs(app, pilot, timeout=120)
        assert rows[-1].state == "done", rows[-1].log_lines
    ours = AutoModelForCausalLM.from_pretrained(lora / "adapter-merged").state_dict()
    ref = torch.load(lora.parent / "ref.pt", weights_only=True)
    for key, value in ref.items():
        assert torch.allclose(ours[key], value, atol=1e-6), key


async def test_new_keys_are_in_help_and_the_command_palette(run: Path) -> None:
    from ckpttui.ui.screens.help import HELP

    app = make_app(str(run))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Verify  [v]", "Reclaim space  [d]", "Diff  [D]"} <= titles
        assert {"v Verify", "d Reclaim", "/ Filter", "s Sort"} <= footer_shown(app)
    for key in ("`v`", "`D`", "`d`"):
        assert f"| {key} |" in HELP


async def test_reclaim_plan_of_marked_checkpoints_slims_just_those(
    ui_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ckpttui.jobs.reclaim")
    from ckpttui.ui.screens.reclaim import ReclaimScreen

    exp = old_copy(ui_root / "asr-funasr" / "exp", tmp_path / "exp")
    app = make_app(str(exp))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        for name in ("model.pt.ep1", "model.pt.ep2"):
            await select(app, pilot, name)
            await pilot.press("space")
        await pilot.press("d")
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, ReclaimScreen)
        plan = screen.query_one("#reclaim-plan")
        rows = {
            str(plan.get_cell_at((r, 0))): str(plan.get_cell_at((r, 1)))
            for r in range(plan.row_count)
        }
        assert rows == {"model.pt.ep1": "slim", "model.pt.ep2": "slim"}
        assert "2 slimmed, 0 kept" in text(screen.query_one("#reclaim-total"))
        await pilot.press("escape")
        assert not isinstance(app.screen, ReclaimScreen)
        assert not app.query_one(JobsPane).rows()  # nothing ran
