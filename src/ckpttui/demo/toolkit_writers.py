"""Imitate, by hand, the on-disk checkpoint layouts of FunASR, WeNet, fairseq, SpeechBrain and
Lightning (none of them installs and runs on this CPU-only machine), for ``ckpttui demo``.

Every file holds real tensors written by real ``torch.save`` after real ``torch.optim.AdamW`` steps
on a tiny model whose module names follow the toolkit's own models. The dict keys, file names,
sidecars and write order are read from the upstream sources; each writer's docstring names the
upstream file and function it mirrors, and notes/toolkits.md has the details with citations. torch
(and, for the wav2vec2 part, transformers) is imported inside the functions only. The tests run
these writers in more variants (tests/fixtures/toolkit_writers.py), building on the public
helpers ``module_tree``, ``adamw_steps`` and ``torch_save``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "adamw_steps",
    "module_tree",
    "torch_save",
    "write_fairseq_run",
    "write_funasr_run",
    "write_lightning_ckpt",
    "write_speechbrain_run",
    "write_wenet_run",
]

# ----------------------------------------------------------------------------- shared helpers


def module_tree(**children: Any) -> Any:
    """Build an ``nn.Module`` whose children/parameters/buffers are the given keyword values."""
    import torch
    from torch import nn

    m = nn.Module()
    for name, value in children.items():
        if value is None:
            continue
        if isinstance(value, nn.Parameter):
            m.register_parameter(name, value)
        elif isinstance(value, torch.Tensor):
            m.register_buffer(name, value)
        else:
            m.add_module(name, value)
    return m


def adamw_steps(
    model: Any, steps: int, *, seed: int, optimizer: Any = None, lr: float = 1e-3
) -> tuple[Any, float]:
    """Run ``steps`` real AdamW steps on the trainable parameters; return (optimizer, last loss)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    loss_value = 0.0
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = sum(((p - torch.randn(p.shape, generator=gen)) ** 2).mean() for p in params)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        for bn in bns:  # real forward passes, so running stats and num_batches_tracked move
            bn.train()
            with torch.no_grad():
                bn(torch.randn(4, bn.num_features, 3, generator=gen))
    return optimizer, loss_value


def _curve(epoch: int, *, start: float, end: float, wiggle: float = 0.15) -> float:
    """A metric trending from ``start`` to ``end``, odd epochs better: best N != last N."""
    direction = 1.0 if end > start else -1.0
    trend = end + (start - end) * 0.5**epoch
    swing = wiggle * abs(start - end) * (1.0 if epoch % 2 else -1.0)
    return round(trend + direction * swing, 6)


def torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` (parents created); return the path."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _yaml_dump(obj: Any) -> str:
    """``yaml.dump`` with PyYAML's defaults (sorted keys, block style), as the toolkits call it."""
    import yaml

    return yaml.dump(obj)


# ----------------------------------------------------------------------------- FunASR


def _paraformer(d: int, layers: int, vocab: int, feat: int) -> Any:
    """A tiny module tree named like FunASR's Paraformer (SANM encoder/decoder, CIF predictor)."""
    from torch import nn

    ff = 2 * d

    def enc_layer(in_size: int) -> Any:
        """An EncoderLayerSANM: SANM self-attention (fsmn_block), feed-forward, two norms."""
        attn = module_tree(
            linear_out=nn.Linear(d, d),
            linear_q_k_v=nn.Linear(in_size, 3 * d),
            fsmn_block=nn.Conv1d(d, d, 5, groups=d, bias=False),
        )
        return module_tree(
            self_attn=attn,
            feed_forward=module_tree(w_1=nn.Linear(d, ff), w_2=nn.Linear(ff, d)),
            norm1=nn.LayerNorm(in_size),
            norm2=nn.LayerNorm(d),
        )

    def dec_ff() -> Any:
        """A PositionwiseFeedForwardDecoderSANM: w_1, w_2 (no bias), norm."""
        return module_tree(
            w_1=nn.Linear(d, ff), w_2=nn.Linear(ff, d, bias=False), norm=nn.LayerNorm(ff)
        )

    def dec_layer() -> Any:
        """A DecoderLayerSANM: fsmn self-attention, cross-attention, feed-forward, norms."""
        return module_tree(
            self_attn=module_tree(fsmn_block=nn.Conv1d(d, d, 5, groups=d, bias=False)),
            src_attn=module_tree(
                linear_q=nn.Linear(d, d), linear_k_v=nn.Linear(d, 2 * d), linear_out=nn.Linear(d, d)
            ),
            feed_forward=dec_ff(),
            norm1=nn.LayerNorm(d),
            norm2=nn.LayerNorm(d),
            norm3=nn.LayerNorm(d),
        )

    encoder = module_tree(
        encoders0=nn.ModuleList([enc_layer(feat)]),
        encoders=nn.ModuleList([enc_layer(d) for _ in range(max(layers - 1, 1))]),
        after_norm=nn.LayerNorm(d),
    )
    decoder = module_tree(
        embed=nn.Sequential(nn.Embedding(vocab, d)),
        after_norm=nn.LayerNorm(d),
        output_layer=nn.Linear(d, vocab),
        decoders=nn.ModuleList([dec_layer() for _ in range(layers)]),
        decoders3=nn.ModuleList([module_tree(feed_forward=dec_ff(), norm1=nn.LayerNorm(d))]),
    )
    predictor = module_tree(cif_conv1d=nn.Conv1d(d, d, 3, groups=d), cif_output=nn.Linear(d, 1))
    return module_tree(encoder=encoder, decoder=decoder, predictor=predictor)


def _funasr_warmup_lr(optimizer: Any, warmup_steps: int) -> Any:
    """A scheduler with FunASR's WarmupLR formula and the stock ``LRScheduler.state_dict``."""
    from torch import Tensor
    from torch.optim.lr_scheduler import LRScheduler

    class WarmupLR(LRScheduler):
        """Noam warm-up, as funasr/schedulers/warmup_lr.py WarmupLR.get_lr."""

        def __init__(self, opt: Any, warmup_steps: int = 25000, last_epoch: int = -1) -> None:
            """Store warmup_steps before LRScheduler.__init__ takes the first step."""
            self.warmup_steps = warmup_steps
            super().__init__(opt, last_epoch)

        def get_lr(self) -> list[float | Tensor]:
            """lr * warmup**0.5 * min(step**-0.5, step * warmup**-1.5)."""
            step = self.last_epoch + 1
            scale = self.warmup_steps**0.5 * min(step**-0.5, step * self.warmup_steps**-1.5)
            return [lr * scale for lr in self.base_lrs]

    return WarmupLR(optimizer, warmup_steps)


def _funasr_average(output_dir: Path, last_n: int) -> Path:
    """Do what funasr/train_utils/average_nbest_models.py average_checkpoints does; return path."""
    import torch

    latest = torch.load(output_dir / "model.pt", map_location="cpu", weights_only=True)
    kind = latest["avg_keep_nbest_models_type"]
    items = sorted(latest[f"val_{kind}_step_or_epoch"].items(), key=lambda x: x[1], reverse=True)
    items = items[:last_n] if kind == "acc" else items[-last_n:]
    state_dicts = []
    for key, _ in items[:last_n]:
        path = output_dir / key
        if path.is_file():
            state_dicts.append(
                torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            )
    avg: OrderedDict[str, Any] = OrderedDict()
    for key in state_dicts[0]:
        tensors = [sd[key].cpu() for sd in state_dicts]
        if str(tensors[0].dtype).startswith("torch.int"):
            avg[key] = sum(tensors)  # upstream sums integer tensors instead of averaging them
        else:
            avg[key] = torch.mean(torch.stack(tensors), dim=0)
    return torch_save({"state_dict": avg}, output_dir / f"model.pt.avg{last_n}")


def write_funasr_run(
    out_dir: str | Path,
    epochs: int = 3,
    *,
    d_model: int = 16,
    layers: int = 2,
    vocab: int = 32,
    steps_per_epoch: int = 4,
    save_checkpoint_interval: int = 3,
    avg_nbest_model: int = 2,
    avg_keep_nbest_models_type: str = "acc",
    batchnorm: bool = False,
    seed: int = 0,
) -> list[Path]:
    """Write a FunASR run: funasr/train_utils/trainer.py Trainer.save_checkpoint's files."""
    # Mirrors (modelscope/FunASR): ``Trainer.save_checkpoint`` (state keys, ``model.pt.ep{E}`` at
    # epoch end with E 1-based, ``model.pt.ep{e}.{step_in_epoch}`` mid-epoch with e the 0-based loop
    # epoch, ``model.pt`` = latest, ``model.pt.best`` when the val metric improves),
    # ``Trainer.validate_epoch`` (metrics keyed by checkpoint name), ``funasr/bin/train.py main``
    # (end-of-epoch save passes no train_*_avg / data_split kwargs, so those keys are 0 / 1 there),
    # ``funasr/utils/misc.py prepare_model_dir`` (``config.yaml``) and
    # ``funasr/train_utils/average_nbest_models.py average_checkpoints`` (``model.pt.avg{N}`` =
    # ``{"state_dict": OrderedDict}``, best N by the val metric recorded in ``model.pt``, integer
    # tensors summed). ``batchnorm=True`` adds a BatchNorm1d (as FunASR's Conformer conv module has)
    # so an int64 ``num_batches_tracked`` exists.
    import torch
    from torch import nn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = _paraformer(d_model, layers, vocab, feat=d_model + 8)
    if batchnorm:
        model.encoder.encoders[0].add_module(
            "conv_module", module_tree(norm=nn.BatchNorm1d(d_model))
        )
    optim = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    scheduler = _funasr_warmup_lr(optim, warmup_steps=25000)
    written: list[Path] = []

    config = {
        "model": "Paraformer",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "predictor_weight": 1.0},
        "encoder": "SANMEncoder",
        "encoder_conf": {"output_size": d_model, "num_blocks": layers, "kernel_size": 5},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {"num_blocks": layers, "kernel_size": 5},
        "predictor": "CifPredictorV2",
        "optim": "adamw",
        "optim_conf": {"lr": 5e-4},
        "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 25000},
        "train_conf": {
            "max_epoch": epochs,
            "save_checkpoint_interval": save_checkpoint_interval,
            "keep_nbest_models": 500,
            "avg_nbest_model": avg_nbest_model,
            "avg_keep_nbest_models_type": avg_keep_nbest_models_type,
        },
        "output_dir": str(out),
    }
    cfg_path = out / "config.yaml"
    cfg_path.write_text(_yaml_dump(config), encoding="utf-8")
    written.append(cfg_path)

    # Trainer attributes (funasr/train_utils/trainer.py Trainer.__init__)
    saved_ckpts: dict[str, float] = {}
    val_acc: dict[str, float] = {}
    val_loss: dict[str, float] = {}
    best = ""
    batch_total = 0
    metric_of = val_acc if avg_keep_nbest_models_type == "acc" else val_loss

    def validate(name: str, t: float) -> None:
        """Record val acc/loss under the checkpoint name, as Trainer.validate_epoch does."""
        val_acc[name] = round(_curve(int(t), start=0.30, end=0.90) + 0.001 * (t % 1), 6)
        val_loss[name] = round(_curve(int(t), start=3.0, end=0.8) - 0.001 * (t % 1), 6)

    def save(epoch: int, step: int | None, step_in_epoch: int | None, **kw: Any) -> None:
        """Trainer.save_checkpoint: model.pt.ep*, model.pt, maybe model.pt.best."""
        nonlocal best
        step_in_epoch = None if step is None else step_in_epoch
        state = {
            "epoch": epoch,
            "step": step,
            "total_step": batch_total,
            "state_dict": model.state_dict(),
            "optimizer": optim.state_dict(),
            "scheduler": scheduler.state_dict(),
            "saved_ckpts": dict(saved_ckpts),  # the file holds the dict as it was before this save
            "val_acc_step_or_epoch": dict(val_acc),
            "val_loss_step_or_epoch": dict(val_loss),
            "best_step_or_epoch": best,
            "avg_keep_nbest_models_type": avg_keep_nbest_models_type,
            "step_in_epoch": step_in_epoch,
            "data_split_i": kw.get("data_split_i", 0),
            "data_split_num": kw.get("data_split_num", 1),
            "batch_total": batch_total,
            "train_loss_avg": kw.get("train_loss_avg", 0),
            "train_acc_avg": kw.get("train_acc_avg", 0),
        }
        name = (
            f"model.pt.ep{epoch}"
            if step_in_epoch is None
            else f"model.pt.ep{epoch}.{step_in_epoch}"
        )
        written.append(torch_save(state, out / name))
        written.append(torch_save(state, out / "model.pt"))
        if best == "" and name in metric_of:
            best = name
        cur, prev = metric_of.get(name), metric_of.get(best)
        if cur is not None and (
            prev is None or (cur >= prev if avg_keep_nbest_models_type == "acc" else cur <= prev)
        ):
            best = name
            written.append(torch_save(state, out / "model.pt.best"))
        if cur is not None:
            saved_ckpts[name] = cur

    for epoch in range(epochs):  # funasr/bin/train.py: for epoch in range(start_epoch, max_epoch)
        for batch_idx in range(steps_per_epoch):
            adamw_steps(model, 1, seed=seed * 1000 + batch_total, optimizer=optim)
            scheduler.step()
            batch_total += 1
            step_in_epoch = batch_idx + 1  # Trainer.train_epoch: self.step_in_epoch += 1
            train_loss = 2.5 - 0.1 * batch_total
            if save_checkpoint_interval and step_in_epoch % save_checkpoint_interval == 0:
                validate(
                    f"model.pt.ep{epoch}.{step_in_epoch}", epoch + step_in_epoch / steps_per_epoch
                )
                save(
                    epoch,
                    step=batch_idx + 1,
                    step_in_epoch=step_in_epoch,
                    data_split_i=0,
                    data_split_num=1,
                    train_loss_avg=train_loss,
                    train_acc_avg=0.1 * batch_total,
                )
        validate(f"model.pt.ep{epoch + 1}", float(epoch + 1))
        scheduler.step()
        save(epoch + 1, step=None, step_in_epoch=None)

    written.append(_funasr_average(out, avg_nbest_model))
    tb = out / "tensorboard"
    tb.mkdir(exist_ok=True)
    return _dedupe(written)


def _dedupe(paths: list[Path]) -> list[Path]:
    """Keep the first occurrence of each path, in write order."""
    seen: set[Path] = set()
    result = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            result.append(p)
    return result


# ----------------------------------------------------------------------------- WeNet


def _wenet_conformer(d: int, layers: int, vocab: int, feat: int) -> Any:
    """A tiny module tree named like WeNet's ASRModel (Conformer encoder, Transformer decoder)."""
    import torch
    from torch import nn

    heads = 2

    def mha(rel: bool) -> Any:
        """A (RelPosition)MultiHeadedAttention: linear_q/k/v/out (+ linear_pos, pos_bias_u/v)."""
        extra: dict[str, Any] = {}
        if rel:
            extra = {
                "linear_pos": nn.Linear(d, d, bias=False),
                "pos_bias_u": nn.Parameter(torch.zeros(heads, d // heads)),
                "pos_bias_v": nn.Parameter(torch.zeros(heads, d // heads)),
            }
        return module_tree(
            linear_q=nn.Linear(d, d),
            linear_k=nn.Linear(d, d),
            linear_v=nn.Linear(d, d),
            linear_out=nn.Linear(d, d),
            **extra,
        )

    def ffn() -> Any:
        """A PositionwiseFeedForward: w_1, w_2."""
        return module_tree(w_1=nn.Linear(d, 2 * d), w_2=nn.Linear(2 * d, d))

    def enc_layer() -> Any:
        """A ConformerEncoderLayer with macaron FFN and conv module (BatchNorm)."""
        conv = module_tree(
            pointwise_conv1=nn.Conv1d(d, 2 * d, 1),
            depthwise_conv=nn.Conv1d(d, d, 15, padding=7, groups=d),
            norm=nn.BatchNorm1d(d),
            pointwise_conv2=nn.Conv1d(d, d, 1),
        )
        return module_tree(
            self_attn=mha(True),
            feed_forward=ffn(),
            feed_forward_macaron=ffn(),
            conv_module=conv,
            norm_ff=nn.LayerNorm(d),
            norm_mha=nn.LayerNorm(d),
            norm_ff_macaron=nn.LayerNorm(d),
            norm_conv=nn.LayerNorm(d),
            norm_final=nn.LayerNorm(d),
        )

    def dec_layer() -> Any:
        """A TransformerDecoder DecoderLayer: self_attn, src_attn, feed_forward, norms."""
        return module_tree(
            self_attn=mha(False),
            src_attn=mha(False),
            feed_forward=ffn(),
            norm1=nn.LayerNorm(d),
            norm2=nn.LayerNorm(d),
            norm3=nn.LayerNorm(d),
        )

    sub = ((feat - 1) // 2 - 1) // 2
    encoder = module_tree(
        global_cmvn=module_tree(mean=torch.randn(feat), istd=torch.rand(feat) + 0.5),
        embed=module_tree(
            conv=nn.Sequential(nn.Conv2d(1, d, 3, 2), nn.ReLU(), nn.Conv2d(d, d, 3, 2), nn.ReLU()),
            out=nn.Sequential(nn.Linear(d * sub, d)),
        ),
        after_norm=nn.LayerNorm(d),
        encoders=nn.ModuleList([enc_layer() for _ in range(layers)]),
    )
    decoder = module_tree(
        embed=nn.Sequential(nn.Embedding(vocab, d)),
        after_norm=nn.LayerNorm(d),
        output_layer=nn.Linear(d, vocab),
        decoders=nn.ModuleList([dec_layer() for _ in range(layers)]),
    )
    return module_tree(
        encoder=encoder, decoder=decoder, ctc=module_tree(ctc_lo=nn.Linear(d, vocab))
    )


def _wenet_configs(
    model_dir: Path, d: int, layers: int, vocab: int, feat: int, epochs: int
) -> dict:
    """The train config as wenet/utils/train_utils.py check_modify_and_save_config leaves it."""
    return {
        "accum_grad": 1,
        "cmvn": "global_cmvn",
        "cmvn_conf": {"cmvn_file": "data/train/global_cmvn", "is_json_cmvn": True},
        "ctc": "ctc",
        "ctc_conf": {"ctc_blank_id": 0},
        "dataset": "asr",
        "dataset_conf": {
            "batch_conf": {"batch_size": 16, "batch_type": "static"},
            "fbank_conf": {
                "dither": 0.1,
                "frame_length": 25,
                "frame_shift": 10,
                "num_mel_bins": feat,
            },
            "shuffle": True,
            "sort": True,
        },
        "decoder": "transformer",
        "decoder_conf": {"attention_heads": 2, "linear_units": 2 * d, "num_blocks": layers},
        "dtype": "fp32",
        "encoder": "conformer",
        "encoder_conf": {
            "attention_heads": 2,
            "cnn_module_kernel": 15,
            "input_layer": "conv2d",
            "linear_units": 2 * d,
            "num_blocks": layers,
            "output_size": d,
            "pos_enc_layer_type": "rel_pos",
            "selfattention_layer_type": "rel_selfattn",
            "use_cnn_module": True,
        },
        "grad_clip": 5,
        "input_dim": feat,
        "log_interval": 100,
        "max_epoch": epochs,
        "model": "asr_model",
        "model_conf": {"ctc_weight": 0.3, "length_normalized_loss": False, "lsm_weight": 0.1},
        "model_dir": str(model_dir),
        "optim": "adam",
        "optim_conf": {"lr": 0.002},
        "output_dim": vocab,
        "save_states": "model_only",
        "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 25000},
        "tokenizer": "char",
        "tokenizer_conf": {"special_tokens": {"<blank>": 0, "<sos/eos>": vocab - 1, "<unk>": 1}},
        "train_engine": "torch_ddp",
        "use_amp": False,
        "vocab_size": vocab,
    }


def _v3_cv_loss(info: dict) -> float:
    """The CV loss average_model.py ranks by in WeNet >= 3.0 yamls: ``loss_dict['loss']``."""
    return info["loss_dict"]["loss"]


def _v2_cv_loss(info: dict) -> float:
    """The CV loss average_model.py ranked by in WeNet 2.x yamls: ``cv_loss``."""
    return info["cv_loss"]


_WENET_VAL_KEYS = {"v3": (_v3_cv_loss, "epoch_*.yaml"), "v2": (_v2_cv_loss, "[0-9]*.yaml")}


def _wenet_average(
    src: Path, dst: Path, num: int, key: Callable[[dict], float], pattern: str
) -> Path:
    """Do what wenet/bin/average_model.py main does with --val_best (plain dict, true_divide)."""
    import torch
    import yaml

    scores = []
    for y in sorted(src.glob(pattern)):
        if y.name.startswith(("train", "init")):
            continue
        info = yaml.load(y.read_text(encoding="utf-8"), Loader=yaml.FullLoader)
        scores.append((key(info), y.with_suffix(".pt")))
    scores.sort(key=lambda x: x[0])
    paths = [p for _, p in scores[:num]]
    assert num == len(paths), (
        f"average_model.py asserts num == len(path_list): {num} != {len(paths)}"
    )
    avg: dict[str, Any] = {}
    for path in paths:
        states = torch.load(path, map_location="cpu", weights_only=True)
        for k in states:
            if k not in avg:
                avg[k] = states[k].clone()
            else:
                avg[k] += states[k]
    for k, v in avg.items():
        avg[k] = torch.true_divide(v, num)  # int tensors come out as float
    return torch_save(avg, dst)


def write_wenet_run(
    out_dir: str | Path,
    epochs: int = 3,
    *,
    d_model: int = 16,
    layers: int = 2,
    vocab: int = 32,
    steps_per_epoch: int = 3,
    avg_num: int = 2,
    style: str = "v3",
    seed: int = 0,
) -> list[Path]:
    """Write a WeNet run: wenet/bin/train.py main + wenet/utils/train_utils.py save_model."""
    # Mirrors (wenet-e2e/wenet), ``style="v3"`` (WeNet >= 3.0):
    # ``train_utils.check_modify_and_save_config`` (``train.yaml``), ``train.main`` (``init.pt`` +
    # ``init.yaml`` before training, tag ``epoch_{N}`` with 0-based N after each epoch's CV,
    # ``final.pt`` = ``os.symlink('{N}.pt')``: upstream links to ``{N}.pt`` although v3 files are
    # named ``epoch_{N}.pt``, so the link dangles; written as upstream does),
    # ``train_utils.save_model`` -> ``checkpoint.save_checkpoint`` / ``save_state_dict_and_infos``
    # (``torch.save(model.state_dict())`` + ``epoch_N.yaml`` = ``yaml.dump(info_dict)``: epoch, lrs,
    # step, save_time, tag, loss_dict, plus every train config key). ``style="v2"`` mirrors WeNet
    # 2.x ``wenet/bin/train.py``: ``{N}.pt`` + yaml {epoch, lr, cv_loss, step, save_time},
    # ``init.pt`` with a save_time-only yaml, and a valid ``final.pt`` link. ``avg_num > 0`` adds
    # ``avg_{avg_num}.pt`` as ``wenet/bin/average_model.py --val_best`` writes it.
    import datetime

    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    feat = 20
    model = _wenet_conformer(d_model, layers, vocab, feat)
    written: list[Path] = []
    configs = _wenet_configs(out, d_model, layers, vocab, feat, epochs)

    def now() -> str:
        """The save_time string WeNet writes."""
        return datetime.datetime.now().strftime("%d/%m/%Y %H:%M:%S")

    def save(tag: str, infos: dict | None) -> None:
        """checkpoint.save_checkpoint + save_model: ``{tag}.pt`` and ``{tag}.yaml``."""
        pt = out / f"{tag}.pt"
        written.append(torch_save(model.state_dict(), pt))
        infos = {} if infos is None else infos
        infos["save_time"] = now()
        yml = out / f"{tag}.yaml"
        yml.write_text(_yaml_dump(infos), encoding="utf-8")
        written.append(yml)

    if style == "v3":
        (out / "train.yaml").write_text(_yaml_dump(configs), encoding="utf-8")
        written.append(out / "train.yaml")
        configs["init_infos"] = {}
        save("init", {"save_time": now(), "tag": "init", **configs})
        configs.pop("init_infos", None)
    elif style == "v2":
        save("init", None)
    else:
        raise ValueError(f"style must be 'v3' or 'v2', not {style!r}")

    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    step = 0  # wenet/utils/executor.py Executor.__init__: global_step (-1) + 1
    final_epoch = None
    for epoch in range(epochs):
        configs["epoch"] = epoch
        for _ in range(steps_per_epoch):
            adamw_steps(model, 1, seed=seed * 1000 + step, optimizer=optim)
            step += 1
        loss = _curve(epoch, start=60.0, end=12.0)
        loss_dict = {
            "loss": loss,
            "loss_att": round(loss * 0.9, 6),
            "loss_ctc": round(loss * 1.2, 6),
            "acc": _curve(epoch, start=0.2, end=0.9),
        }
        lrs = [group["lr"] for group in optim.param_groups]
        if style == "v3":
            info = {
                "epoch": epoch,
                "lrs": lrs,
                "step": step,
                "save_time": now(),
                "tag": f"epoch_{epoch}",
                "loss_dict": loss_dict,
                **configs,
            }
            save(f"epoch_{epoch}", info)
        else:
            save(str(epoch), {"epoch": epoch, "lr": lrs[0], "cv_loss": loss, "step": step})
        final_epoch = epoch

    if final_epoch is not None:
        final = out / "final.pt"
        if final.is_symlink() or final.exists():
            final.unlink()
        os.symlink(f"{final_epoch}.pt", final)
        written.append(final)

    if avg_num > 0:
        key, pattern = _WENET_VAL_KEYS[style]
        written.append(_wenet_average(out, out / f"avg_{avg_num}.pt", avg_num, key, pattern))
    return written


# ----------------------------------------------------------------------------- fairseq


def _fairseq_transformer(d: int, layers: int, vocab: int) -> Any:
    """A tiny module tree named like fairseq's TransformerModel (tied decoder output projection)."""
    import torch
    from torch import nn

    def mha() -> Any:
        """A fairseq MultiheadAttention: k_proj, v_proj, q_proj, out_proj."""
        return module_tree(
            k_proj=nn.Linear(d, d),
            v_proj=nn.Linear(d, d),
            q_proj=nn.Linear(d, d),
            out_proj=nn.Linear(d, d),
        )

    def enc_layer() -> Any:
        """A TransformerEncoderLayer."""
        return module_tree(
            self_attn=mha(),
            self_attn_layer_norm=nn.LayerNorm(d),
            fc1=nn.Linear(d, 2 * d),
            fc2=nn.Linear(2 * d, d),
            final_layer_norm=nn.LayerNorm(d),
        )

    def dec_layer() -> Any:
        """A TransformerDecoderLayer with encoder_attn."""
        return module_tree(
            self_attn=mha(),
            self_attn_layer_norm=nn.LayerNorm(d),
            encoder_attn=mha(),
            encoder_attn_layer_norm=nn.LayerNorm(d),
            fc1=nn.Linear(d, 2 * d),
            fc2=nn.Linear(2 * d, d),
            final_layer_norm=nn.LayerNorm(d),
        )

    def positions() -> Any:
        """A SinusoidalPositionalEmbedding (only its _float_tensor buffer)."""
        return module_tree(
            _float_tensor=torch.FloatTensor(1)
        )  # SinusoidalPositionalEmbedding buffer

    encoder = module_tree(
        version=torch.Tensor([3]),
        embed_tokens=nn.Embedding(vocab, d, padding_idx=1),
        embed_positions=positions(),
        layers=nn.ModuleList([enc_layer() for _ in range(layers)]),
    )
    embed = nn.Embedding(vocab, d, padding_idx=1)
    output_projection = nn.Linear(d, vocab, bias=False)
    output_projection.weight = embed.weight  # share_decoder_input_output_embed
    decoder = module_tree(
        version=torch.Tensor([3]),
        embed_tokens=embed,
        embed_positions=positions(),
        layers=nn.ModuleList([dec_layer() for _ in range(layers)]),
        output_projection=output_projection,
    )
    return module_tree(encoder=encoder, decoder=decoder)


def _fairseq_args(
    out: Path, d: int, layers: int, epochs: int, interval_updates: int, keep_best: int
) -> Any:
    """The argparse.Namespace fairseq <= 0.10 pickled as ``args`` (a representative subset)."""
    return argparse.Namespace(
        activation_fn="relu",
        adam_betas="(0.9, 0.98)",
        adam_eps=1e-08,
        arch="transformer",
        attention_dropout=0.0,
        best_checkpoint_metric="loss",
        clip_norm=0.0,
        criterion="label_smoothed_cross_entropy",
        data="data-bin/demo",
        decoder_attention_heads=2,
        decoder_embed_dim=d,
        decoder_ffn_embed_dim=2 * d,
        decoder_layers=layers,
        dropout=0.1,
        encoder_attention_heads=2,
        encoder_embed_dim=d,
        encoder_ffn_embed_dim=2 * d,
        encoder_layers=layers,
        fp16=False,
        keep_best_checkpoints=keep_best,
        keep_interval_updates=-1,
        keep_last_epochs=-1,
        label_smoothing=0.1,
        lr=[0.0005],
        lr_scheduler="inverse_sqrt",
        max_epoch=epochs,
        max_tokens=4096,
        maximize_best_checkpoint_metric=False,
        no_epoch_checkpoints=False,
        no_last_checkpoints=False,
        no_save=False,
        no_save_optimizer_state=False,
        optimizer="adam",
        save_dir=str(out),
        save_interval=1,
        save_interval_updates=interval_updates,
        seed=1,
        share_decoder_input_output_embed=True,
        source_lang="de",
        target_lang="en",
        task="translation",
        warmup_init_lr=1e-07,
        warmup_updates=4000,
        weight_decay=0.0001,
    )


def _fairseq_cfg(args: Any) -> dict:
    """``OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)`` of FairseqConfig: a dict."""
    a = vars(args)
    return {
        "_name": None,
        "common": {"_name": None, "fp16": a["fp16"], "seed": a["seed"], "log_interval": 100},
        "common_eval": {"_name": None, "path": None, "post_process": None},
        "distributed_training": {
            "_name": None,
            "distributed_world_size": 1,
            "ddp_backend": "pytorch_ddp",
        },
        "dataset": {"_name": None, "max_tokens": a["max_tokens"], "num_workers": 1},
        "optimization": {
            "_name": None,
            "max_epoch": a["max_epoch"],
            "lr": a["lr"],
            "clip_norm": 0.0,
        },
        "checkpoint": {
            "_name": None,
            "save_dir": a["save_dir"],
            "save_interval": 1,
            "save_interval_updates": a["save_interval_updates"],
            "keep_best_checkpoints": a["keep_best_checkpoints"],
            "best_checkpoint_metric": "loss",
            "maximize_best_checkpoint_metric": False,
            "no_save_optimizer_state": False,
            "checkpoint_suffix": "",
        },
        "bmuf": {"_name": None, "block_lr": 1.0},
        "generation": {"_name": None, "beam": 5},
        "eval_lm": {"_name": None},
        "interactive": {"_name": None},
        "model": {
            "_name": "transformer",
            "encoder_embed_dim": a["encoder_embed_dim"],
            "encoder_layers": a["encoder_layers"],
            "decoder_embed_dim": a["decoder_embed_dim"],
            "decoder_layers": a["decoder_layers"],
            "share_decoder_input_output_embed": True,
        },
        "task": {
            "_name": "translation",
            "data": a["data"],
            "source_lang": "de",
            "target_lang": "en",
        },
        "criterion": {"_name": "label_smoothed_cross_entropy", "label_smoothing": 0.1},
        "optimizer": {
            "_name": "adam",
            "adam_betas": "(0.9, 0.98)",
            "adam_eps": 1e-08,
            "weight_decay": 0.0001,
        },
        "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 4000, "warmup_init_lr": 1e-07},
        "scoring": {"_name": "bleu"},
        "bpe": None,
        "tokenizer": None,
        "ema": {"_name": None, "store_ema": False},
    }


def _fairseq_metrics(num_updates: int, loss: float) -> OrderedDict:
    """``fairseq.logging.metrics.state_dict()``: aggregator -> [(priority, key, class, state)]."""
    return OrderedDict(
        [
            (
                "default",
                [(0, "wall", "StopwatchMeter", {"sum": 12.5, "n": num_updates, "round": 0})],
            ),
            (
                "train",
                [
                    (
                        0,
                        "loss",
                        "AverageMeter",
                        {"val": loss, "sum": loss * 10, "count": 10, "round": 3},
                    ),
                    (
                        10,
                        "nll_loss",
                        "AverageMeter",
                        {"val": loss * 0.9, "sum": loss * 9, "count": 10, "round": 3},
                    ),
                    (900, "wps", "TimeMeter", {"init": 0, "n": 4096, "round": 1}),
                    (
                        1000,
                        "lr",
                        "AverageMeter",
                        {"val": 0.0005, "sum": 0.005, "count": 10, "round": None},
                    ),
                ],
            ),
        ]
    )


def write_fairseq_run(
    out_dir: str | Path,
    epochs: int = 3,
    *,
    d_model: int = 16,
    layers: int = 1,
    vocab: int = 40,
    updates_per_epoch: int = 4,
    style: str = "legacy",
    save_interval_updates: int = 0,
    keep_best_checkpoints: int = 0,
    average_last: int = 0,
    seed: int = 0,
) -> list[Path]:
    """Write a fairseq run: fairseq/checkpoint_utils.py save_checkpoint's files."""
    # Mirrors (facebookresearch/fairseq): ``checkpoint_utils.save_checkpoint`` (the ordered
    # ``checkpoint_conds``: ``checkpoint{epoch}.pt``, ``checkpoint_{epoch}_{updates}.pt`` mid-epoch,
    # ``checkpoint_best.pt``, ``checkpoint.best_{metric}_{val}{rand}.pt``, ``checkpoint_last.pt``;
    # the first is written with ``torch_persistent_save`` (``.tmp`` then rename), the others are
    # byte copies via ``PathManager.copy``; ``extra_state`` train_iterator / val_loss / best).
    # ``style="legacy"`` mirrors fairseq <= 0.10 ``checkpoint_utils.save_state`` (``args`` = a real
    # ``argparse.Namespace``, no ``cfg``; what makes ``torch.load(weights_only=True)`` refuse the
    # file). ``style="hydra"`` mirrors fairseq >= 0.12 ``fairseq/trainer.py Trainer.state_dict``
    # (``args`` None, ``cfg`` = ``OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)``,
    # i.e. a plain dict, so no omegaconf class is pickled; ``task_state``). ``average_last > 0``
    # adds ``checkpoint.avg{N}.pt`` as ``scripts/average_checkpoints.py average_checkpoints`` writes
    # it (the newest input's whole state with ``model`` replaced; floats summed in their own dtype,
    # fp16 upcast, ints floor-divided).
    import torch

    if style not in ("legacy", "hydra"):
        raise ValueError(f"style must be 'legacy' or 'hydra', not {style!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = _fairseq_transformer(d_model, layers, vocab)
    optim = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    args = _fairseq_args(out, d_model, layers, epochs, save_interval_updates, keep_best_checkpoints)
    cfg = _fairseq_cfg(args)
    written: list[Path] = []
    best: float | None = None
    num_updates = 0
    t0 = time.time()

    def state(val_loss: float | None, itr: dict, loss: float) -> dict:
        """The dict Trainer.state_dict (or 0.10 save_state) builds, with extra_state."""
        history = [
            {
                "criterion_name": "LabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": best},
                "num_updates": num_updates,
            }
        ]
        extra = {"train_iterator": itr, "val_loss": val_loss}
        if best is not None:
            extra["best"] = best
        metrics = _fairseq_metrics(num_updates, loss)
        if style == "legacy":
            extra["metrics"] = metrics
            extra["previous_training_time"] = time.time() - t0
            return {
                "args": args,
                "model": model.state_dict(),
                "optimizer_history": history,
                "extra_state": extra,
                "last_optimizer_state": optim.state_dict(),
            }
        sd = {
            "args": None,
            "cfg": cfg,
            "model": model.state_dict(),
            "criterion": None,
            "optimizer_history": history,
            "task_state": {},
            "extra_state": {"metrics": metrics, "previous_training_time": time.time() - t0},
            "last_optimizer_state": optim.state_dict(),
        }
        sd["extra_state"].update(extra)
        return sd

    def save(
        epoch: int, end_of_epoch: bool, val_loss: float | None, itr: dict, loss: float
    ) -> None:
        """checkpoint_utils.save_checkpoint: write the first true cond, copy the rest."""
        nonlocal best
        if val_loss is not None:
            best = val_loss if best is None else min(val_loss, best)
        conds: OrderedDict[str, bool] = OrderedDict()
        conds[f"checkpoint{epoch}.pt"] = end_of_epoch
        conds[f"checkpoint_{epoch}_{num_updates}.pt"] = (
            not end_of_epoch
            and save_interval_updates > 0
            and num_updates % save_interval_updates == 0
        )
        conds["checkpoint_best.pt"] = val_loss is not None and best is not None and val_loss <= best
        if val_loss is not None and best is not None and keep_best_checkpoints > 0:
            if style == "hydra":
                worst = _fairseq_best_files(out)
                worst_best = float(worst[0].name.rsplit("_")[-1][:-3]) if worst else best
                conds[f"checkpoint.best_loss_{val_loss:.3f}{rand_sfx(epoch, val_loss)}.pt"] = (
                    worst_best is None or val_loss <= worst_best
                )
            else:  # fairseq 0.10: "{:.2f}", no random digit, compared with the running best
                conds[f"checkpoint.best_loss_{val_loss:.2f}.pt"] = val_loss <= best
        conds["checkpoint_last.pt"] = True
        names = [n for n, c in conds.items() if c]
        if not names:
            return
        first = out / names[0]
        tmp = Path(str(first) + ".tmp")
        torch.save(state(val_loss, itr, loss), tmp)  # torch_persistent_save: atomic .tmp + rename
        os.replace(tmp, first)
        written.append(first)
        for other in names[1:]:
            shutil.copyfile(first, out / other)  # PathManager.copy
            written.append(out / other)
        if keep_best_checkpoints > 0:  # keep only the best N checkpoint.best_* files
            for old in _fairseq_best_files(out)[::-1][keep_best_checkpoints:]:
                old.unlink()
                if old in written:
                    written.remove(old)

    def rand_sfx(epoch: int, val_loss: float) -> int:
        """``np.random.randint(0, keep_best_checkpoints)`` under data_utils.numpy_seed(...)."""
        import numpy as np

        state = np.random.get_state()
        np.random.seed(int(hash((epoch, num_updates, val_loss)) % 1e6))
        try:
            return int(np.random.randint(0, keep_best_checkpoints))
        finally:
            np.random.set_state(state)

    for epoch in range(1, epochs + 1):
        loss = 0.0
        for i in range(1, updates_per_epoch + 1):
            _, loss = adamw_steps(model, 1, seed=seed * 1000 + num_updates, optimizer=optim)
            num_updates += 1
            if (
                save_interval_updates > 0
                and num_updates % save_interval_updates == 0
                and i < updates_per_epoch
            ):
                itr = {"version": 2, "epoch": epoch, "iterations_in_epoch": i, "shuffle": True}
                save(epoch, False, None, itr, loss)
        val = _curve(epoch, start=9.0, end=4.0)
        itr = {"version": 2, "epoch": epoch + 1, "iterations_in_epoch": 0, "shuffle": True}
        save(epoch, True, val, itr, loss)

    if average_last > 0:
        written.append(_fairseq_average(out, average_last))
    return _dedupe(written)


def _fairseq_best_files(out: Path) -> list[Path]:
    """checkpoint_utils.checkpoint_paths for ``checkpoint.best_loss_*.pt``, largest value first."""
    entries = []
    for f in os.listdir(out):
        m = re.fullmatch(r"checkpoint\.best_loss_(\d+\.?\d*)\.pt", f)
        if m:
            entries.append((float(m.group(1)), f))  # upstream's key includes the random digit
    return [out / f for _, f in sorted(entries, reverse=True)]


def _fairseq_average(out: Path, n: int) -> Path:
    """Do what fairseq scripts/average_checkpoints.py does for --num-epoch-checkpoints n."""
    import torch

    entries = []
    for f in os.listdir(out):
        m = re.fullmatch(r"checkpoint(\d+)\.pt", f)
        if m:
            entries.append((int(m.group(1)), f))
    inputs = [out / f for _, f in sorted(entries, reverse=True)[:n]]
    params: OrderedDict[str, Any] = OrderedDict()
    new_state = None
    for path in inputs:
        st = torch.load(
            path, map_location="cpu", weights_only=False
        )  # legacy args need full unpickling
        if new_state is None:
            new_state = st
        for k, p in st["model"].items():
            if isinstance(p, torch.HalfTensor):
                p = p.float()
            if k not in params:
                params[k] = p.clone()
            else:
                params[k] += p
    averaged: OrderedDict[str, Any] = OrderedDict()
    for k, v in params.items():
        averaged[k] = v
        if v.is_floating_point():
            averaged[k].div_(len(inputs))
        else:
            averaged[k] //= len(inputs)
    assert new_state is not None
    new_state["model"] = averaged
    return torch_save(new_state, out / f"checkpoint.avg{n}.pt")


# ----------------------------------------------------------------------------- SpeechBrain


def _speechbrain_model(d: int, vocab: int, n_mels: int) -> Any:
    """``nn.ModuleList([CNN, Transformer, seq_lin, ctc_lin])`` as in SpeechBrain ASR recipes."""
    from torch import nn

    def sb_linear(i: int, o: int) -> Any:
        """speechbrain.nnet.linear.Linear (nn.Linear as ``.w``)."""
        return module_tree(
            w=nn.Linear(i, o)
        )  # speechbrain.nnet.linear.Linear wraps nn.Linear as .w

    def sb_mha() -> Any:
        """speechbrain.nnet.attention.MultiheadAttention (nn.MultiheadAttention as ``.att``)."""
        return module_tree(
            att=nn.MultiheadAttention(d, 2, batch_first=True)
        )  # nnet.attention.MultiheadAttention

    def sb_norm() -> Any:
        """speechbrain.nnet.normalization.LayerNorm (as ``.norm``)."""
        return module_tree(norm=nn.LayerNorm(d))  # nnet.normalization.LayerNorm wraps .norm

    def ffn() -> Any:
        """speechbrain PositionalwiseFeedForward (``.ffn`` Sequential)."""
        return module_tree(
            ffn=nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Dropout(0.0), nn.Linear(2 * d, d))
        )

    cnn = module_tree(
        convblock_0=module_tree(
            conv_1=module_tree(conv=nn.Conv2d(1, 4, 3, 2)), norm_1=module_tree(norm=nn.LayerNorm(4))
        ),
    )
    enc_layer = module_tree(self_att=sb_mha(), pos_ffn=ffn(), norm1=sb_norm(), norm2=sb_norm())
    dec_layer = module_tree(
        self_attn=sb_mha(),
        mutihead_attn=sb_mha(),  # (sic) upstream's attribute name in TransformerDecoderLayer
        pos_ffn=ffn(),
        norm1=sb_norm(),
        norm2=sb_norm(),
        norm3=sb_norm(),
    )
    transformer = module_tree(
        encoder=module_tree(layers=nn.ModuleList([enc_layer]), norm=sb_norm()),
        decoder=module_tree(layers=nn.ModuleList([dec_layer]), norm=sb_norm()),
        custom_src_module=module_tree(
            layers=nn.Sequential(sb_linear(4 * ((n_mels - 3) // 2 + 1), d))
        ),
        custom_tgt_module=module_tree(
            layers=nn.Sequential(module_tree(Embedding=nn.Embedding(vocab, d)))
        ),
    )
    return nn.ModuleList([cnn, transformer, sb_linear(d, vocab), sb_linear(d, vocab)])


def _hf_wav2vec2(d: int) -> Any:
    """A tiny real ``transformers.Wav2Vec2Model`` as ``.model``, like SpeechBrain's HF wrapper."""
    from torch import nn
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(
        hidden_size=d,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * d,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        vocab_size=32,
    )
    wrapper = nn.Module()
    wrapper.model = Wav2Vec2Model(cfg)
    return wrapper


def write_speechbrain_run(
    out_dir: str | Path,
    n: int = 3,
    *,
    d_model: int = 16,
    vocab: int = 32,
    n_mels: int = 20,
    steps_per_epoch: int = 5,
    with_wav2vec2: bool = True,
    legacy_normalizer: bool = False,
    average_final: bool = False,
    seed: int = 0,
) -> list[Path]:
    """Write save/CKPT+... dirs: speechbrain/utils/checkpoints.py Checkpointer.save_checkpoint."""
    # Mirrors (speechbrain/speechbrain): ``Checkpointer.save_checkpoint`` (folder from
    # ``_new_checkpoint_dirpath``: ``CKPT+%Y-%m-%d+%H-%M-%S+%02d``; ``CKPT.yaml`` from
    # ``_save_checkpoint_metafile`` is written FIRST: ``# yamllint disable`` + ``yaml.dump`` of
    # {unixtime, end-of-epoch, **meta}; then one ``<name>.ckpt`` per recoverable in insertion
    # order), ``torch_save`` (modules and optimizers: ``torch.save(obj.state_dict())``),
    # ``EpochCounter._save`` (``counter.ckpt``: the epoch as text), ``core.Brain._save``
    # (``brain.ckpt``: YAML step, avg_train_loss, optimizer_step; step/avg reset to 0 at epoch end),
    # ``nnet/schedulers.py NoamScheduler.save`` (``{"losses", "n_steps"}``),
    # ``processing/features.py InputNormalization._save`` (``{"count", "glob_mean", "glob_std"}``;
    # ``legacy_normalizer`` adds the spk_dict_* keys SpeechBrain 1.0 wrote), ``dataio/dataloader.py
    # SaveableDataLoader._speechbrain_save`` (``dataloader-TRAIN.ckpt``: batches yielded, as text)
    # and ``integrations/huggingface/wav2vec2.py Wav2Vec2`` (``wav2vec2.ckpt``: the HF model under
    # ``model.``). Meta follows recipes/LibriSpeech/ASR/transformer/train.py (ACC, epoch) plus the
    # CTC recipe's WER. ``average_final`` mimics that recipe's test stage: the
    # ``checkpoints.average_checkpoints`` of ``model`` saved as a new checkpoint with ``ACC: 1.1``,
    # the others deleted (``save_and_keep_only(num_to_keep=1)``). Also writes ``train_log.txt`` as
    # ``utils/train_logger.py FileTrainLogger.log_stats`` does.
    import torch

    out = Path(out_dir)
    save_dir = out / "save"
    save_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = _speechbrain_model(d_model, vocab, n_mels)
    wav2vec2 = _hf_wav2vec2(d_model) if with_wav2vec2 else None
    params = list(model.parameters()) + (
        list(wav2vec2.parameters()) if wav2vec2 is not None else []
    )
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    trainables = torch.nn.ModuleList([model] + ([wav2vec2] if wav2vec2 is not None else []))
    written: list[Path] = []
    t_start = time.time() - 600.0 * (n + 1)
    n_steps = 0
    optimizer_step = 0
    count = 0
    glob_mean = torch.zeros(n_mels)
    glob_std = torch.ones(n_mels)
    log_lines: list[str] = []
    gen = torch.Generator().manual_seed(seed)

    def checkpoint(t: float, meta: dict, epoch: int, model_state: Any = None) -> Path:
        """Checkpointer.save_checkpoint: CKPT.yaml first, then each recoverable."""
        stamp = time.strftime("%Y-%m-%d+%H-%M-%S", time.localtime(t))
        k = 0
        while (save_dir / f"CKPT+{stamp}+{k:02d}").exists():
            k += 1
        ckpt_dir = save_dir / f"CKPT+{stamp}+{k:02d}"
        ckpt_dir.mkdir()
        full_meta = {"unixtime": t, "end-of-epoch": True}
        full_meta.update(meta)
        (ckpt_dir / "CKPT.yaml").write_text(
            "# yamllint disable\n" + _yaml_dump(full_meta), encoding="utf-8"
        )
        files = [ckpt_dir / "CKPT.yaml"]
        # recoverables from the hparams file, in its order, then Brain's own additions
        if wav2vec2 is not None:
            files.append(torch_save(wav2vec2.state_dict(), ckpt_dir / "wav2vec2.ckpt"))
        files.append(torch_save(model_state or model.state_dict(), ckpt_dir / "model.ckpt"))
        files.append(
            torch_save({"losses": [], "n_steps": n_steps}, ckpt_dir / "noam_scheduler.ckpt")
        )
        stats: dict[str, Any] = {
            "count": count,
            "glob_mean": glob_mean.clone(),
            "glob_std": glob_std.clone(),
        }
        if legacy_normalizer:
            stats.update({"spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}})
        files.append(torch_save(stats, ckpt_dir / "normalizer.ckpt"))
        (ckpt_dir / "counter.ckpt").write_text(str(epoch), encoding="utf-8")
        files.append(ckpt_dir / "counter.ckpt")
        brain = {"step": 0, "avg_train_loss": 0.0, "optimizer_step": optimizer_step}
        (ckpt_dir / "brain.ckpt").write_text(_yaml_dump(brain), encoding="utf-8")
        files.append(ckpt_dir / "brain.ckpt")
        (ckpt_dir / "dataloader-TRAIN.ckpt").write_text(str(steps_per_epoch), encoding="utf-8")
        files.append(ckpt_dir / "dataloader-TRAIN.ckpt")
        files.append(torch_save(optimizer.state_dict(), ckpt_dir / "optimizer.ckpt"))
        for f in files:
            os.utime(f, (t, t))
        os.utime(ckpt_dir, (t, t))
        written.extend(files)
        return ckpt_dir

    dirs: list[Path] = []
    for epoch in range(1, n + 1):
        for _ in range(steps_per_epoch):
            adamw_steps(trainables, 1, seed=seed * 1000 + n_steps, optimizer=optimizer)
            n_steps += 1
            optimizer_step += 1
            feats = torch.randn(8, n_mels, generator=gen) * 2 + 1
            new_count = count + feats.shape[0]
            glob_mean = (glob_mean * count + feats.sum(0)) / new_count
            glob_std = feats.std(0) * 0.5 + glob_std * 0.5
            count = new_count
        train_loss = _curve(epoch, start=120.0, end=25.0, wiggle=0.05)
        acc = _curve(epoch, start=0.3, end=0.9)
        wer = round(100 * (1 - acc) + 5, 4)
        valid_loss = _curve(epoch, start=80.0, end=20.0)
        dirs.append(
            checkpoint(t_start + 600.0 * epoch, {"ACC": acc, "WER": wer, "epoch": epoch}, epoch)
        )
        log_lines.append(
            f"epoch: {epoch}, lr: {1e-3:.2e}, steps: {optimizer_step}, optimizer: AdamW - "
            f"train loss: {train_loss:.2f} - valid loss: {valid_loss:.2f}, valid ACC: {acc:.2e}, "
            f"valid WER: {wer:.2f}"
        )

    if average_final:
        states = [torch.load(p / "model.ckpt", map_location="cpu", weights_only=True) for p in dirs]
        running = states[0]
        with torch.no_grad():  # checkpoints.average_state_dicts: in-place sum, then / float(n)
            for sd in states[1:]:
                for k, v in sd.items():
                    running[k] += v.data
            for k, v in running.items():
                running[k] = v.data / float(len(states))
        final = checkpoint(
            t_start + 600.0 * (n + 0.5), {"ACC": 1.1, "epoch": n}, n, model_state=running
        )
        for p in dirs:  # save_and_keep_only(max_keys=["ACC"], num_to_keep=1)
            shutil.rmtree(p)
        written = [w for w in written if w.parent == final]

    log = out / "train_log.txt"
    log.write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    written.append(log)
    return written


# ----------------------------------------------------------------------------- Lightning


def _progress(
    ready: int, completed: int, started: int | None = None, processed: int | None = None
) -> dict:
    """``dataclasses.asdict`` of a Lightning progress tracker (fields in dataclass order)."""
    d = {"ready": ready, "completed": completed}
    if started is not None:
        d["started"] = started
    if processed is not None:
        d["processed"] = processed
    return d


def _lightning_loops(epochs: int, steps_per_epoch: int, val_batches: int) -> dict:
    """``CheckpointConnector._get_loops_state_dict`` after epochs x steps_per_epoch batches."""
    total = epochs * steps_per_epoch

    def batch_progress(t: int, c: int, last: bool) -> dict:
        """A _BatchProgress as asdict."""
        return {
            "total": _progress(t, t, t, t),
            "current": _progress(c, c, c, c),
            "is_last_batch": last,
        }

    def zeros(processed: bool = True) -> dict:
        """An untouched _Progress as asdict."""
        p = _progress(0, 0, 0, 0) if processed else _progress(0, 0)
        return {"total": dict(p), "current": dict(p)}

    fit = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": total},
        "epoch_loop.batch_progress": batch_progress(total, steps_per_epoch, True),
        "epoch_loop.scheduler_progress": {
            "total": _progress(total, total),
            "current": _progress(steps_per_epoch, steps_per_epoch),
        },
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {
                "step": {
                    "total": _progress(total, total),
                    "current": _progress(steps_per_epoch, steps_per_epoch),
                },
                "zero_grad": {
                    "total": _progress(total, total, total),
                    "current": _progress(steps_per_epoch, steps_per_epoch, steps_per_epoch),
                },
            }
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": {
            "total": _progress(0, 0),
            "current": _progress(0, 0),
        },
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": batch_progress(
            epochs * val_batches, val_batches, True
        ),
        "epoch_progress": {
            "total": _progress(epochs, epochs - 1, epochs, epochs),
            "current": _progress(epochs, epochs - 1, epochs, epochs),
        },
    }
    evaluation = {"state_dict": {}, "batch_progress": {**zeros(), "is_last_batch": False}}
    return {
        "fit_loop": fit,
        "validate_loop": evaluation,
        "test_loop": {"state_dict": {}, "batch_progress": {**zeros(), "is_last_batch": False}},
        "predict_loop": {"state_dict": {}, "batch_progress": zeros()},
    }


def write_lightning_ckpt(
    out_dir: str | Path,
    epochs: int = 3,
    *,
    steps_per_epoch: int = 10,
    d_model: int = 16,
    lightning_version: str = "2.6.2",
    seed: int = 0,
) -> list[Path]:
    """Write Lightning .ckpt files: checkpoint_connector.py CheckpointConnector.dump_checkpoint."""
    # Mirrors (Lightning-AI/pytorch-lightning): ``trainer/connectors/checkpoint_connector.py
    # CheckpointConnector.dump_checkpoint`` (keys epoch, global_step, pytorch-lightning_version,
    # state_dict, loops, callbacks, optimizer_states, lr_schedulers, hparams_name, hyper_parameters
    # = ``dict(hparams)``; no precision-plugin key in fp32), ``_get_loops_state_dict`` +
    # ``loops/loop.py _Loop.state_dict`` + ``loops/progress.py`` (flat "epoch_loop.*" keys, asdict
    # trackers), ``callbacks/model_checkpoint.py ModelCheckpoint.state_dict`` / ``state_key``
    # (``kth_value`` is ``torch.tensor(inf)`` even without a monitor), ``format_checkpoint_name``
    # (``{epoch}-{step}``), ``__resolve_ckpt_dir`` (``<logger
    # save_dir>/lightning_logs/version_0/checkpoints``) and ``loggers/tensorboard.py``
    # (``hparams.yaml`` next to it). ``last.ckpt`` is a second full save (``save_last=True``), not a
    # copy: its ``last_model_path`` names itself.
    import torch
    from torch import nn

    out = Path(out_dir)
    version_dir = out / "lightning_logs" / "version_0"
    ckpt_dir = version_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    module = module_tree(
        encoder=nn.Sequential(nn.Linear(8, d_model), nn.ReLU(), nn.Linear(d_model, d_model)),
        head=nn.Linear(d_model, 4),
    )
    optim = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=1, gamma=0.9)
    for _ in range(epochs):
        adamw_steps(module, steps_per_epoch, seed=seed * 1000 + _, optimizer=optim)
        sched.step()
    hparams = {
        "d_model": d_model,
        "lr": 1e-3,
        "num_classes": 4,
        "dropout": 0.1,
        "scheduler": "step",
    }
    epoch, global_step = epochs - 1, epochs * steps_per_epoch
    name = f"epoch={epoch}-step={global_step}.ckpt"
    state_key = (
        "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
        "'every_n_epochs': 1, 'train_time_interval': None}"
    )

    def dump(best_path: str, last_path: str) -> dict:
        """CheckpointConnector.dump_checkpoint's dict for this tiny fit."""
        return {
            "epoch": epoch,
            "global_step": global_step,
            "pytorch-lightning_version": lightning_version,
            "state_dict": module.state_dict(),
            "loops": _lightning_loops(epochs, steps_per_epoch, val_batches=2),
            "callbacks": {
                state_key: {
                    "monitor": None,
                    "best_model_score": None,
                    "best_model_path": best_path,
                    "current_score": None,
                    "dirpath": str(ckpt_dir.resolve()),
                    "best_k_models": {},
                    "kth_best_model_path": "",
                    "kth_value": torch.tensor(torch.inf),
                    "last_model_path": last_path,
                }
            },
            "optimizer_states": [optim.state_dict()],
            "lr_schedulers": [sched.state_dict()],
            "hparams_name": "kwargs",
            "hyper_parameters": dict(hparams),
        }

    best_path = str((ckpt_dir / name).resolve())
    last_path = str((ckpt_dir / "last.ckpt").resolve())
    prev_last = last_path if epochs > 1 else ""
    written = [
        torch_save(dump(best_path, prev_last), ckpt_dir / name),
        torch_save(dump(best_path, last_path), ckpt_dir / "last.ckpt"),
    ]
    hp = version_dir / "hparams.yaml"
    hp.write_text(_yaml_dump(hparams), encoding="utf-8")
    written.append(hp)
    return written
