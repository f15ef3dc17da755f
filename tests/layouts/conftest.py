"""Layout fixtures built in the test's tmp_path.

`espnet_run` imitates what espnet2's ``Trainer.run`` leaves in ``exp/asr_*/`` until the interop
tier's real ESPnet runs land in tests/data (espnet2/train/trainer.py: ``{N}epoch.pth`` =
``model.state_dict()``, ``checkpoint.pth`` = ``{model, reporter, optimizers, schedulers, scaler}``,
``latest.pth`` and ``{phase}.{key}.best.pth`` symlinks; espnet2/main_funcs/average_nbest_models.py:
``{phase}.{key}.ave_{n}best.pth`` and its ``.ave.pth`` symlink; espnet2/train/reporter.py:
``Reporter.state_dict()`` = ``{"stats": {epoch: {phase: {key: value}}}, "epoch": N}``).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

VALID_ACC = {1: 0.50, 2: 0.71, 3: 0.64, 4: 0.69}
VALID_LOSS = {1: 3.0, 2: 2.1, 3: 2.4, 4: 1.9}


@pytest.fixture
def espnet_run(tmp_path: Path) -> Path:
    """``exp/asr_train/`` after 4 epochs, with ESPnet's own 2-best average by valid.acc."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    run = tmp_path / "exp" / "asr_train"
    run.mkdir(parents=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats: dict[int, dict[str, dict[str, object]]] = {}
    for epoch in range(1, 5):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(5, 4)).sum().backward()
            opt.step()
        stats[epoch] = {
            "train": {
                "loss": np.float64(VALID_LOSS[epoch] + 0.3),
                "acc": np.float64(0.4 + epoch / 20),
            },
            "valid": {
                "loss": np.float64(VALID_LOSS[epoch]),
                "acc": np.float64(VALID_ACC[epoch]),
                "time": datetime.timedelta(seconds=1.5),
                "total_count": 3 * epoch,
            },
        }
        torch.save(model.state_dict(), run / f"{epoch}epoch.pth")
    torch.save(
        {
            "model": model.state_dict(),
            "reporter": {"stats": stats, "epoch": 4},
            "optimizers": [opt.state_dict()],
            "schedulers": [None],
            "scaler": None,
        },
        run / "checkpoint.pth",
    )
    (run / "config.yaml").write_text(
        "best_model_criterion:\n- - valid\n  - acc\n  - max\n- - valid\n  - loss\n  - min\n"
        "keep_nbest_models: 10\n"
    )
    (run / "latest.pth").symlink_to("4epoch.pth")
    (run / "valid.acc.best.pth").symlink_to("2epoch.pth")
    (run / "valid.loss.best.pth").symlink_to("4epoch.pth")
    avg = None
    for e in (2, 4):  # the 2 best by valid.acc, as average_nbest_models sums them
        states = torch.load(run / f"{e}epoch.pth")
        if avg is None:
            avg = states
        else:
            for k in avg:
                avg[k] += states[k]
    assert avg is not None
    for k in avg:
        if avg[k].is_floating_point():
            avg[k] /= 2
    torch.save(avg, run / "valid.acc.ave_2best.pth")
    (run / "valid.acc.ave.pth").symlink_to("valid.acc.ave_2best.pth")
    return run
