"""``--ckpt_path last`` continues a fit bit for bit, on the path users take: a fit stopped by
``max_steps`` (inside an epoch or at its end) and resumed into the same folder with a larger one."""

from __future__ import annotations

import pytest
import torch
from tiny import AUTOENCODER, DDPM, LANDMARK_DIFFUSION, LDM, LOCALIZER, SEGMENTER, VAE

# Augmentation on and validation every epoch, so that a restarted epoch, a shifted random stream or a
# validation that drew from the training stream would show. (fit arguments, stop, total)
AUGMENTED = ["--data.init_args.augmentation", "default", "--trainer.check_val_every_n_epoch", "1"]
PANORAMIC_BATCH_2 = ["--data.init_args.batch_size", "2"]  # 8 generator images: 4 steps per epoch
ADVERSARIAL = [
    "--model.init_args.gan.adversarial_weight",
    "0.1",
    "--model.init_args.gan.adversarial_warmup",
    "1",
]
CASES = {
    "paired_ddpm-mid-epoch": ([*DDPM, *AUGMENTED], 3, 6),  # 4 steps per epoch
    "paired_ddpm-epoch-end": ([*DDPM, *AUGMENTED], 4, 8),
    "vae": ([*VAE, *AUGMENTED], 5, 7),
    "localizer": ([*LOCALIZER, *AUGMENTED], 3, 6),
    # Manual optimisation, two optimizers: global_step counts both (the discriminator from batch 2 on).
    "adversarial_autoencoder": ([*AUTOENCODER, *ADVERSARIAL, *PANORAMIC_BATCH_2], 3, 7),
    "ldm": ([*LDM, *PANORAMIC_BATCH_2], 3, 6),  # cached latents: the encoder's draws continue too
    # An epoch budget: the cosine schedule's length does not depend on max_steps (8 steps per epoch).
    "landmark_diffusion": ([*LANDMARK_DIFFUSION, *AUGMENTED, "--trainer.max_epochs", "2"], 3, 5),
    "segmenter": ([*SEGMENTER, *AUGMENTED], 3, 6),
}


@pytest.fixture(params=list(CASES))
def case(request) -> tuple[list, int, int]:
    base, stop, total = CASES[request.param]
    if request.param == "ldm":
        base = [*base, "--model.init_args.autoencoder_ckpt", str(request.getfixturevalue("autoencoder_checkpoint"))]
    return base, stop, total


def test_ckpt_path_last_after_max_steps_continues_bit_for_bit(cli, tmp_path, case):
    base, stop, total = case

    def fit(root, *extra):
        code, out, err = cli("fit", *base, "--trainer.default_root_dir", root, *extra)
        assert code == 0, err[-3000:]
        return torch.load(root / "checkpoints" / "last.ckpt", weights_only=False), out + err

    straight, _ = fit(tmp_path / "a", "--trainer.max_steps", total)
    stopped, _ = fit(tmp_path / "b", "--trainer.max_steps", stop)
    assert stopped["global_step"] == stop
    resumed, log = fit(tmp_path / "b", "--trainer.max_steps", total, "--ckpt_path", "last")
    # The epoch it continues: the stopped one, or the next where the stop ended an epoch.
    epoch = stopped["epoch"] + int(stopped["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"])
    assert f"resumed {tmp_path / 'b' / 'checkpoints' / 'last.ckpt'} at epoch {epoch}, step {stop}:" in log
    assert "not resumable" not in log
    assert (resumed["global_step"], resumed["epoch"]) == (straight["global_step"], straight["epoch"])
    for key, value in straight["state_dict"].items():  # weights, EMA, buffers (scale factor, GAN clock)
        assert torch.equal(value, resumed["state_dict"][key]), key
    for optimizer_a, optimizer_b in zip(straight["optimizer_states"], resumed["optimizer_states"], strict=True):
        for state_a, state_b in zip(optimizer_a["state"].values(), optimizer_b["state"].values(), strict=True):
            assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for scheduler_a, scheduler_b in zip(straight["lr_schedulers"], resumed["lr_schedulers"], strict=True):
        assert scheduler_a["last_epoch"] == scheduler_b["last_epoch"]
        assert scheduler_a["_last_lr"] == scheduler_b["_last_lr"]
