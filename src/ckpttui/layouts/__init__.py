"""Recognisers for folder and file conventions of the training frameworks.

Adding a framework is adding one module and one entry in `DIR_LAYOUTS` or `FILE_LAYOUTS`.
Order matters: the first recogniser that claims a folder or file wins. Everything else in ckpttui
asks a framework's questions (roles, ranking, curves, loader contract) through `layout_named`.
"""

from __future__ import annotations

from ckpttui.layouts.base import DirLayout, FileLayout, Layout, LoaderContract, RankError
from ckpttui.layouts.dcp import DCP
from ckpttui.layouts.deepspeed import DeepSpeed
from ckpttui.layouts.espnet import ESPnet
from ckpttui.layouts.fairseq import Fairseq
from ckpttui.layouts.funasr import FunASR
from ckpttui.layouts.hf import HFModel, HFTrainer, PeftAdapter
from ckpttui.layouts.lightning import Lightning
from ckpttui.layouts.plain import PlainTorch
from ckpttui.layouts.speechbrain import SpeechBrain
from ckpttui.layouts.wenet import WeNet, WeNetFolder

DIR_LAYOUTS: tuple[DirLayout, ...] = (
    HFTrainer(),
    DeepSpeed(),
    SpeechBrain(),
    DCP(),
    PeftAdapter(),
    WeNetFolder(),
    HFModel(),
)
FILE_LAYOUTS: tuple[FileLayout, ...] = (
    Lightning(),
    Fairseq(),
    FunASR(),
    WeNet(),
    ESPnet(),
    PlainTorch(),
)

_BY_NAME: dict[str, Layout] = {}
for _layout in (*FILE_LAYOUTS, *DIR_LAYOUTS):
    assert isinstance(_layout, Layout)
    _BY_NAME.setdefault(_layout.name, _layout)


def layout_named(name: str) -> Layout:
    """The layout registered under `name`; the plain torch fallback for an unknown name."""
    return _BY_NAME.get(name) or _BY_NAME["torch"]


def mergeable_titles() -> str:
    """What ``merge`` consolidates, for help text (``DeepSpeed ZeRO or HF model shards``)."""
    return " or ".join(
        f"{L.title} {'shards' if L.weights_in_shards else 'checkpoints'}".strip()
        for L in _BY_NAME.values()
        if L.mergeable
    )


__all__ = [
    "DIR_LAYOUTS",
    "FILE_LAYOUTS",
    "DirLayout",
    "FileLayout",
    "Layout",
    "LoaderContract",
    "RankError",
    "layout_named",
    "mergeable_titles",
]
