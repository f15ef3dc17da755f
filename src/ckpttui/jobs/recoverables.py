"""A checkpoint folder out of a checkpoint folder: one file per recoverable module.

Some frameworks save a checkpoint as a folder holding one bare state dict per module
(`Layout.recoverables`) beside sidecars (a metadata YAML, counters, normaliser statistics), and
their loaders read each module's file by its name. Averaging or exporting such a folder into
one file would put every module under a name prefix that the loader does not know (it loads
nothing, silently), so a folder output keeps the folder's shape:

* each weights file averaged or exported as a bare state dict under its own file name;
* every other file of the input named by the layout's `LoaderContract.metadata_from` (the newest
  by default) copied as it is, byte for byte: sidecars, counters and the normaliser statistics
  the model needs to run (their integer counts included); the metadata sidecar gets one comment
  line appended (`WRITTEN_BY`: what it holds, so it is never taken for an interrupted save);
* optimizer files left out, named in one line.

The folder is written under a temporary name, fsynced and renamed, like every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ckpttui.jobs.atomic import AtomicOutput
from ckpttui.jobs.events import Event, JobError, ProgressClock, check_cancel
from ckpttui.jobs.output import Planned, releaser, start_events, verify_output, write_torch_file
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.weights import WeightSet
from ckpttui.layouts import layout_named
from ckpttui.layouts.base import WRITTEN_BY


def wants_folder(ws: WeightSet, out: str | os.PathLike[str]) -> bool:
    """Whether `out` asks for a checkpoint folder: a recoverables source and a name without a
    file suffix."""
    return bool(ws.companions or ws.prefixed) and not Path(out).suffix


def refuse_prefixed_file(ws: WeightSet, out: str | os.PathLike[str]) -> None:
    """A ``.pt`` of several modules' weights under name prefixes: no loader of the framework reads
    it, and some load it silently wrong; refuse with what to do instead."""
    if ws.prefixed:
        stems = ", ".join(f.stem for f in ws.files)
        raise JobError(
            f"{ws.path}: holds {len(ws.files)} modules' weights ({stems}); one .pt file would "
            "prefix their names and the framework's loader would load nothing. Give a folder "
            "name to write one file per module, or choose one with --recoverable"
        )


def _groups(ws: WeightSet, plan: Sequence[Planned]) -> list[tuple[str, list[Planned]]]:
    """The plan split per weights file, names without their recoverable prefix."""
    if not ws.prefixed:
        return [(ws.files[0].name, list(plan))]
    groups = []
    for f in ws.files:
        prefix = f"{f.stem}."
        part = [
            Planned(
                p.name.removeprefix(prefix),
                p.dtype,
                p.shape,
                p.load,
                p.alias_of.removeprefix(prefix) if p.alias_of else None,
            )
            for p in plan
            if p.name.startswith(prefix)
        ]
        groups.append((f.name, part))
    return groups


def write_folder(
    job: str,
    ws: WeightSet,
    plan: Sequence[Planned],
    out: str | os.PathLike[str],
    *,
    inputs: Sequence[str | os.PathLike[str]],
    force: bool = False,
    cancel: threading.Event | None = None,
    start_data: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    sources: Sequence[TensorSource] = (),
) -> Iterator[Event]:
    """Write a checkpoint folder: one bare state dict per weights file of `ws`, its companions
    copied as they are (see the module). `ws` is the input whose companions are carried."""
    target = Path(os.path.abspath(out))
    layout = layout_named(ws.layout)
    groups = _groups(ws, plan)
    total = sum(p.nbytes for p in plan if p.alias_of is None)
    carried = sum(f.stat().st_size for f in ws.companions)
    atomic = AtomicOutput(
        target,
        inputs=inputs,
        force=force,
        folder=True,
        estimate=total + carried + 65536 * (len(groups) + 1) + 256 * len(plan),
    )
    atomic.check()
    all_notes = list(notes)
    if ws.companions:
        all_notes.append(
            f"carried from {ws.path.name} as they are: " + ", ".join(f.name for f in ws.companions)
        )
    prefix = layout.contract.folder_prefix
    if prefix and not target.name.startswith(prefix):
        all_notes.append(f"{layout.title} finds checkpoint folders named {prefix}*; rename it")
    yield from start_events(job, target, "folder", total, len(plan), start_data, all_notes)
    clock = ProgressClock(job, total)
    hashes: dict[str, str] = {}
    inputs_named = (start_data or {}).get("inputs") or [str(ws.path)]
    inputs_named = [Path(p).name for p in inputs_named]
    with atomic as temp:
        for name, part in groups:
            hashes[name] = yield from write_torch_file(
                temp / name,
                target / name,
                Path(name).stem or "archive",
                part,
                clock,
                cancel,
                releaser(sources),
            )
        for companion in ws.companions:
            check_cancel(cancel)
            if companion.name in hashes:
                raise JobError(f"{companion}: its name is also a written weights file")
            shutil.copyfile(companion, temp / companion.name)
            if companion.name == layout.contract.sidecar:
                with open(temp / companion.name, "a", encoding="utf-8") as sidecar:
                    sidecar.write(
                        f"\n{WRITTEN_BY} ({job} of {', '.join(inputs_named)}; "
                        "optimizer files left out)\n"
                    )
            hashes[companion.name] = hashlib.sha256(
                (temp / companion.name).read_bytes()
            ).hexdigest()
        last = clock.flush()
        if last is not None:
            yield last
        # read back before the output is placed: a bad folder never replaces anything
        files = [temp / name for name, _ in groups]
        done = verify_output(
            job, target, "folder", plan, files, {n: hashes[n] for n, _ in groups}, total
        )
        check_cancel(cancel)
    yield dataclasses.replace(
        done, message=f"{done.message}; {len(ws.companions)} files carried as they are"
    )
