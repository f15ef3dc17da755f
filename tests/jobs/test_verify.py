"""verify on real writers' checkpoints: healthy ones pass, and each kind of damage is named."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import malicious_pickle, run_cli, torch_zip_bytes
from weights_ref import load

from ckpttui.jobs.events import Event, JobError
from ckpttui.jobs.runner import ChildJob, JobSpec
from ckpttui.jobs.source import TensorSource
from ckpttui.jobs.tensorstats import Summary
from ckpttui.jobs.verify import verify

EP = "funasr/model.pt.ep{}"


def report(path: Path) -> dict[str, Any]:
    """Drain a verify job; check it starts and ends as every job must; its report."""
    events = list(verify(path))
    assert events[0].kind == "start" and events[-1].kind == "done"
    assert all(e.kind in ("log", "progress") for e in events[1:-1])
    return events[-1].data


def problems(path: Path) -> list[tuple[str, str | None, str]]:
    """(file, tensor, kind) of every problem of the one checkpoint at `path`."""
    (ckpt,) = report(path)["checkpoints"]
    assert ckpt["healthy"] is (not ckpt["problems"])
    return [(p["file"], p["tensor"], p["kind"]) for p in ckpt["problems"]]


@pytest.fixture(params=["C", "C without F16C", "numpy"])
def stats_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test runs with each way statistics are computed: the C module's (float16 widened by
    the F16C instructions where the CPU has them, and as without them) and numpy's, its fallback
    where the module was not built."""
    from ckpttui.jobs import tensorstats

    moments = tensorstats._moments
    if request.param == "numpy":
        monkeypatch.setattr(tensorstats, "_moments", None)
    elif moments is None:
        pytest.skip("ckpttui.jobs._moments was not built (no C compiler at install)")
    elif request.param == "C without F16C":
        moments.use_f16c(False)
    yield str(request.param)
    if moments is not None:
        moments.use_f16c(True)


def assert_matches_torch(s: Summary, t: torch.Tensor) -> None:
    """Statistics of `t` as torch computes them in float64: counts and min/max exactly."""
    ref = t.double()
    finite = ref[torch.isfinite(ref)]
    assert s.count == t.numel() and s.nan == int(ref.isnan().sum())
    assert s.inf == int(ref.isinf().sum())
    assert s.min == float(finite.min()) and s.max == float(finite.max())
    std = float(finite.std(unbiased=False))
    assert s.mean == pytest.approx(float(finite.mean()), rel=1e-7, abs=1e-6 * std)
    assert s.std == pytest.approx(std, rel=1e-4, abs=0)
    assert s.norm == pytest.approx(float(finite.norm()), rel=1e-6, abs=0)


def record_offset(path: Path, name: str) -> int:
    """Byte offset in `path` of the storage holding tensor `name` (a key path joined by '/')."""
    with TensorSource(path) as src:
        rec = next(r for r in src.records if r.name == name)
        where = src.byte_range(rec)
        assert where is not None
        return where[0]


@pytest.mark.parametrize(
    "folder", ["funasr", "fairseq", "speechbrain", "wenet_v2", "lightning", "whisper_adapters"]
)
def test_real_toolkit_checkpoints_are_healthy(tk_root: Path, folder: str) -> None:
    data = report(tk_root / folder)
    assert data["checkpoints"] and data["healthy"], [
        p for c in data["checkpoints"] for p in c["problems"]
    ]
    zips = [f for c in data["checkpoints"] for f in c["files"] if f["format"] == "torch-zip"]
    assert zips and all(f["records_crc_checked"] > 0 for f in zips)


def test_hf_trainer_and_safetensors_are_healthy(hf_root: Path) -> None:
    data = report(hf_root)
    formats = {f["format"] for c in data["checkpoints"] for f in c["files"]}
    assert "safetensors" in formats
    assert data["healthy"], [p for c in data["checkpoints"] for p in c["problems"]]


def test_deepspeed_rank_files_are_healthy(ds_root: Path) -> None:
    data = report(ds_root)
    layouts = {c["layout"] for c in data["checkpoints"]}
    assert "deepspeed" in layouts
    dtypes = {t["dtype"] for c in data["checkpoints"] for f in c["files"] for t in f["tensors"]}
    assert "bfloat16" in dtypes
    assert data["healthy"], [p for c in data["checkpoints"] for p in c["problems"]]


def test_nan_in_a_frozen_fragments_padding_is_a_note(ds_root: Path, tmp_path: Path) -> None:
    # ZeRO-3 pads the last rank's fragment of a frozen 11x7 matrix to 39 values with memory it
    # never writes: a NaN there is DeepSpeed's, not damage (seen once in CI).
    folder = tmp_path / "z3"
    shutil.copytree(ds_root / "ws2/z3_fp32_frozen_tied", folder)
    (rank1,) = folder.glob("*/zero_pp_rank_1_mp_rank_00_model_states.pt")
    state = load(rank1)
    state["frozen_param_fragments"]["enc.weight"][38] = math.nan
    torch.save(state, rank1)
    (ckpt,) = report(folder)["checkpoints"]
    assert ckpt["healthy"], ckpt["problems"]
    (note,) = [w for w in ckpt["warnings"] if "frozen_param_fragments/enc.weight" in w]
    assert "1 NaN of 39" in note and "padding" in note


@pytest.mark.usefixtures("stats_impl")
def test_statistics_agree_with_torch(tk_root: Path) -> None:
    path = tk_root / EP.format(2)
    (ckpt,) = report(path)["checkpoints"]
    state = load(path)
    stats = {t["name"]: t for f in ckpt["files"] for t in f["tensors"]}
    weights = state["state_dict"]
    assert len([t for t in stats.values() if t["category"] == "weights"]) == len(weights)
    moments = [k for k in stats if k.startswith("optimizer/state/") and k.endswith("exp_avg_sq")]
    assert moments and all(stats[k]["category"] == "optimizer" for k in moments)
    for key, value in weights.items():
        ours = stats[f"state_dict/{key}"]["stats"]
        ref = value.double().reshape(-1)
        assert ours["count"] == ref.numel() and ours["nan"] == 0 and ours["inf"] == 0
        assert ours["min"] == float(ref.min()) and ours["max"] == float(ref.max()), key
        mean = float(ref.mean())
        std = float(ref.std(unbiased=False)) if ref.numel() > 1 else 0.0
        norm = float(ref.norm())
        assert math.isclose(ours["mean"], mean, rel_tol=1e-5, abs_tol=1e-6 * (std + 1e-30)), key
        assert math.isclose(ours["std"], std, rel_tol=1e-4, abs_tol=1e-7), key
        assert math.isclose(ours["norm"], norm, rel_tol=1e-5), key


@pytest.mark.usefixtures("stats_impl")
def test_nan_and_inf_named_in_weights_and_optimizer_moments(tk_root: Path, tmp_path: Path) -> None:
    state = load(tk_root / EP.format(1))
    weight = "encoder.encoders0.0.feed_forward.w_1.weight"
    state["state_dict"][weight][0, :3] = float("nan")
    state["state_dict"][weight][1, 0] = float("inf")
    moment = state["optimizer"]["state"][0]["exp_avg_sq"]
    moment.view(-1)[:2] = float("-inf")
    bad = tmp_path / "model.pt.ep1"
    torch.save(state, bad)
    (ckpt,) = report(bad)["checkpoints"]
    found = {(p["tensor"], p["kind"]): p["message"] for p in ckpt["problems"]}
    assert found[(f"state_dict/{weight}", "nan")].startswith("3 NaN and 1 Inf of ")
    assert found[("optimizer/state/0/exp_avg_sq", "inf")].startswith("2 Inf of ")
    assert all(p["file"] == "model.pt.ep1" for p in ckpt["problems"])
    stats = {t["name"]: t["stats"] for t in ckpt["files"][0]["tensors"]}
    finite = state["state_dict"][weight].double()
    finite = finite[torch.isfinite(finite)]
    assert stats[f"state_dict/{weight}"]["max"] == float(finite.max())


def test_flipped_byte_is_a_crc_mismatch_naming_file_and_tensor(
    tk_root: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "checkpoint2.pt"
    shutil.copy(tk_root / "fairseq" / "checkpoint2.pt", bad)
    state = load(bad)
    name = next(k for k, v in state["model"].items() if v.numel() > 64)
    at = record_offset(bad, f"model/{name}") + 17
    with open(bad, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    assert ("checkpoint2.pt", f"model/{name}", "crc") in problems(bad)
    (ckpt,) = report(bad)["checkpoints"]
    (crc,) = [p for p in ckpt["problems"] if p["kind"] == "crc"]
    assert "does not match" in crc["message"] and "/data/" in crc["message"]


def test_truncated_record_names_the_tensor(tk_root: Path, tmp_path: Path) -> None:
    src = tk_root / EP.format(3)
    state = load(src)
    name = "encoder.encoders0.0.feed_forward.w_2.weight"
    cut_at = record_offset(src, f"state_dict/{name}") + 100
    bad = tmp_path / "model.pt.ep3"
    bad.write_bytes(src.read_bytes()[:cut_at])
    assert problems(bad) == [("model.pt.ep3", f"state_dict/{name}", "truncated")]
    assert state["state_dict"][name].numel() * 4 > 100
    # Cut after the last record: the central directory is what is missing.
    whole = src.read_bytes()
    with zipfile.ZipFile(src) as z:
        end = max(i.header_offset for i in z.infolist())
    tail = tmp_path / "tail" / "model.pt.ep3"
    tail.parent.mkdir()
    tail.write_bytes(whole[: end + 200])
    (ckpt,) = report(tail)["checkpoints"]
    assert [p["kind"] for p in ckpt["problems"]] == ["truncated"]
    # Cut inside data.pkl, the first record: no tensor to name, the record still named.
    head = tmp_path / "head" / "model.pt.ep3"
    head.parent.mkdir()
    head.write_bytes(whole[:200])
    (ckpt,) = report(head)["checkpoints"]
    (p,) = ckpt["problems"]
    assert p["kind"] == "truncated" and p["tensor"] is None and "data.pkl" in p["message"]


def test_truncated_safetensors_names_the_tensor(hf_root: Path, tmp_path: Path) -> None:
    src = next(p for p in sorted(hf_root.rglob("model.safetensors")))
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(src.read_bytes()[:-10])
    found = problems(bad)
    assert len(found) == 1 and found[0][0] == "model.safetensors"
    assert found[0][1] is not None and found[0][2] == "truncated"


def test_all_zero_weight_matrix_is_a_problem(tk_root: Path, tmp_path: Path) -> None:
    state = load(tk_root / "wenet_v2" / "2.pt")
    name = next(k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2)
    state[name].zero_()
    bias = name.removesuffix(".weight") + ".bias"
    state[bias].zero_()
    bad = tmp_path / "2.pt"
    torch.save(state, bad)
    assert problems(bad) == [("2.pt", name, "zero")]
    (ckpt,) = report(bad)["checkpoints"]
    assert any(bias in w for w in ckpt["warnings"])


def test_cli_exit_codes_and_json(tk_root: Path, tmp_path: Path) -> None:
    ok = run_cli("verify", str(tk_root / "funasr"))
    assert ok.returncode == 0, ok.stderr
    assert "model.pt.ep3 (funasr): healthy" in ok.stdout
    state = load(tk_root / EP.format(1))
    state["state_dict"]["encoder.encoders0.0.norm1.weight"][0] = float("nan")
    torch.save(state, tmp_path / "model.pt.ep1")
    bad = run_cli("verify", str(tmp_path), "--json")
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["healthy"] is False
    (p,) = doc["checkpoints"][0]["problems"]
    assert p["tensor"] == "state_dict/encoder.encoders0.0.norm1.weight" and p["kind"] == "nan"
    assert "nan" in run_cli("verify", str(tmp_path)).stdout
    assert run_cli("verify").returncode == 2
    missing = run_cli("verify", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_pickle_that_would_run_code_is_unhealthy_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    bad.write_bytes(torch_zip_bytes(malicious_pickle(marker)))
    (p,) = problems(bad)
    assert p == ("model.pt", None, "unreadable")
    (ckpt,) = report(bad)["checkpoints"]
    assert "would run code" in ckpt["problems"][0]["message"]
    assert not marker.exists()


def test_missing_path_is_a_job_error(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="no such file"):
        list(verify(tmp_path / "nope.pt"))


def test_runs_in_the_job_child_process(tk_root: Path) -> None:
    job = ChildJob(JobSpec("verify", {"path": str(tk_root / EP.format(1))}))
    events: list[Event] = list(job.events())
    assert events[-1].kind == "done" and events[-1].data["healthy"] is True
    assert job.spec.title == "verify model.pt.ep1"


@pytest.mark.usefixtures("stats_impl")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_streamed_statistics_match_torch_in_any_chunking(dtype: torch.dtype) -> None:
    from ckpttui.jobs.tensorstats import Stats

    gen = torch.Generator().manual_seed(1)
    values = 1.0 + torch.randn(10_001, generator=gen, dtype=torch.float64) * 1e-2
    if dtype == torch.int64:
        values = values * 1000
    t = values.to(dtype)
    if dtype.is_floating_point:
        t[7], t[900] = float("nan"), float("-inf")
    raw = t.view(torch.uint8).numpy().tobytes()
    stats = Stats(str(dtype).removeprefix("torch."))
    size = t.element_size()
    for cut in range(0, len(raw), 333 * size):  # odd pieces, whole elements
        stats.feed(raw[cut : cut + 333 * size])
    assert_matches_torch(stats.summary(), t)


@pytest.mark.usefixtures("stats_impl")
def test_records_split_across_threads_give_the_same_report(
    tk_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records cut into many pieces read by several threads: same statistics, CRCs combined."""
    from ckpttui.jobs import verify as V

    src = tk_root / EP.format(2)
    whole = report(src)
    monkeypatch.setattr(V, "CHUNK", 256)
    monkeypatch.setattr(V, "PIECE", 1024)
    monkeypatch.setattr(V, "THREADS", 3)
    split = report(src)

    def stats(r: dict[str, Any]) -> dict[str, Any]:
        return {
            t["name"]: t["stats"]
            for c in r["checkpoints"]
            for f in c["files"]
            for t in f["tensors"]
        }

    ours, ref = stats(split), stats(whole)
    assert split["checkpoints"][0]["healthy"] and ours.keys() == ref.keys()
    assert split["bytes_read"] == whole["bytes_read"]
    for key, s in ours.items():
        r = ref[key]
        if s is None or r["mean"] is None:
            assert s == r, key
            continue
        assert (s["count"], s["nan"], s["inf"], s["min"], s["max"]) == (
            r["count"],
            r["nan"],
            r["inf"],
            r["min"],
            r["max"],
        ), key
        for k in ("mean", "std", "norm"):
            assert math.isclose(s[k], r[k], rel_tol=1e-5, abs_tol=1e-7), (key, k)

    bad = tmp_path / "model.pt.ep2"
    shutil.copy(src, bad)
    key, value = max(load(src)["state_dict"].items(), key=lambda kv: kv[1].numel())
    assert value.numel() * 4 > 4 * 1024  # its record is cut into several pieces
    name = f"state_dict/{key}"
    at = record_offset(bad, name) + 3000  # in the third 1 KiB piece of its record
    with open(bad, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x80]))
    assert ("model.pt.ep2", name, "crc") in problems(bad)


@pytest.mark.usefixtures("stats_impl")
def test_safetensors_read_in_wide_pieces_by_threads_agree_with_torch(
    hf_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes with no CRC (read a `WIDE` piece at a time by the C module) cut small, 3 threads."""
    from safetensors.torch import load_file

    from ckpttui.jobs import verify as V

    src = next(p for p in sorted(hf_root.rglob("model.safetensors")))
    monkeypatch.setattr(V, "CHUNK", 256)
    monkeypatch.setattr(V, "WIDE", 512)
    monkeypatch.setattr(V, "PIECE", 1024)
    monkeypatch.setattr(V, "THREADS", 3)
    (ckpt,) = report(src)["checkpoints"]
    stats = {t["name"]: t["stats"] for f in ckpt["files"] for t in f["tensors"]}
    tensors = load_file(src)
    assert ckpt["healthy"] and stats.keys() == tensors.keys()
    assert max(v.numel() * v.element_size() for v in tensors.values()) > 4 * 1024  # many pieces
    for name, value in tensors.items():
        s, ref = stats[name], value.double().reshape(-1)
        assert (s["count"], s["min"], s["max"]) == (ref.numel(), float(ref.min()), float(ref.max()))
        std = float(ref.std(unbiased=False)) if ref.numel() > 1 else 0.0
        assert math.isclose(s["mean"], float(ref.mean()), rel_tol=1e-5, abs_tol=1e-6 * std), name
        assert math.isclose(s["std"], std, rel_tol=1e-4, abs_tol=1e-7), name
        assert math.isclose(s["norm"], float(ref.norm()), rel_tol=1e-5), name


@pytest.mark.usefixtures("stats_impl")
@pytest.mark.parametrize("order", ["reversed", "two threads"])
def test_statistics_do_not_depend_on_the_order_of_pieces(order: str) -> None:
    """Pieces merged in any order (each summed around its own reference) give the same numbers."""
    import threading

    from ckpttui.jobs.tensorstats import Stats

    gen = torch.Generator().manual_seed(2)
    # Wide values first (not centred), then a narrow run far from zero (centred on its own).
    values = torch.cat(
        [torch.randn(5000, generator=gen), 3.0 + torch.randn(5000, generator=gen) * 1e-3]
    ).to(torch.float32)
    raw = values.numpy().tobytes()
    pieces = [raw[i : i + 4000] for i in range(0, len(raw), 4000)]
    stats = Stats("float32")
    if order == "reversed":
        for piece in reversed(pieces):
            stats.feed(piece)
    else:
        threads = [
            threading.Thread(target=lambda ps=ps: [stats.feed(p) for p in ps])
            for ps in (pieces[::2], pieces[1::2])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    s = stats.summary()
    ref = values.double()
    assert s.count == ref.numel() and s.min == float(ref.min()) and s.max == float(ref.max())
    assert s.mean == pytest.approx(float(ref.mean()), rel=1e-7)
    assert s.std == pytest.approx(float(ref.std(unbiased=False)), rel=1e-5)
    assert s.norm == pytest.approx(float(ref.norm()), rel=1e-6)


@pytest.mark.usefixtures("stats_impl")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "values",
    [
        [-0.5, 2.0, -3.0, 0.25],
        [-0.5, -2.0, -0.125],  # all negative
        [0.5, 2.0, 1e-7, 3e-6],  # all positive, subnormal in float16
        [-0.0, 0.0],
        [-0.0, -1.0, -2.0],
        [1.0, float("inf"), -3.0, float("nan")],
        [65504.0, -65504.0],
    ],
)
def test_16_bit_min_and_max_from_bit_patterns(dtype: torch.dtype, values: list[float]) -> None:
    from ckpttui.jobs.tensorstats import Stats

    t = torch.tensor(values).to(dtype)
    stats = Stats(str(dtype).removeprefix("torch."))
    stats.feed(t.view(torch.uint8).numpy().tobytes())
    s = stats.summary()
    ref = t.double()
    finite = ref[torch.isfinite(ref)]
    assert (s.nan, s.inf) == (int(ref.isnan().sum()), int(ref.isinf().sum()))
    assert s.min == float(finite.min()) and s.max == float(finite.max())
    assert s.zero is bool((ref == 0).all())
    # float16 pieces without NaN/Inf are widened from their bit patterns: subnormals too
    assert s.mean == pytest.approx(float(finite.mean()), rel=1e-7, abs=1e-12)
    assert s.norm == pytest.approx(float(finite.norm()), rel=1e-7)


def test_cancel_stops_every_reading_thread(tk_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from ckpttui.jobs import verify as V
    from ckpttui.jobs.events import JobCancelled

    monkeypatch.setattr(V, "CHUNK", 256)
    monkeypatch.setattr(V, "PIECE", 1024)
    monkeypatch.setattr(V, "THREADS", 3)
    cancel = threading.Event()
    events = V.verify(tk_root / EP.format(2), cancel=cancel)
    with pytest.raises(JobCancelled):
        for event in events:
            if event.kind == "progress" or event.kind == "start":
                cancel.set()
    assert not [t for t in threading.enumerate() if t.name == "verify"]


@pytest.mark.usefixtures("stats_impl")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["nan and inf", "huge", "tiny", "far from zero", "unaligned"])
def test_statistics_of_hard_values_match_torch(dtype: torch.dtype, case: str) -> None:
    """Whatever the values: NaN/Inf counts exact, min/max exact, the rest as float64 says.

    3 x 1024 + 7 elements: whole blocks of the C module and a tail shorter than its lanes.
    """
    from ckpttui.jobs.tensorstats import Stats

    gen = torch.Generator().manual_seed(3)
    values = torch.randn(3 * 1024 + 7, generator=gen, dtype=torch.float64)
    if case == "huge":  # squares beyond float32 (and float16's largest values)
        values = values * (6e4 if dtype == torch.float16 else 1e30)
        values = values.clamp(-65504, 65504) if dtype == torch.float16 else values
    elif case == "tiny":  # subnormal in float16 and float32
        values = values * (1e-6 if dtype == torch.float16 else 1e-40)
    elif case == "far from zero":  # centred sums (a LayerNorm weight)
        values = 1000.0 + values * 1e-2
    t = values.to(dtype)
    if case == "nan and inf":  # in the first block, the third, and the tail
        t[5], t[2100], t[2101], t[-1] = float("nan"), float("inf"), float("nan"), float("-inf")
    raw = t.view(torch.uint8).numpy().tobytes()
    stats = Stats(str(dtype).removeprefix("torch."))
    if case == "unaligned":  # a safetensors tensor may start at any byte
        stats.feed(memoryview(b"\0" + raw)[1:])
    else:
        for cut in range(0, len(raw), 1000 * t.element_size()):
            stats.feed(raw[cut : cut + 1000 * t.element_size()])
    assert_matches_torch(stats.summary(), t)
