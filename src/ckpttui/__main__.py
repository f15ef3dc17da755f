"""`python -m ckpttui`."""

from ckpttui.cli import main

raise SystemExit(main())
