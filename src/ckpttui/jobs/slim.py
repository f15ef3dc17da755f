"""The slim ``.pt`` layout of a framework: what a written file holds beside the state dict.

The layout's `LoaderContract` says which: the top-level keys kept beside the state dict (``keep``:
the ones the loader or resume path reads; the rest is named as left out, one line), or the bare
state dict (``flat``: what the loader reads; a wrapped source is unwrapped). A bare dict keeps its
plain values beside its tensors (a normaliser's ``count``).

Metadata is copied from our restricted unpickler's skeleton, never by running the source pickle
(`Carrier`): plain data as is, ``argparse.Namespace`` rebuilt from its recorded state (the one
class rebuilt), ``AttributeDict`` as a plain dict, torch dtypes as dtypes, tensors (a meter's
``val`` and ``sum``) streamed from the source bit for bit; anything else (other classes, numpy
arrays) is dropped and summarised in one ``log`` line per kind.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ckpttui.formats.unpickler import OpaqueObject, TensorRef, TorchConst
from ckpttui.jobs.output import Planned
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.weights import WeightSet
from ckpttui.layouts import layout_named

_DROP = object()
_STATE = object()
_META_PREFIX = "\0meta:"  # names of metadata tensors in a plan: never a state-dict name


class Carrier:
    """Copies pickled metadata from our restricted unpickler's skeleton, never by running it.

    Plain data is copied as is, ``argparse.Namespace`` rebuilt from its recorded state,
    ``AttributeDict`` made a plain dict, torch dtypes made dtypes; a tensor inside metadata (a
    meter's ``val``) becomes a placeholder whose values are streamed from the source file like a
    weight (`tensors`), so the loader gets it back bit for bit. Anything else is dropped and
    counted by kind (`dropped`).
    """

    def __init__(self, source: TensorSource | None) -> None:
        self.source = source
        self.tensors: list[Planned] = []
        """The metadata tensors to write, in the order met (their names are placeholders)."""
        self.dropped: dict[str, list[str]] = {}
        """Kind (class name) -> where each dropped value sat."""

    def carry(self, value: Any, where: str) -> Any:
        """A copy of `value` that `torch.load(weights_only=True)` reads; `_DROP` where it cannot."""
        if value is None or type(value) in (bool, int, float, str, bytes, complex):
            return value
        if isinstance(value, TorchConst):
            import torch

            dtype = getattr(torch, value.removeprefix("torch."), None)
            if value.startswith("torch.") and isinstance(dtype, torch.dtype):
                return dtype
            return self._drop(f"torch constant {str(value)!r}", where)
        if isinstance(value, TensorRef):
            if self.source is None or value.storage is None:
                return self._drop("tensor", where)
            name = f"{_META_PREFIX}{len(self.tensors)}:{where}"
            self.tensors.append(
                Planned(name, value.dtype, value.shape, partial(self.source.tensor, value))
            )
            return _MetaTensor(name)
        if isinstance(value, dict):
            out: dict[Any, Any] = OrderedDict() if isinstance(value, OrderedDict) else {}
            for key, item in value.items():
                k = self.carry(key, f"{where}[{key!r}]")
                v = self.carry(item, f"{where}.{key}") if k is not _DROP else _DROP
                if v is not _DROP:
                    out[k] = v
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [self.carry(v, f"{where}[{i}]") for i, v in enumerate(value)]
            if any(v is _DROP for v in items):
                return _DROP
            kind = type(value) if type(value) in (list, tuple, set, frozenset) else list
            return kind(items)
        if isinstance(value, OpaqueObject):
            qualname = type(value).__qualname_full__
            if qualname == "argparse.Namespace":
                fields = self.carry(value.fields(), where)
                return argparse.Namespace(**{str(k): v for k, v in fields.items()})
            if qualname.endswith(".AttributeDict") and not value.fields():
                return self.carry(dict(getattr(value, "items", {})), where)
            return self._drop(qualname, where)
        return self._drop(type(value).__name__, where)

    def _drop(self, kind: str, where: str) -> Any:
        self.dropped.setdefault(kind, []).append(where)
        return _DROP

    def notes(self) -> list[str]:
        """One line per kind of dropped value, naming where the first ones sat."""
        return [
            f"dropped {len(places)} {kind} value{'s' if len(places) > 1 else ''} "
            f"({', '.join(places[:3])}{' ...' if len(places) > 3 else ''}): "
            "only plain data, tensors and argparse.Namespace are carried"
            for kind, places in self.dropped.items()
        ]


class _MetaTensor:
    """Placeholder for a metadata tensor in the skeleton copy; `wrap` swaps in the written one."""

    def __init__(self, name: str) -> None:
        self.name = name


def _place(value: Any, state: dict[str, Any]) -> Any:
    """`value` with each `_MetaTensor` replaced by the written tensor of that name."""
    if isinstance(value, _MetaTensor):
        return state.pop(value.name)
    if isinstance(value, argparse.Namespace):
        return argparse.Namespace(**{k: _place(v, state) for k, v in vars(value).items()})
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for k, v in value.items():
            out[k] = _place(v, state)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_place(v, state) for v in value)
    return value


@dataclass
class SlimLayout:
    """How a ``.pt`` output holds the state dict in its framework's layout."""

    wrap: Callable[[Any], Any]
    """Builds the saved object from the state dict (metadata tensors included by name)."""
    notes: list[str]
    """What was left out, one line per kind."""
    tensors: list[Planned]
    """Metadata tensors to write after the weights (their placeholders are in `wrap`)."""


def _bare_with_values(ws: WeightSet, skeleton: dict[Any, Any]) -> SlimLayout:
    """A bare dict of tensors that also holds plain values (a normaliser's integer ``count``):
    the values the loader reads stay beside the tensors, in the source's key order."""
    names = set(ws.names)
    carrier = Carrier(ws.sources[0] if len(ws.sources) == 1 else None)
    values = {
        k: v
        for k, raw in skeleton.items()
        if k not in names and not isinstance(raw, TensorRef)
        if (v := carrier.carry(raw, str(k))) is not _DROP
    }
    if not values:
        return SlimLayout(lambda state: state, carrier.notes(), [])
    order = list(skeleton)

    def wrap(state: Any) -> Any:
        meta = {k: v for k, v in state.items() if k.startswith(_META_PREFIX)}
        out = OrderedDict() if isinstance(skeleton, OrderedDict) else {}
        for key in order:
            if key in state:
                out[key] = state[key]
            elif key in values:
                out[key] = _place(values[key], meta)
        return out

    notes = [f"kept {', '.join(map(str, values))} beside the tensors", *carrier.notes()]
    return SlimLayout(wrap, notes, carrier.tensors)


def slim_layout(
    ws: WeightSet, *, flat: bool = False, keep: tuple[str, ...] | None = None
) -> SlimLayout:
    """The ``.pt`` layout of `ws`'s framework (its `LoaderContract`), or a bare state dict when
    `flat` or when the framework's loader reads one.

    `keep` (reclaim in place) names the top-level keys kept beside the state dict instead of the
    contract's, and never unwraps: the file keeps its shape."""
    layout = layout_named(ws.layout)
    contract = layout.contract
    notes: list[str] = []
    skeleton = ws.skeleton
    path = ws.container
    if not path and isinstance(skeleton, dict):
        return _bare_with_values(ws, skeleton)
    if keep is None and (flat or contract.flat):
        if path:
            notes.append(
                f"wrote the bare state dict (the source keeps it under {'/'.join(path)})"
                + ("" if flat else f": what {layout.title}'s loader reads")
            )
        return SlimLayout(lambda state: state, notes, [])
    if keep is None:
        keep = contract.keep
    if keep is None or not isinstance(skeleton, dict) or len(path) != 1:

        def nest(state: Any) -> Any:
            for key in reversed(path):
                state = {key: state}
            return state

        return SlimLayout(nest, notes, [])
    carrier = Carrier(ws.sources[0] if len(ws.sources) == 1 else None)
    entries: list[tuple[Any, Any]] = []
    left: list[str] = []
    for key, value in skeleton.items():
        if key == path[0]:
            entries.append((key, _STATE))
        elif key in keep:
            copied = carrier.carry(value, str(key))
            if copied is not _DROP:
                entries.append((key, copied))
        else:
            left.append(str(key))
    if left:
        notes.append(f"{layout.title} layout: left out {', '.join(left)}")
    notes.extend(carrier.notes())

    def wrap(state: Any) -> Any:
        weights = OrderedDict((k, v) for k, v in state.items() if not k.startswith(_META_PREFIX))
        meta = {k: v for k, v in state.items() if k.startswith(_META_PREFIX)}
        return {k: weights if v is _STATE else _place(v, meta) for k, v in entries}

    return SlimLayout(wrap, notes, carrier.tensors)
