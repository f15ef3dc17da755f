"""Write an ``adapters``-library LoRA and that library's own merge (run by a Python that has it).

``python adapters_fixture.py OUT``: a tiny BERT saved with ``save_pretrained`` (OUT/base), a LoRA
on the attention q/k/v, intermediate and output layers with random A and B
(``init_weights="bert"``) saved by ``save_adapter`` (OUT/adapter), and the model's state dict
after ``merge_adapter`` without the LoRA matrices (OUT/ref.pt). adapters 1.3.0 pins
transformers 4.x, so it runs in its own venv: the interop tier's .interop/venvs/adapters
(see test_merge_lora.py).
"""

from __future__ import annotations

import sys

import adapters
import torch
from adapters import LoRAConfig
from transformers import BertConfig, BertModel


def main(out: str) -> None:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
    )
    model = BertModel(cfg)
    model.save_pretrained(f"{out}/base")
    adapters.init(model)
    lora = LoRAConfig(
        r=4,
        alpha=8,
        selfattn_lora=True,
        intermediate_lora=True,
        output_lora=True,
        attn_matrices=["q", "k", "v"],
        init_weights="bert",
    )
    model.add_adapter("lora1", config=lora)
    model.save_adapter(f"{out}/adapter", "lora1")
    model.merge_adapter("lora1")
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if ".loras." not in k and not k.startswith("prompt_tuning.")
    }
    torch.save(state, f"{out}/ref.pt")


if __name__ == "__main__":
    main(sys.argv[1])
