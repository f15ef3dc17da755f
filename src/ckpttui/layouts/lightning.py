"""PyTorch Lightning ``.ckpt`` files (lightning/pytorch/trainer/connectors/checkpoint_connector.py
``dump_checkpoint``): ``epoch``, ``global_step``, ``pytorch-lightning_version``, ``state_dict``,
``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers``, ``hyper_parameters``...

``callbacks`` holds each callback's state under its ``state_key``; ``ModelCheckpoint``'s is
``ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', ...}`` and records ``monitor``,
``best_model_score``, ``best_model_path``, ``current_score`` and ``best_k_models`` (path -> score
tensor) (lightning/pytorch/callbacks/model_checkpoint.py ``state_dict``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ckpttui.layouts.base import (
    Layout,
    LoaderContract,
    Ranked,
    RankError,
    as_int,
    number,
    number_in,
    plain,
    rank,
    scalars,
)
from ckpttui.records import Checkpoint, FileIndex

_STATE_KEY = re.compile(r"^ModelCheckpoint\{")
_MODE = re.compile(r"'mode':\s*'(min|max)'")


class Lightning(Layout):
    """A Lightning checkpoint (``epoch=3-step=1000.ckpt``, ``last.ckpt``)."""

    name = "lightning"
    title = "Lightning"
    training = True
    # What dump_checkpoint(weights_only=True) writes: its migration reads
    # pytorch-lightning_version, load_from_checkpoint reads state_dict and hyper_parameters.
    contract = LoaderContract(
        keep=(
            "epoch",
            "global_step",
            "pytorch-lightning_version",
            "state_dict",
            "loops",
            "hparams_name",
            "hyper_parameters",
            "hparams_type",
            "datamodule_hparams_name",
            "datamodule_hyper_parameters",
        ),
        average_name="averaged-{n}.ckpt",
    )

    def is_candidate(self, ckpt: Checkpoint) -> bool:
        """Every save but ``last.ckpt`` (a copy of the newest) and links."""
        name = Path(ckpt.path).name
        return not ckpt.info.get("symlink_to") and not re.match(r"^last(-v\d+)?\.ckpt$", name)

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Dicts carrying ``pytorch-lightning_version``."""
        data = index.data if index else None
        return isinstance(data, dict) and "pytorch-lightning_version" in data

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch and global step from the dict (or the file name); the ModelCheckpoint state."""
        data = index.data if index else {}
        name = Path(ckpt.path).name
        ckpt.epoch = as_int(data.get("epoch")) if isinstance(data, dict) else None
        ckpt.step = as_int(data.get("global_step")) if isinstance(data, dict) else None
        if ckpt.epoch is None:
            ckpt.epoch = number_in(r"epoch=(\d+)", name)
        if ckpt.step is None:
            ckpt.step = number_in(r"step=(\d+)", name)
        if not isinstance(data, dict):
            return
        ckpt.info["pytorch-lightning_version"] = plain(data.get("pytorch-lightning_version"))
        if isinstance(data.get("hyper_parameters"), dict):
            ckpt.info["hyper_parameters"] = plain(data["hyper_parameters"])
        states = list(_model_checkpoints(data))
        # every metric tensor of every callback, read with one opening of the archive
        refs: list[Any] = []
        for state, _ in states:
            best_k = state.get("best_k_models") or {}
            refs += [state.get("best_model_score"), state.get("current_score"), *best_k.values()]
        values = iter(scalars(ckpt.path, refs))
        monitored = []
        for state, mode in states:
            best_score, current = next(values), next(values)
            scores = {
                Path(str(p)).name: v
                for p in (state.get("best_k_models") or {})
                if (v := next(values)) is not None
            }
            monitored.append(
                {
                    "monitor": plain(state.get("monitor")),
                    "mode": mode,
                    "dirpath": plain(state.get("dirpath")),
                    "best_model_path": plain(state.get("best_model_path")),
                    "best_model_score": best_score,
                    "current_score": current,
                    "best_k_models": scores,
                }
            )
        if monitored:
            ckpt.info["model_checkpoint"] = monitored

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """Each ModelCheckpoint callback's monitored value when this file was saved
        (``current_score``): the curve Lightning itself ranks by."""
        if x is None:
            return []
        points = []
        for state in ckpt.info.get("model_checkpoint") or []:
            name, value = state.get("monitor"), number(state.get("current_score"))
            if isinstance(name, str) and value is not None:
                points.append((name, x, value))
        return points

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """By the ``ModelCheckpoint`` state (its ``monitor``, ``mode`` and ``best_k_models``, plus
        each save's own ``current_score``), else by ``<metric>=<value>`` in the file names."""
        folder = Path(ckpts[0].path).parent.name
        names = {Path(c.path).name for c in ckpts}
        # One ModelCheckpoint callback per monitored metric (and folder): the one that saved here.
        states = [
            s
            for c in sorted(siblings, key=self.order)
            for s in c.info.get("model_checkpoint") or []
            if metric is None or s.get("monitor") == metric
        ]
        here = [
            s
            for s in states
            if Path(str(s.get("dirpath") or "")).name == folder or names & set(s["best_k_models"])
        ]
        monitors = sorted({str(s["monitor"]) for s in here or states})
        if len(monitors) > 1:
            raise RankError(
                f"{root}: ModelCheckpoint callbacks monitor {', '.join(monitors)}; "
                "pass --metric with one of them"
            )
        if monitors:
            monitor = monitors[0]
            values: dict[str, float] = {}
            for ckpt in siblings:
                # A callback updates current_score before it saves, so the file it saved holds
                # its own score; another callback's save may hold the previous epoch's.
                for state in ckpt.info.get("model_checkpoint") or []:
                    if (
                        state.get("monitor") == monitor
                        and state.get("current_score") is not None
                        and Path(str(state.get("dirpath") or "")).name == folder
                    ):
                        values[Path(ckpt.path).name] = state["current_score"]
            for state in here or states:
                values.update(state.get("best_k_models") or {})
            kept_mode = next((s["mode"] for s in reversed(states) if s.get("mode")), "min")
            lower = (mode or kept_mode) == "min"
            scores = [
                (Path(c.path), values[Path(c.path).name])
                for c in ckpts
                if Path(c.path).name in values
            ]
            if scores:
                return rank(scores, lower), (
                    f"{monitor} from the ModelCheckpoint state ({'lowest' if lower else 'highest'} first)"
                )
        if metric is None and monitors:
            raise RankError(
                f"{root}: the ModelCheckpoint(monitor={monitors[0]!r}) state in these files "
                "scores the files it saved elsewhere, not these; pass --metric NAME to rank by "
                "NAME=value in the file names"
            )
        if metric is None:
            raise RankError(
                f"{root}: these Lightning checkpoints hold no ModelCheckpoint(monitor=...) "
                "state; pass --metric NAME to rank by NAME=value in the file names "
                "(epoch=3-val_loss=0.12.ckpt)"
            )
        pattern = re.compile(re.escape(metric) + r"=([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
        scores = [
            (Path(c.path), float(m.group(1)))
            for c in ckpts
            if (m := pattern.search(Path(c.path).stem))
        ]
        if not scores:
            raise RankError(
                f"{root}: no ModelCheckpoint state monitors {metric!r} and no file name holds "
                f"{metric}=value; pass --metric with the monitored name"
                + (f" ({monitors[-1]})" if monitors else "")
            )
        lower = mode != "max"  # ModelCheckpoint's mode defaults to "min"
        return rank(
            scores, lower
        ), f"{metric} in the file names ({'lowest' if lower else 'highest'} first)"


def _model_checkpoints(data: dict[str, Any]) -> list[tuple[dict[str, Any], str | None]]:
    """Each ModelCheckpoint callback state that monitors a metric, with its mode (from the key)."""
    callbacks = data.get("callbacks")
    if not isinstance(callbacks, dict):
        return []
    found = []
    for key, state in callbacks.items():
        if (
            isinstance(key, str)
            and _STATE_KEY.match(key)
            and isinstance(state, dict)
            and state.get("monitor")
        ):
            m = _MODE.search(key)
            found.append((state, m.group(1) if m else None))
    return found
