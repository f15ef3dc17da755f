"""An experiments folder for the app tests, copied from the real-writer fixtures.

Only files whose bytes do not depend on where or when they were written are copied, so the
screens are the same on every machine (snapshot tests).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ui_root(tmp_path_factory: pytest.TempPathFactory, tk_root: Path, ds_root: Path) -> Path:
    """experiments/{asr-funasr/exp, lm-deepspeed-z2, broken}."""
    root = tmp_path_factory.mktemp("ui") / "experiments"
    exp = root / "asr-funasr" / "exp"
    exp.mkdir(parents=True)
    for name in (
        "model.pt.ep1",
        "model.pt.ep2",
        "model.pt.ep3",
        "model.pt.ep1.3",
        "model.pt",
        "model.pt.avg2",
    ):
        shutil.copy(tk_root / "funasr" / name, exp / name)
    shutil.copytree(ds_root / "ws2" / "z2_fp32", root / "lm-deepspeed-z2")
    broken = root / "broken"
    broken.mkdir()
    data = (exp / "model.pt.ep1").read_bytes()
    (broken / "model.pt.ep9").write_bytes(data[: len(data) // 3])
    (broken / "empty.pt").write_bytes(b"")
    return root


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs do not blink, so snapshots do not depend on the moment they are taken (harlequin)."""
    from textual.widgets import Input

    original = Input.__init__

    def init(self: Input, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self.cursor_blink = False

    monkeypatch.setattr(Input, "__init__", init)
