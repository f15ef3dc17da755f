"""ESPnet: ``espnet2.bin.asr_train`` on a tiny generated corpus (``exp/asr_tiny/``), loaded back by
``espnet2.bin.asr_inference.Speech2Text`` and compared by decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NAME = "espnet"
LIGHT = False
BASE = "fresh"
PREINSTALL = ["torch==2.11.0", "torchaudio==2.11.0"]  # espnet2.tasks.asr imports torchaudio
# sentencepiece pinned to the version espnet asks for (a wheel): unpinned, pip backtracks into
# an sdist that needs the network to build.
PINS = ["espnet==202511", "sentencepiece==0.2.0", "matplotlib"]
VERSIONS = ["espnet", "torch"]
# Check name -> the recorded ckpttui fault it shows (issue 7); a PASS here means it was fixed.
KNOWN: dict[str, str] = {}
CHARS = "abcde"


def train(work: Path) -> str:
    """Write 24 short noise utterances with char transcripts, train 3 epochs with asr_train."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("valid", 4)):
        d = work / "dump" / split
        (d / "wav").mkdir(parents=True)
        scp, text, shape = [], [], []
        for i in range(n):
            utt = f"{split}{i:03d}"
            label = "".join(rng.choice(list(CHARS), size=rng.integers(2, 5)))
            t = np.arange(int(16000 * 0.25)) / 16000
            wave = 0.1 * np.sin(2 * np.pi * (200 + 100 * CHARS.index(label[0])) * t)
            wave = (wave + 0.01 * rng.standard_normal(t.size)).astype("float32")
            sf.write(d / "wav" / f"{utt}.wav", wave, 16000)
            scp.append(f"{utt} {d / 'wav' / f'{utt}.wav'}")
            text.append(f"{utt} {label}")
            shape.append(f"{utt} {t.size}")
        (d / "wav.scp").write_text("\n".join(scp) + "\n")
        (d / "text").write_text("\n".join(text) + "\n")
        (d / "speech_shape").write_text("\n".join(shape) + "\n")
    tokens = ["<blank>", "<unk>", *CHARS, "<sos/eos>"]
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    args = [
        "--output_dir",
        work / "exp" / "asr_tiny",
        "--use_tensorboard",
        "false",
        "--ngpu",
        "0",
        "--num_workers",
        "0",
        "--seed",
        "0",
        "--token_type",
        "char",
        "--token_list",
        work / "tokens.txt",
        "--use_preprocessor",
        "true",
        "--train_data_path_and_name_and_type",
        f"{work}/dump/train/wav.scp,speech,sound",
        "--train_data_path_and_name_and_type",
        f"{work}/dump/train/text,text,text",
        "--valid_data_path_and_name_and_type",
        f"{work}/dump/valid/wav.scp,speech,sound",
        "--valid_data_path_and_name_and_type",
        f"{work}/dump/valid/text,text,text",
        "--train_shape_file",
        work / "dump" / "train" / "speech_shape",
        "--valid_shape_file",
        work / "dump" / "valid" / "speech_shape",
        "--batch_type",
        "unsorted",
        "--batch_size",
        "4",
        "--max_epoch",
        "3",
        "--frontend_conf",
        "n_fft=128",
        "--frontend_conf",
        "hop_length=64",
        "--frontend_conf",
        "n_mels=16",
        "--normalize",
        "utterance_mvn",
        "--encoder",
        "transformer",
        "--encoder_conf",
        "output_size=16",
        "--encoder_conf",
        "attention_heads=2",
        "--encoder_conf",
        "linear_units=32",
        "--encoder_conf",
        "num_blocks=1",
        "--decoder",
        "transformer",
        "--decoder_conf",
        "attention_heads=2",
        "--decoder_conf",
        "linear_units=32",
        "--decoder_conf",
        "num_blocks=1",
        "--model_conf",
        "ctc_weight=0.3",
        "--optim",
        "adam",
        "--optim_conf",
        "lr=0.005",
        "--best_model_criterion",
        "valid,acc,max",
        "--keep_nbest_models",
        "2",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "espnet2.bin.asr_train", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        raise RuntimeError(f"asr_train exited {proc.returncode}: {lines[-1] if lines else ''}")
    return ", ".join(sorted(p.name for p in (work / "exp" / "asr_tiny").glob("*.pth")))


def _exp(work: Path) -> Path:
    return work / "exp" / "asr_tiny"


def checks(work: Path) -> list[dict]:
    """The ckpttui commands and the loader that must accept each output."""
    exp, out = _exp(work), work / "out"
    return [
        {
            "name": "average exp --last 2 (the two newest Nepoch.pth) -> Speech2Text decodes as ESPnet's average",
            "loader": "avg_last",
            "ckpttui": [["average", exp, "--last", "2", "-o", out / "avg_last2.pth"]],
        },
        {
            "name": "average exp --best 2 = ESPnet's valid.acc.ave_2best.pth -> Speech2Text",
            "loader": "avg_best",
            "ckpttui": [["average", exp, "--best", "2", "-o", out / "avg_best2.pth"]],
        },
        {
            "name": "export checkpoint.pth -> Speech2Text (flat state dict, decodes as the newest epoch)",
            "loader": "export_checkpoint",
            "ckpttui": [["export", exp / "checkpoint.pth", "-o", out / "slim.pth"]],
        },
    ]


def _torch_load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _epochs(work: Path) -> list[Path]:
    files = [p for p in _exp(work).glob("*epoch.pth") if p.name[0].isdigit() and not p.is_symlink()]
    return sorted(files, key=lambda p: int(p.name.split("epoch")[0]))


def _espnet_average(paths: list[Path]) -> dict:
    """espnet2/main_funcs/average_nbest_models.py: floats divided by n, integers accumulated."""
    avg: dict = {}
    for p in paths:
        for k, v in _torch_load(p).items():
            avg[k] = v.clone() if k not in avg else avg[k] + v
    return {
        k: (v if str(v.dtype).startswith("torch.int") else v / len(paths)) for k, v in avg.items()
    }


def _decode(work: Path, model_file: Path) -> list:
    import soundfile as sf
    from espnet2.bin.asr_inference import Speech2Text

    s2t = Speech2Text(
        asr_train_config=str(_exp(work) / "config.yaml"),
        asr_model_file=str(model_file),
        device="cpu",
        beam_size=2,
        ctc_weight=0.3,
        nbest=1,
    )
    out = []
    for wav in sorted((work / "dump" / "valid" / "wav").glob("*.wav")):
        speech, _ = sf.read(wav, dtype="float32")
        text, tokens, token_ids, hyp = s2t(speech)[0]
        out.append((text, tuple(int(t) for t in token_ids), round(float(hyp.score), 4)))
    return out


def _state_equal(work: Path, model_file: Path, want: dict, what: str) -> None:
    import torch
    from _side import same
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(_exp(work) / "config.yaml", model_file, "cpu")
    ref = {k: v for k, v in want.items() if k in model.state_dict()}
    got = model.state_dict()
    same({k: got[k] for k in ref}, ref, what, atol=1e-6)
    if len(ref) != len(got):
        raise AssertionError(f"{what}: {len(got) - len(ref)} model tensors not in the file")
    del torch


def load_avg_last(work: Path) -> str:
    import torch

    newest = _epochs(work)[-2:]
    ref = work / "out" / "espnet_avg_last2.pth"
    torch.save(_espnet_average(newest), ref)
    _state_equal(work, work / "out" / "avg_last2.pth", _torch_load(ref), "avg_last2")
    got, want = _decode(work, work / "out" / "avg_last2.pth"), _decode(work, ref)
    if got != want:
        raise AssertionError(
            f"decoding differs from ESPnet's average of {[p.name for p in newest]}: {got[:2]} vs {want[:2]}"
        )
    return f"Speech2Text decodes {len(got)} utterances identically to ESPnet's average of {', '.join(p.name for p in newest)}"


def load_avg_best(work: Path) -> str:
    ref = _exp(work) / "valid.acc.ave_2best.pth"
    _state_equal(work, work / "out" / "avg_best2.pth", _torch_load(ref), "avg_best2")
    got, want = _decode(work, work / "out" / "avg_best2.pth"), _decode(work, ref)
    if got != want:
        raise AssertionError(f"decoding differs from {ref.name}: {got[:2]} vs {want[:2]}")
    return f"Speech2Text decodes {len(got)} utterances identically to ESPnet's {ref.name}"


def load_export_checkpoint(work: Path) -> str:
    slim = work / "out" / "slim.pth"
    state = _torch_load(slim)
    if set(state) == {"model"} or "model" in state and isinstance(state["model"], dict):
        raise AssertionError(
            "slim.pth is wrapped ({'model': ...}); ESPnet loads it non-strictly and keeps random weights"
        )
    newest = _epochs(work)[-1]
    _state_equal(work, slim, _torch_load(newest), "slim")
    got, want = _decode(work, slim), _decode(work, newest)
    if got != want:
        raise AssertionError(f"decoding differs from {newest.name}")
    return f"Speech2Text decodes {len(got)} utterances identically to {newest.name}"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from _side import main

    main(globals())
