"""Every error ckpttui raises, in one place (the classes stay where they are raised).

Hierarchy::

    Exception
    ├── FormatError        ckpttui.formats.errors   a file is not what its format promises
    │   └── SidecarError   ckpttui.formats.sidecar  a sidecar (JSON/YAML/text) cannot be read
    ├── UnpickleError      ckpttui.formats.unpickler  a pickle cannot be read (restricted unpickler)
    ├── JobError           ckpttui.jobs.events      a merge/average/export job cannot go on
    │   └── JobCancelled   ckpttui.jobs.events      the job's cancel event was set
    ├── AdapterError       ckpttui.layouts.lora     an adapter folder cannot be merged into its base
    ├── JobRequestError    ckpttui.ui.jobrequest    the app's selection does not fit the job
    ├── ValueError
    │   ├── RankError      ckpttui.layouts.base     a run cannot be ranked or chosen from as asked
    │   └── ScanFileError  ckpttui.scanfile         a file given as a saved scan is not one
    └── RuntimeError
        └── DemoWriterError  ckpttui.demo.hf_writer  a demo writer's child process failed
    BaseException
    └── KeyboardInterrupt
        └── Interrupted    ckpttui.jobcli           a job command was stopped by SIGINT/SIGTERM/SIGHUP

What each one becomes for the user (never a traceback):

- ``UnpickleError`` never leaves ``ckpttui.formats``: the readers (torch_zip, torch_legacy, dcp)
  turn it into a ``FormatError`` that names the pickle inside the file.
- ``FormatError`` (and ``OSError``) raised by a reader is caught by ``formats.read_file`` and
  becomes ``FileIndex.error``: one line, with a byte offset when known. ``inspect`` lists it as
  ``error PATH: MESSAGE`` (``errors`` in ``--json``) and goes on with the other files, exit 0; the
  app shows it in the file's summary.
- ``JobError`` carries one line that names the file concerned. ``jobs.events.drive`` and
  ``jobs.runner.run_spec`` turn it (and ``OSError``/``ValueError`` from the job's arguments) into
  a final ``error`` event; ``JobCancelled`` gives ``data["cancelled"] = True``. The job commands
  print it on stderr and exit 1 (2 for usage errors); the app's jobs pane shows it.
- ``JobRequestError`` is shown by the app as a warning notification telling the user what to
  select; no job starts.
- ``ScanFileError`` (``ckpttui scan.json``: not JSON, not an ``inspect --json`` document, cut
  short while being copied, or from a newer ckpttui) names the file and the line where known;
  the CLI prints it on stderr and exits 2, before the app opens.
- ``DemoWriterError`` is raised inside the demo's build process: the adapter example alone is
  skipped with a note; any other failure ends ``ckpttui demo`` with ``ckpttui demo: demo
  generation failed:`` and the build's last lines, exit 1.

New error types belong in this tree: subclass the nearest one above and add it here. This module
re-exports the headless ones (nothing here imports torch, numpy or textual).
"""

from __future__ import annotations

from ckpttui.formats.errors import FormatError
from ckpttui.formats.unpickler import UnpickleError
from ckpttui.jobs.events import JobCancelled, JobError

__all__ = ["FormatError", "JobCancelled", "JobError", "UnpickleError"]
