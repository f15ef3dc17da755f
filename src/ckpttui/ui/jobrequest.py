"""From the app's selection to a job request: which inputs, a suggested output, a size estimate."""

from __future__ import annotations

import os
from pathlib import Path

from ckpttui.browse import dir_layout
from ckpttui.layouts import layout_named, mergeable_titles
from ckpttui.layouts.base import read_small_text
from ckpttui.ui.screens.job_form import JobRequest
from ckpttui.ui.widgets.checkpoint_view import CheckpointView
from ckpttui.ui.widgets.tree import NodeData


class JobRequestError(Exception):
    """The selection does not fit the job; the message tells the user what to select."""


def _estimate(view: CheckpointView, path: str, part: str | None = None) -> int:
    """Bytes of the selection's weights (or of one part), if the view has read it."""
    inv = view.inventory
    if inv is None or view.path != path:
        return 0
    total = 0
    for ckpt in inv.checkpoints:
        b = inv.checkpoint_breakdown(ckpt)
        total += b.parts.get(part, 0) if part else b.categories["weights"]["bytes"]
    return total


def _free_name(path: Path) -> str:
    """`path`, or `path` with -2, -3 ... before the suffix when it exists."""
    if not path.exists():
        return str(path)
    stem, suffix = (path.name.split(".", 1) + [""])[:2]
    for i in range(2, 1000):
        candidate = path.with_name(f"{stem}-{i}" + (f".{suffix}" if suffix else ""))
        if not candidate.exists():
            return str(candidate)
    return str(path)


def request_for(
    kind: str, selected: NodeData | None, marked: list[str], view: CheckpointView
) -> JobRequest:
    """The request for a job on the current selection, or JobRequestError."""
    if kind == "average":
        if len(marked) >= 2:
            common = os.path.commonpath([os.path.dirname(p) for p in marked])
            return JobRequest(
                "average",
                marked,
                _free_name(Path(common) / f"average-{len(marked)}.safetensors"),
                notes=[f"{len(marked)} marked checkpoints, averaged in this order"],
            )
        if selected is not None and selected.kind == "dir":
            return JobRequest(
                "average",
                [],
                _free_name(Path(selected.path) / "average.safetensors"),
                run_folder=selected.path,
            )
        raise JobRequestError(
            "Mark two or more checkpoints with space, or select a run folder "
            "to average its last or best N"
        )
    if selected is None or selected.kind in ("placeholder",):
        raise JobRequestError("Select a checkpoint first")
    path = selected.path
    if kind == "merge":
        adapter = _adapter_folder(selected)
        if adapter is not None:
            return _lora_request(adapter)
        src = _merge_source(selected)
        if src is not None:
            _check_mergeable(src)
        if src is None:
            raise JobRequestError(
                f"Select one of {mergeable_titles()} (or a save folder with `latest`) to merge"
            )
        name = Path(src).name
        out = Path(src).parent / f"{name}-fp32.safetensors"
        estimate = _estimate(view, src, "optimizer/master") or _estimate(view, src)
        return JobRequest("merge", [src], _free_name(out), estimate)
    if selected.kind == "key":
        path = selected.path
    if selected.kind == "dir":
        raise JobRequestError("Select a checkpoint file or folder to export")
    base = Path(path)
    out = base.parent / f"{base.name}-weights.safetensors"
    return JobRequest("export", [path], _free_name(out), _estimate(view, path))


def _adapter_folder(selected: NodeData) -> Path | None:
    """The LoRA adapter folder selected (or holding the selected file), if one."""
    from ckpttui.layouts.lora import is_adapter_folder

    path = Path(selected.path)
    for folder in (path, path.parent):
        if is_adapter_folder(folder):
            return folder
    return None


def _lora_request(adapter: Path) -> JobRequest:
    """Merge an adapter into its base: the base it names prefilled, an HF folder out for an HF base."""
    from ckpttui.layouts.lora import suggested_base

    base = suggested_base(adapter)
    name = f"{adapter.name}-merged"
    out = adapter.parent / (name + ".safetensors" if base is not None and base.is_file() else name)
    note = (
        f"base: {base} (the adapter's base_model_name_or_path)"
        if base is not None
        else "the adapter names no local base model: give its folder or state-dict file"
    )
    return JobRequest(
        "merge", [str(adapter)], _free_name(out), merge_base=str(base or ""), notes=[note]
    )


def _merge_source(selected: NodeData) -> str | None:
    path = Path(selected.path)
    candidates = [path] if path.is_dir() else [path.parent]
    for folder in candidates:
        if (folder / "latest").is_file():
            return str(folder)
        name = dir_layout(str(folder))
        layout = layout_named(name) if name else None
        if layout is None or not layout.mergeable:
            continue
        if not layout.weights_in_shards or any(folder.glob("*.index.json")):
            return str(folder)
    return None


def _check_mergeable(src: str) -> None:
    """A folder saved without what merge consolidates (its layout says so): say what to do."""
    folder = tag = Path(src)
    named = read_small_text(folder / "latest")
    if named and named.strip():  # a save folder: the checkpoint its `latest` names
        tag = folder / named.strip()
    name = dir_layout(str(tag))
    layout = layout_named(name) if name else None
    weights = layout.unmerged_weights(tag) if layout is not None else None
    if weights is not None:
        rel = os.path.relpath(weights, folder)
        raise JobRequestError(
            f"{folder.name} holds model states only (saved without optimizer shards): "
            f"nothing to merge. Its weights are in {rel}: select that file and press e "
            "to export them as one file"
        )
