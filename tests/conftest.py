"""Session fixtures: real checkpoints written once by the real libraries (see ckpttui.demo)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
