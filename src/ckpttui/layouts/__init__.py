"""Recognisers for folder and file conventions of the training frameworks.

Adding a framework is adding one module and one entry in `DIR_LAYOUTS` or `FILE_LAYOUTS`.
Order matters: the first recogniser that claims a folder or file wins.
"""

from __future__ import annotations

from ckpttui.layouts.base import DirLayout, FileLayout
from ckpttui.layouts.dcp import DCP
from ckpttui.layouts.deepspeed import DeepSpeed
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
FILE_LAYOUTS: tuple[FileLayout, ...] = (Lightning(), Fairseq(), FunASR(), WeNet(), PlainTorch())

__all__ = ["DIR_LAYOUTS", "FILE_LAYOUTS", "DirLayout", "FileLayout"]
