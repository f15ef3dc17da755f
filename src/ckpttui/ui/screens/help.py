"""The help screen (``?``): what ckpttui shows and the keys that work."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

HELP = """\
# ckpttui

Browse checkpoint folders; see what each checkpoint is made of. Nothing here loads tensors or
runs a pickle: headers and pickles are read with a restricted unpickler.

| key | does |
|---|---|
| arrows, `j` `k` | move |
| right, `l`, enter | open: expand a folder or checkpoint in the tree, drill into a row of the list |
| left, `h` | collapse an open node, else go to its parent (left open) |
| backspace | up to the parent folder (tree and list) |
| tab | move between the tree and the right pane |
| `/` | filter: names in the folder view, tensor names in a checkpoint; enter keeps it, esc clears it |
| `s` / `S` | sort: size, reclaimable, name, step (folder view); bytes, name, category, dtype (tensors) / reverse |
| `r` | re-read the selection from disk |
| `p` | pause or resume live: the folder shown is watched (every 2 s) for checkpoints being written |
| `1` `2` `3` | Summary, Breakdown, Tensors tabs of a checkpoint |
| `c` | training curve of the selected folder |
| space | mark a checkpoint (for average, diff, verify, reclaim); marks stay until you unmark them |
| `m` | merge the selected ZeRO checkpoint (or HF shards) into one file; on a LoRA adapter, into its base |
| `a` | average the marked checkpoints, or the last / best N of the selected run folder |
| `e` | export the selection's weights: safetensors, slim .pt, or an HF folder |
| `v` | verify the selection (or the marked checkpoints): CRCs, bounds, NaN/Inf; fills the health column and the Tensors tab's statistics |
| `D` | diff the two marked checkpoints (A marked first): modules and tensors by change, frozen modules called out |
| `d` | reclaim space: the plan for the selected run folder (or the marked checkpoints), then a job that slims them in place |
| `x` | cancel the selected (or newest) running job; `J` shows or hides the jobs pane |
| ctrl+p | command palette: every action, with its key |
| `q` | quit (asks first while jobs run) |

**Bars**: `█` weights, `▒` optimizer state, `░` other training state (rng, scheduler, EMA,
normaliser), in the theme's success, primary and warning colours; red is kept for errors.
**Reclaimable** is what is not needed to run the model. Sizes count hardlinked files once.

A red `!` marks folders holding incomplete or unreadable checkpoints, or checkpoints verify found
problems in; the Summary tab (or, after `v`, the Tensors tab) says why. **health** (after `v`):
`healthy`, `N problems` or `not verified`, for this session.
A yellow `writing` marks an entry that changed at the last look: a checkpoint being saved.

`ckpttui scan.json` (from `ckpttui inspect PATH --json > scan.json`) browses a saved scan,
read-only: jobs, reclaim and verify need the files and are off.

Jobs run in child processes and never change their inputs: they write `NAME.tmp-XXXX` beside
the output, check it, then rename it. Cancelling or a failure leaves nothing behind. Reclaim alone
rewrites checkpoints, the ones its plan slims, each the same way: beside itself, then renamed over.
"""


class HelpScreen(ModalScreen[None]):
    """Keys and colours."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", key_display="esc")]

    def compose(self) -> ComposeResult:
        """The help text."""
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
        yield Footer()
