"""ESPnet2 experiment folders (``exp/asr_*/``), as espnet2/train/trainer.py ``Trainer.run`` leaves them.

* ``{N}epoch.pth``: ``torch.save(model.state_dict())`` after each epoch: a flat state dict, the
  file ``Speech2Text`` (espnet2/bin/asr_inference.py) and ``--init_param`` load;
* ``checkpoint.pth``: the resume state ``{"model", "reporter", "optimizers", "schedulers",
  "scaler"}``; ``reporter`` is ``Reporter.state_dict()`` = ``{"stats": {epoch: {"train" |
  "valid": {"loss": .., "acc": .., "time": timedelta, ...}}}, "epoch": N}``
  (espnet2/train/reporter.py);
* symlinks ``latest.pth`` and ``{phase}.{key}.best.pth`` to an epoch file, and
  ``{phase}.{key}.ave.pth`` to ``{phase}.{key}.ave_{n}best.pth``, the average of the n best epochs
  by that criterion (espnet2/main_funcs/average_nbest_models.py, criteria from ``config.yaml``
  ``best_model_criterion``, e.g. ``[valid, acc, max]``).
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
    lower_is_better,
    number,
    rank,
    read_yaml,
)
from ckpttui.records import Checkpoint, FileIndex

_EPOCH = re.compile(r"^(\d+)epoch\.pth$")
_DERIVED = re.compile(r"^(latest|[\w-]+\.[\w-]+\.(best|ave|ave_(\d+)best))\.pth$")
_RESUME_KEYS = {"model", "reporter", "optimizers"}


class ESPnet(Layout):
    """``{N}epoch.pth``, ``checkpoint.pth`` and the best/averaged links of an ESPnet2 run."""

    name = "espnet"
    title = "ESPnet"
    training = True
    candidate = _EPOCH
    # Speech2Text / --init_param load a bare model state dict (non-strictly: a wrapped dict
    # would load nothing, silently); average_nbest_models sums integer tensors.
    contract = LoaderContract(
        flat=True,
        script="espnet2/main_funcs/average_nbest_models.py",
        integers="sums them",
        average_name="valid.acc.ave_{n}best.pth",
    )

    def claims(self, path: Path, index: FileIndex | None) -> bool:
        """Epoch files, the resume file and the links, in a folder with ESPnet's own files."""
        data = index.data if index else None
        if path.name == "checkpoint.pth" and isinstance(data, dict):
            return set(map(str, data)) >= _RESUME_KEYS
        if not (_EPOCH.match(path.name) or _DERIVED.match(path.name)):
            return False
        folder = path.parent
        return (folder / "checkpoint.pth").is_file() or (folder / "config.yaml").is_file()

    def describe(self, ckpt: Checkpoint, index: FileIndex | None) -> None:
        """Epoch from the name or the reporter; per-epoch stats from ``checkpoint.pth``."""
        path = Path(ckpt.path)
        m = _EPOCH.match(path.name)
        if m:
            ckpt.epoch = int(m.group(1))
        derived = _DERIVED.match(path.name)
        if derived and derived.group(3):
            ckpt.info["averaged"] = int(derived.group(3))
        data = index.data if index else None
        if isinstance(data, dict) and isinstance(data.get("reporter"), dict):
            reporter = data["reporter"]
            ckpt.epoch = as_int(reporter.get("epoch"))
            ckpt.info["reporter"] = _stats(reporter.get("stats"))

    def curve_points(self, ckpt: Checkpoint, x: float | None) -> list[tuple[str, float, float]]:
        """Every numeric reporter value of every epoch (``valid.acc``, ``train.loss``...)."""
        stats = ckpt.info.get("reporter")
        if not isinstance(stats, dict):
            return []
        return [
            (f"{phase}.{key}", float(epoch), value)
            for epoch, phases in stats.items()
            for phase, values in phases.items()
            for key, value in values.items()
        ]

    def rank(
        self,
        ckpts: list[Checkpoint],
        siblings: list[Checkpoint],
        files: dict[str, FileIndex],
        metric: str | None,
        mode: str | None,
        root: Path,
    ) -> tuple[Ranked, str]:
        """The reporter's value of each epoch (``valid.acc`` by default, as ESPnet's recipes
        decode with ``valid.acc.ave.pth``), in the direction ``best_model_criterion`` gives."""
        folder = Path(ckpts[0].path).parent
        stats: dict[str, Any] = {}
        for ckpt in sorted(siblings, key=self.order):
            if isinstance(ckpt.info.get("reporter"), dict) and Path(ckpt.path).parent == folder:
                stats = ckpt.info["reporter"]
        if not stats:
            raise RankError(
                f"{root}: no checkpoint.pth with the reporter's per-epoch stats; "
                "choose the inputs, or take the last N"
            )
        recorded = sorted({f"{p}.{k}" for v in stats.values() for p, ks in v.items() for k in ks})
        if metric is None:
            metric = next((m for m in ("valid.acc", "valid.loss") if m in recorded), None)
        elif "." not in metric:
            metric = f"valid.{metric}"
        if metric not in recorded:
            raise RankError(
                f"{root}: the reporter records {', '.join(recorded) or 'nothing'}; "
                "pass --metric with one of them"
            )
        phase, key = metric.split(".", 1)
        if mode is None:
            mode = _criterion_mode(folder, phase, key)
        lower = lower_is_better(key, mode)
        scores = []
        for ckpt in ckpts:
            value = stats.get(str(ckpt.epoch), {}).get(phase, {}).get(key)
            if value is not None:
                scores.append((Path(ckpt.path), value))
        first = "lowest" if lower else "highest"
        return rank(scores, lower), f"reporter {metric} ({first} first)"


def _stats(raw: Any) -> dict[str, dict[str, dict[str, float]]]:
    """The reporter's numeric stats: epoch -> phase -> key -> value."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    if not isinstance(raw, dict):
        return out
    for epoch, phases in raw.items():
        if as_int(epoch) is None or not isinstance(phases, dict):
            continue
        for phase, values in phases.items():
            if not isinstance(values, dict):
                continue
            numeric = {
                str(k): v
                for k, value in values.items()
                if k not in ("time", "total_count") and (v := number(value)) is not None
            }
            if numeric:
                out.setdefault(str(as_int(epoch)), {})[str(phase)] = numeric
    return out


def _criterion_mode(folder: Path, phase: str, key: str) -> str | None:
    """``min``/``max`` for a criterion from ``config.yaml`` ``best_model_criterion``, if set."""
    config, _ = read_yaml(folder / "config.yaml")
    criteria = config.get("best_model_criterion") if isinstance(config, dict) else None
    for item in criteria if isinstance(criteria, list) else []:
        if isinstance(item, list) and len(item) == 3 and item[:2] == [phase, key]:
            return str(item[2]) if item[2] in ("min", "max") else None
    return None
