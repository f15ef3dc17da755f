"""Regenerate the SVG screenshots in this folder from the demo experiments tree.

    ./dev ckpttui demo --no-open      # once: writes the demo folder
    .venv/bin/python screenshots/make_screenshots.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from ckpttui.demo import ensure_demo  # noqa: E402
from ckpttui.ui.app import make_app  # noqa: E402


async def _shot(path: Path, name: str, keys: tuple[str, ...] = (), size: tuple[int, int] = (120, 40),
                before: Any = None) -> None:
    app = make_app(str(path))
    async with app.run_test(size=size) as pilot:
        for _ in range(3):
            await pilot.pause()
            await app.workers.wait_for_complete()
        if before is not None:
            await before(app, pilot)
        if keys:
            await pilot.press(*keys)
            for _ in range(3):
                await pilot.pause()
                await app.workers.wait_for_complete()
        app.save_screenshot(str(HERE / f"{name}.svg"))
    print(f"wrote {HERE / name}.svg")


async def main() -> None:
    """Folder view, FunASR epoch breakdown, training curve."""
    demo = ensure_demo()
    await _shot(demo, "folder-view")
    await _shot(demo / "asr-paraformer-funasr" / "exp" / "model.pt.ep3", "funasr-breakdown")
    await _shot(demo / "asr-paraformer-funasr" / "exp", "training-curve", keys=("c",))
    await _shot(demo / "lm-gpt2-hf-trainer" / "checkpoint-6", "hf-checkpoint-summary",
                keys=("1",))


if __name__ == "__main__":
    asyncio.run(main())
