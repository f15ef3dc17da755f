"""Child process of `ckpttui demo`: write every demo run into one folder (imports torch).

python -m ckpttui.demo.build OUT
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _step(name: str) -> float:
    print(f"  {name} ...", file=sys.stderr, flush=True)
    return time.perf_counter()


def build(out: Path) -> None:
    """Write the demo experiments tree under `out`."""
    from ckpttui.demo import ds_writer, hf_writer, toolkit_writers

    out.mkdir(parents=True, exist_ok=True)
    _step("FunASR paraformer run")
    toolkit_writers.write_funasr_run(out / "asr-paraformer-funasr" / "exp", epochs=5)
    _step("WeNet conformer run")
    toolkit_writers.write_wenet_run(out / "asr-conformer-wenet" / "exp", epochs=5)
    _step("SpeechBrain wav2vec2 CTC run")
    toolkit_writers.write_speechbrain_run(out / "asr-wav2vec2-speechbrain", n=3)
    _step("fairseq transformer run")
    toolkit_writers.write_fairseq_run(out / "mt-transformer-fairseq" / "checkpoints", epochs=4)
    _step("Lightning run")
    toolkit_writers.write_lightning_ckpt(out / "kws-lightning")
    _step("transformers Trainer run")
    hf_writer.write_hf_trainer_run(out / "lm-gpt2-hf-trainer", max_steps=6, save_steps=2)
    _step("PEFT LoRA adapter")
    try:
        hf_writer.write_peft_adapter(out / "lm-gpt2-lora-adapter")
    except hf_writer.DemoWriterError as exc:
        print(f"  (skipped: {str(exc).splitlines()[0]})", file=sys.stderr)
    _step("DeepSpeed ZeRO-2 and ZeRO-3 runs")
    configs = [
        ds_writer.DSConfig(
            "zero2", 2, "bf16", save_subdir="lm-deepspeed-zero2", frozen=True, tied=True
        ),
        ds_writer.DSConfig("zero3", 3, "fp32", save_subdir="lm-deepspeed-zero3"),
        ds_writer.DSConfig(
            "wenet",
            2,
            "fp32",
            tag="epoch_3.pt",
            save_subdir="asr-wenet-deepspeed/exp",
            client_state={"epoch": 3, "cv_loss": 4.2, "step": 300, "tag": "epoch_3"},
        ),
    ]
    ds_writer.write_deepspeed_checkpoints(out, configs, world_size=1)
    _step("broken files")
    broken = out / "broken-and-in-progress"
    broken.mkdir()
    good = (out / "asr-paraformer-funasr" / "exp" / "model.pt.ep1").read_bytes()
    (broken / "model.pt.ep9").write_bytes(good[: len(good) // 3])
    (broken / "model.pt.ep10.tmp").write_bytes(good[: len(good) // 5])
    (broken / "model.ckpt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 2441245312\n"
    )
    (broken / "empty.pt").write_bytes(b"")


def main() -> int:
    """Entry point of the child."""
    build(Path(sys.argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
