"""Export a trained generator (paired DDPM, LDM, paired VAE) as a small checkpoint shipped for the demo.

Keeps the hyperparameters, the class tag and the weights used for sampling, stored in float16: for a
diffusion model its EMA weights (the raw weights are set to them), for a model without EMA (the VAE)
its weights; optimizer, loop and callback states are dropped. The result loads with ``load_model`` /
``xraydiff sample --ckpt_path``.

    # the two training stages of configs/demo/hand_ddpm_pretrain.yaml (about 2.7 h on 2 CPU cores)
    xraydiff fit --config configs/demo/hand_ddpm_pretrain.yaml \\
        --model.init_args.schedule.prediction_type epsilon --trainer.max_steps 5595
    xraydiff fit --config configs/demo/hand_ddpm_pretrain.yaml --ckpt_path last
    python scripts/export_demo_checkpoint.py --ckpt_path runs/pretrain_hand_ddpm/checkpoints/last-step.ckpt \\
        --out xraydiff/assets/demo_hand_ddpm.ckpt

Checkpoints record the training set they were trained on (``xraydiff.train_data``), which the study
checks against each row. The shipped checkpoint predates that record; it was added afterwards with
    python scripts/export_demo_checkpoint.py --ckpt_path xraydiff/assets/demo_hand_ddpm.ckpt \\
        --out xraydiff/assets/demo_hand_ddpm.ckpt --train-config configs/demo/hand_ddpm_pretrain.yaml
and its default sampling set to the sampler table's choice (docs/hands.md: DDIM 10 at eta 1) with
    python scripts/export_demo_checkpoint.py --ckpt_path xraydiff/assets/demo_hand_ddpm.ckpt \\
        --out xraydiff/assets/demo_hand_ddpm.ckpt --hparam sampler=ddim --hparam sampling_steps=10 --hparam ddim_eta=1.0
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
import yaml

from xraydiff.data.imageio import atomic_write_bytes


def describe_training_set(config: Path, overrides: list[str]) -> dict:
    """The training set of a fit config's data section (for checkpoints older than provenance records)."""
    from commands.parsing import data_parser

    parser = data_parser("export", "")
    cfg = parser.parse_args(["--config", str(config), *overrides, "--data.init_args.annotations_only", "true"])
    return parser.instantiate_classes(cfg).data.training_set_description()


def export(source: Path, target: Path, train_data: dict | None = None, hparams: dict | None = None) -> dict:
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    unknown = sorted(set(hparams or {}) - set(checkpoint["hyper_parameters"]))
    if unknown:
        raise SystemExit(f"{source}: no hyperparameter {unknown[0]}")
    if train_data is None and "train_data" not in checkpoint["xraydiff"]:
        raise SystemExit(f"{source}: records no training set; pass --train-config (and its data overrides)")
    state = checkpoint["state_dict"]
    slim_state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    ema = {k[len("ema.module.") :]: v for k, v in slim_state.items() if k.startswith("ema.module.")}
    if not ema and any(key.startswith("unet.") for key in slim_state):
        raise SystemExit(f"{source}: a diffusion model without EMA weights")
    for key in slim_state:
        if key.startswith("unet."):
            slim_state[key] = ema[key[len("unet.") :]]  # the same tensor: torch.save stores it once
    slim = {
        "state_dict": slim_state,
        "hyper_parameters": {**checkpoint["hyper_parameters"], **(hparams or {})},
        "hparams_name": checkpoint.get("hparams_name", "kwargs"),
        "pytorch-lightning_version": checkpoint["pytorch-lightning_version"],
        "xraydiff": {
            **checkpoint["xraydiff"],
            **({"train_data": train_data} if train_data is not None else {}),
            # re-exporting a shipped checkpoint in place keeps the record of the training run it came from
            "exported_from": checkpoint["xraydiff"].get("exported_from", str(source))
            if Path(source).resolve() == Path(target).resolve()
            else str(source),
            "global_step": checkpoint["global_step"],
            "epoch": checkpoint["epoch"],
        },
        "epoch": checkpoint["epoch"],
        "global_step": checkpoint["global_step"],
    }
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    atomic_write_bytes(target, buffer.getvalue())
    return slim["xraydiff"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("xraydiff/assets/demo_hand_ddpm.ckpt"))
    parser.add_argument("--train-config", type=Path, help="fit config whose data section the model was trained on")
    parser.add_argument(
        "--hparam", action="append", default=[], metavar="NAME=VALUE",
        help="replace a hyperparameter (a YAML value), e.g. the default sampling: --hparam sampling_steps=10",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="data overrides of that fit (--data.init_args.KEY VALUE)")
    args, unknown = parser.parse_known_args()
    train_data = describe_training_set(args.train_config, args.overrides + unknown) if args.train_config else None
    hparams = {name: yaml.safe_load(value) for name, _, value in (item.partition("=") for item in args.hparam)}
    info = export(args.ckpt_path, args.out, train_data, hparams)
    print(f"training set: {info.get('train_data')}")
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, step {info['global_step']}, epoch {info['epoch']}")


if __name__ == "__main__":
    main()
