"""The help screen (``?``): what ckpttui shows and the keys that work."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# ckpttui

Browse checkpoint folders; see what each checkpoint is made of. Nothing here loads tensors or
runs a pickle: headers and pickles are read with a restricted unpickler.

| key | does |
|---|---|
| arrows, enter | move; open a folder, checkpoint or file |
| right / left | expand / collapse in the tree |
| tab | move between the tree and the right pane |
| `/` | filter: names in the folder view, tensor names in a checkpoint |
| `s` | sort: size, name, step (folder view); bytes, name, category, dtype (tensors) |
| `r` | re-read the selection from disk |
| `1` `2` `3` | Summary, Breakdown, Tensors tabs of a checkpoint |
| `c` | training curve of the selected folder |
| space | mark a checkpoint (for averaging) |
| `m` | merge the selected ZeRO checkpoint (or HF shards) into one file |
| `a` | average the marked checkpoints, or the last / best N of the selected run folder |
| `e` | export the selection's weights: safetensors, slim .pt, or an HF folder |
| `x` | cancel the selected (or newest) running job; `j` shows or hides the jobs pane |
| ctrl+p | command palette: every action |
| `q` | quit |

**Colours**: green weights, magenta optimizer state, yellow other training state (rng,
scheduler, EMA, normaliser). **Reclaimable** is what is not needed to run the model.

A red `!` marks folders holding incomplete or unreadable checkpoints; the Summary tab says why.

Jobs run in child processes and never change their inputs: they write `NAME.tmp-XXXX` beside
the output, check it, then rename it. Cancelling or a failure leaves nothing behind.
"""


class HelpScreen(ModalScreen[None]):
    """Keys and colours."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        """The help text."""
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
