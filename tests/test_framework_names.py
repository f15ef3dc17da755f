"""One framework, one module: no framework is named outside ``src/ckpttui/layouts/``.

The check reads every module's tokens (names, strings, comments and docstrings) and fails on a
framework word. Adding a framework is adding a layout module; nothing else may learn its name.

Exempt, and why:
* ``layouts/``: where frameworks live.
* ``demo/``: writes imitation checkpoints of each framework for ``ckpttui demo`` and the tests.
* format modules, which read one framework's own file format, as ``formats/`` reads torch's:
  ``jobs/zero.py`` (ZeRO rank partitions), ``jobs/merge.py`` (consolidating them, HF shards) and
  ``jobs/lora.py`` (merging a LoRA adapter with the semantics of the library that wrote it).
* the ``merge`` command's own parser in ``jobcli.py`` (``merge_parser`` and the ``merge`` branch
  of ``_spec``): its options name the format it converts (``--deepspeed-compat``).
User-facing text elsewhere takes a framework's name from its layout (``Layout.title``).

Not in the list: ``adapters`` and ``transformers`` (also plain words and parameter-name parts:
``adapters.`` keys), ``hf``/``HF`` (the Hugging Face file format: safetensors + index + config, a
format many frameworks write, not a framework's convention).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from helpers import SRC

WORDS = re.compile(
    r"fairseq|speech_?brain|fun_?asr|wenet|lightning|espnet|deep_?speed|zero_to_fp32|"
    r"\bpeft\b|hf-trainer|hf-model|peft-adapter|CKPT\+|\bCKPT\.yaml",
    re.IGNORECASE,
)
EXEMPT_DIRS = ("layouts", "demo")
EXEMPT_FILES = {"jobs/zero.py", "jobs/merge.py", "jobs/lora.py"}
EXEMPT_FUNCTIONS = {"jobcli.py": {"merge_parser"}}


def _exempt_lines(rel: str, text: str) -> set[int]:
    names = EXEMPT_FUNCTIONS.get(rel, set())
    lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name in names:
            lines |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if rel == "jobcli.py" and isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test == "kind == 'merge'":
                lines |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def offences() -> list[str]:
    """``path:line: word`` for every framework word outside the exempt places."""
    package = SRC / "ckpttui"
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.split("/")[0] in EXEMPT_DIRS or rel in EXEMPT_FILES:
            continue
        text = path.read_text(encoding="utf-8")
        skip = _exempt_lines(rel, text)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type not in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT):
                continue
            for offset, line in enumerate(tok.string.splitlines() or [""]):
                number = tok.start[0] + offset
                m = WORDS.search(line)
                if m and number not in skip:
                    found.append(f"{rel}:{number}: {m.group(0)}")
    return found


def test_no_framework_is_named_outside_layouts() -> None:
    assert offences() == []


def test_the_check_sees_names_strings_and_comments(tmp_path: Path) -> None:
    sample = 'x = "deepspeed"  # fairseq\ndef speechbrain_rank(): ...\n'
    hits = [
        WORDS.search(t.string)
        for t in tokenize.generate_tokens(io.StringIO(sample).readline)
        if t.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT)
    ]
    assert [h.group(0) for h in hits if h] == ["deepspeed", "fairseq", "speechbrain"]


def test_every_registered_layout_answers_for_its_framework() -> None:
    from ckpttui.layouts import DIR_LAYOUTS, FILE_LAYOUTS, Layout, layout_named

    for recogniser in (*DIR_LAYOUTS, *FILE_LAYOUTS):
        layout = layout_named(recogniser.name)
        assert isinstance(layout, Layout) and layout.title, recogniser.name
        assert layout.contract.metadata_from in ("first", "last")
    assert layout_named("no-such-layout").name == "torch"
