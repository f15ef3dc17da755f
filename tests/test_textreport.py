"""``ckpttui inspect`` (the human table): what a user reads in each column."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli


def test_trainer_epochs_show_their_fraction(hf_root: Path) -> None:
    run = hf_root / "trainer_gpt2"
    proc = run_cli("inspect", str(run))
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")][1:]  # the row starts with a border
        if cells and cells[0].startswith("checkpoint-"):
            rows[cells[0]] = cells
    assert set(rows) == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    for name, cells in rows.items():
        # what Trainer itself recorded (4 steps per epoch: a save every half epoch)
        epoch = json.loads((run / name / "trainer_state.json").read_text())["epoch"]
        assert cells[3] == f"{epoch:g}", (name, cells)
    assert rows["checkpoint-2"][3] == "0.5"
