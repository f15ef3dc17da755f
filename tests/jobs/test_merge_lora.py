"""merge_lora against PEFT's own merge_and_unload, on adapters PEFT trained-and-saved for real.

Each case builds a tiny transformers model from a config, saves it (save_pretrained), wraps it in
a PEFT LoRA with random A and B (``init_lora_weights=False``, as after training), saves the
adapter, and takes PEFT's reference: ``PeftModel.from_pretrained(base, adapter)
.merge_and_unload().state_dict()``. Our output is loaded by the consumer (``from_pretrained`` for
HF folders, safetensors / torch.load for files) and must have the same keys, dtypes and values.

The ``adapters`` library's LoRA is checked the same way against its own ``merge_adapter``
(adapters_fixture.py, run in the interop tier's adapters venv: adapters pins transformers 4.x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpttui.jobs.events import JobError
from ckpttui.jobs.lora import merge_lora

CASES: dict[str, dict[str, Any]] = {
    # plain LoRA, tied embeddings, embedding LoRA (saves embed_tokens.base_layer), patterns
    "llama_plain": {
        "arch": "llama",
        "tie": True,
        "dtype": "float32",
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"],
            "rank_pattern": {"layers.1.self_attn.q_proj": 2},
            "alpha_pattern": {"v_proj": 3},
        },
    },
    "llama_rslora_bf16": {
        "arch": "llama",
        "tie": False,
        "dtype": "bfloat16",
        "lora": {
            "r": 8,
            "lora_alpha": 16,
            "use_rslora": True,
            "target_modules": ["q_proj", "k_proj", "lm_head"],
        },
    },
    "llama_dora": {
        "arch": "llama",
        "tie": False,
        "dtype": "float32",
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "use_dora": True,
            "target_modules": ["q_proj", "up_proj"],
        },
    },
    # GPT-2 Conv1D (fan_in_fan_out), a trained classification head (modules_to_save), lora_bias
    "gpt2_fifo_modules_to_save": {
        "arch": "gpt2",
        "tie": True,
        "dtype": "float32",
        "lora": {
            "r": 4,
            "lora_alpha": 16,
            "fan_in_fan_out": True,
            "target_modules": ["c_attn", "c_fc"],
            "modules_to_save": ["score"],
            "lora_bias": True,
        },
    },
}


def _model(case: dict[str, Any]) -> Any:
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    if case["arch"] == "llama":
        cfg = LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=case["tie"],
        )
        return LlamaForCausalLM(cfg)
    cfg = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=96,
        n_positions=32,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2ForSequenceClassification(cfg)


@pytest.fixture(scope="session")
def lora_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For each case: base/ (HF folder), adapter/ (PEFT), reference.pt (PEFT's merge)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("lora")
    out = {}
    for name, case in CASES.items():
        torch.manual_seed(len(name))
        folder = root / name
        model = _model(case).to(getattr(torch, case["dtype"]))
        model.save_pretrained(folder / "base")
        peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **case["lora"]))
        if "modules_to_save" in case["lora"]:
            with torch.no_grad():
                for p in peft_model.base_model.model.score.modules_to_save.parameters():
                    p.add_(1.0)
        peft_model.save_pretrained(folder / "adapter")
        auto = (
            AutoModelForCausalLM if case["arch"] == "llama" else AutoModelForSequenceClassification
        )
        base = auto.from_pretrained(folder / "base", dtype=getattr(torch, case["dtype"]))
        merged = PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload()
        torch.save({k: v.clone() for k, v in merged.state_dict().items()}, folder / "ref.pt")
        out[name] = folder
    return out


def _compare(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(ref) or set(ours) == set(ref)
    for key, value in ref.items():
        got = ours[key]
        assert got.dtype == value.dtype, key
        assert got.shape == value.shape, key
        if value.dtype == torch.float32:
            scale = value.abs().max().clamp_min(1e-30)
            assert (got - value).abs().max() <= 1e-6 * scale, key
        else:
            assert torch.equal(got, value), key


@pytest.mark.parametrize("name", list(CASES))
def test_hf_folder_equals_peft_merge_and_unload(
    lora_cases: dict[str, Path], tmp_path: Path, name: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = lora_cases[name]
    out = tmp_path / "merged"
    events = list(merge_lora(folder / "adapter", out, base=folder / "base"))
    assert events[-1].kind == "done"
    assert (out / "config.json").is_file()
    auto = (
        AutoModelForCausalLM
        if CASES[name]["arch"] == "llama"
        else AutoModelForSequenceClassification
    )
    loaded = auto.from_pretrained(out, dtype=getattr(torch, CASES[name]["dtype"]))
    ref = torch.load(folder / "ref.pt", weights_only=True)
    _compare(dict(loaded.state_dict()), ref)
    if CASES[name]["tie"] and CASES[name]["arch"] == "llama":
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_file_output_equals_peft(lora_cases: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = lora_cases["gpt2_fifo_modules_to_save"]
    ref = torch.load(folder / "ref.pt", weights_only=True)
    ours = load_file(str(_merge(folder, tmp_path / "m.safetensors")))
    # the base file holds the weights saved once; PEFT's state_dict() adds the tied copies
    _compare(ours, {k: v for k, v in ref.items() if k in ours})
    assert set(ref) - set(ours) <= {"lm_head.weight"}


def _merge(folder: Path, out: Path, **kw: Any) -> Path:
    events = list(merge_lora(folder / "adapter", out, base=folder / "base", **kw))
    assert events[-1].kind == "done"
    return out


def test_torch_base_keeps_tied_weights_tied(lora_cases: dict[str, Path], tmp_path: Path) -> None:
    folder = lora_cases["llama_plain"]
    ref = torch.load(folder / "ref.pt", weights_only=True)
    base = tmp_path / "base.pt"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder / "base")
    torch.save(model.state_dict(), base)
    out = tmp_path / "merged.pt"
    events = list(merge_lora(folder / "adapter", out, base=base))
    assert events[-1].kind == "done"
    ours = torch.load(out, weights_only=True)
    _compare(ours, ref)
    assert ours["lm_head.weight"] is ours["model.embed_tokens.weight"]


def test_dtype_casts_after_merging(lora_cases: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = lora_cases["llama_plain"]
    ref = torch.load(folder / "ref.pt", weights_only=True)
    ours = load_file(str(_merge(folder, tmp_path / "m.safetensors", dtype="bf16")))
    for key, value in ours.items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, ref[key].to(torch.bfloat16)), key


def test_other_variants_are_refused_by_name(lora_cases: dict[str, Path], tmp_path: Path) -> None:
    folder = lora_cases["llama_plain"]
    adapter = tmp_path / "qalora"
    adapter.mkdir()
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    config["use_qalora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(
        (folder / "adapter" / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(JobError, match="QALoRA"):
        list(merge_lora(adapter, tmp_path / "o.safetensors", base=folder / "base"))
    assert not (tmp_path / "o.safetensors").exists()


def test_wrong_base_names_the_missing_tensor(lora_cases: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not have"):
        list(
            merge_lora(
                lora_cases["llama_plain"] / "adapter",
                tmp_path / "o.safetensors",
                base=lora_cases["gpt2_fifo_modules_to_save"] / "base",
            )
        )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="session")
def adapters_python() -> str:
    """A Python with adapters==1.3.0: ``CKPTTUI_ADAPTERS_PYTHON``, else the interop tier's venv.

    adapters 1.3.0 pins transformers 4.x and cannot share this venv (transformers 5). The light
    interop tier (tests/interop/test_roundtrip_light.py) has interop/run.py build
    ``.interop/venvs/adapters`` on first use (from PyPI); this reuses it, or builds it the same way.
    """
    given = os.environ.get("CKPTTUI_ADAPTERS_PYTHON", "")
    if given:
        return given
    if os.environ.get("CKPTTUI_INTEROP") == "0":
        pytest.skip(
            "CKPTTUI_INTEROP=0 turns off the interop venvs, and CKPTTUI_ADAPTERS_PYTHON is unset: "
            "no Python with adapters==1.3.0 (it pins transformers 4.x, this venv has 5)"
        )
    driver = Path(__file__).resolve().parents[2] / "interop"
    sys.path.insert(0, str(driver))
    try:
        import run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(driver))
    try:
        return str(run.ensure_venv(run.load_toolkit("adapters")))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        reason = str(exc).splitlines()[0]  # pip's failure names its log
        pytest.skip(f"the interop venv with adapters==1.3.0 could not be built: {reason}")


def test_adapters_library_lora_equals_its_merge_adapter(
    adapters_python: str, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import BertModel

    script = Path(__file__).with_name("adapters_fixture.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [adapters_python, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    # adapters' merge_adapter moved exactly the 10 LoRA'd weights: equal is not the base passing by
    base = load_file(tmp_path / "base" / "model.safetensors")
    assert len([k for k in ref if not torch.equal(ref[k], base[k])]) == 10
    out = tmp_path / "merged"
    events = list(merge_lora(tmp_path / "adapter", out, base=tmp_path / "base"))
    assert events[-1].kind == "done"
    assert any("adapters LoRA: 10 module(s)" in e.message for e in events if e.kind == "log")
    _compare(dict(BertModel.from_pretrained(out).state_dict()), ref)


def test_suggested_base_is_the_local_folder_the_adapter_names(tmp_path: Path) -> None:
    from ckpttui.layouts.lora import suggested_base

    (tmp_path / "base").mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "base")}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert suggested_base(adapter) == tmp_path / "base"
    config["base_model_name_or_path"] = "meta-llama/Llama-3-8B"  # a hub id: nothing local
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert suggested_base(adapter) is None


def test_cli_merges_an_adapter_and_asks_for_its_base(
    lora_cases: dict[str, Path], tmp_path: Path
) -> None:
    from helpers import run_cli
    from safetensors.torch import load_file

    folder = lora_cases["llama_rslora_bf16"]
    out = tmp_path / "m.safetensors"
    proc = run_cli("merge", str(folder / "adapter"), "--base", str(folder / "base"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "verified:" in proc.stderr
    ref = torch.load(folder / "ref.pt", weights_only=True)
    _compare(load_file(out), ref)
    proc = run_cli("merge", str(folder / "adapter"), "-o", str(tmp_path / "x.safetensors"))
    assert proc.returncode == 1
    assert "give the model to merge it into with --base" in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()
