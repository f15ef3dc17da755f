"""adapters: ``AdapterTrainer`` on a tiny BERT with a bottleneck and a LoRA adapter, loaded back by
``AutoAdapterModel.load_adapter``."""

from __future__ import annotations

import shutil
from pathlib import Path

NAME = "adapters"
LIGHT = True
BASE = "project"  # torch from the project's venv; adapters brings its own transformers 4.57
PINS = ["adapters==1.3.0"]
VERSIONS = ["adapters", "transformers", "torch"]
KNOWN: dict[str, str] = {}
ADAPTERS = {"bn": "seq_bn", "lora": "lora"}


def _config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )


def train(work: Path) -> str:
    """Six steps per adapter, AdapterTrainer checkpoints every two; then ``save_adapter``."""
    import torch
    from adapters import AdapterTrainer, AutoAdapterModel
    from transformers import TrainingArguments, set_seed

    set_seed(0)
    base = AutoAdapterModel.from_config(_config())
    base.save_pretrained(work / "base")
    ids = torch.randint(0, 64, (32, 16))
    data = [{"input_ids": row, "labels": int(row[0] % 2)} for row in ids]
    for name, kind in ADAPTERS.items():
        model = AutoAdapterModel.from_pretrained(work / "base")
        model.add_adapter(name, config=kind)
        model.add_classification_head(name, num_labels=2)
        model.train_adapter(name)
        args = TrainingArguments(
            output_dir=str(work / f"run_{name}"),
            max_steps=6,
            save_steps=2,
            logging_steps=1,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            report_to=[],
            use_cpu=True,
            seed=0,
        )
        AdapterTrainer(model=model, args=args, train_dataset=data).train()
        model.save_adapter(str(work / f"saved_{name}"), name)
    return ", ".join(
        sorted(str(p.relative_to(work)) for p in work.glob("*/checkpoint-*/*/adapter_config.json"))
    )


def _ckpts(work: Path, name: str) -> list[Path]:
    folders = sorted(
        (work / f"run_{name}").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    return [f / name for f in folders]


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    out = work / "out"
    found = []
    for name in ADAPTERS:
        src = work / f"saved_{name}"
        ckpts = _ckpts(work, name)
        found += [
            {
                "name": f"{name}: export adapter -> load_adapter",
                "loader": f"export_{name}",
                "ckpttui": [
                    [
                        "export",
                        src / "pytorch_adapter.bin",
                        "-o",
                        out / f"export_{name}" / "pytorch_adapter.bin",
                    ]
                ],
            },
            {
                "name": f"{name}: export safetensors -> load_adapter(use_safetensors)",
                "loader": f"st_{name}",
                "ckpttui": [["export", src, "-o", out / f"st_{name}" / "adapter.safetensors"]],
            },
            {
                "name": f"{name}: average 2 checkpoints -> load_adapter",
                "loader": f"avg_{name}",
                "ckpttui": [
                    ["average", *ckpts[-2:], "-o", out / f"avg_{name}" / "pytorch_adapter.bin"]
                ],
            },
        ]
    return found


def _expected(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _load(folder: Path, config_from: Path, name: str, safetensors: bool = False) -> dict:
    from adapters import AutoAdapterModel

    shutil.copy(config_from / "adapter_config.json", folder / "adapter_config.json")
    model = AutoAdapterModel.from_pretrained(folder.parent.parent / "base")
    loaded = model.load_adapter(str(folder), with_head=False, use_safetensors=safetensors)
    if loaded != name:
        raise AssertionError(f"load_adapter named it {loaded!r}, want {name!r}")
    return model.state_dict()


def _check(work: Path, name: str, folder: str, expect: dict, safetensors: bool = False) -> str:
    from _side import same

    state = _load(work / "out" / folder, work / f"saved_{name}", name, safetensors)
    got = {k: state[k] for k in expect if k in state}
    same(got, expect, folder, atol=1e-6)
    return f"load_adapter took {len(expect)} adapter tensors, values match"


def _export(name: str, safetensors: bool):
    def check(work: Path) -> str:
        folder = f"st_{name}" if safetensors else f"export_{name}"
        return _check(
            work,
            name,
            folder,
            _expected(work / f"saved_{name}" / "pytorch_adapter.bin"),
            safetensors,
        )

    return check


def _average(name: str):
    def check(work: Path) -> str:
        from _side import mean_of

        ckpts = _ckpts(work, name)[-2:]
        expect = mean_of([_expected(c / "pytorch_adapter.bin") for c in ckpts])
        return (
            _check(work, name, f"avg_{name}", expect)
            + f" (mean of {', '.join(c.parent.name for c in ckpts)})"
        )

    return check


for _name in ADAPTERS:
    globals()[f"load_export_{_name}"] = _export(_name, False)
    globals()[f"load_st_{_name}"] = _export(_name, True)
    globals()[f"load_avg_{_name}"] = _average(_name)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
