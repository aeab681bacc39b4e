"""Every heatmap loss can learn its target: optimised on one fixed image and landmark on a 128 x 128
map, the model's decoded position lands within 1 px of the target and its spatial softmax puts more
than half its mass within 2 px of it. Both checks are computed here with numpy from the network's
own logits, independently of the project's decoding and loss code.

A loss on logits bounded to [-1, 1] (a tanh after the output convolution) fails this: on 128 x 128
pixels no pixel can then hold more than e^2 / (e^2 + 16383) = 4.5e-4 of the mass, so the 13 pixels
within 2 px hold at most 0.6 %.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

SIZE = (128, 128)
TARGET = (70.3, 41.6)  # (x, y) pixels, off the pixel grid


def _example() -> dict:
    # A bright disc at the landmark on smooth noise: the network can find the spot locally.
    generator = torch.Generator().manual_seed(0)
    noise = torch.nn.functional.avg_pool2d(torch.rand(1, 1, *SIZE, generator=generator), 5, 1, 2) - 0.5
    ys, xs = torch.meshgrid(torch.arange(SIZE[0]).float(), torch.arange(SIZE[1]).float(), indexing="ij")
    disc = ((xs - TARGET[0]) ** 2 + (ys - TARGET[1]) ** 2 < 9).float()
    image = (noise + disc).clamp(-1, 1)
    return {
        "image": image,
        "landmarks": torch.tensor([[TARGET]]),
        "visible": torch.ones(1, 1, dtype=torch.bool),
    }


def _fit(parameters, loss_of_batch, batch: dict, steps: int) -> None:
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of_batch(batch).backward()
        optimizer.step()


def _check_sharp(logits: torch.Tensor, decoded: torch.Tensor) -> None:
    values = logits.detach().double().numpy().reshape(SIZE)
    probability = np.exp(values - values.max())
    probability /= probability.sum()
    ys, xs = np.mgrid[: SIZE[0], : SIZE[1]]
    distance = np.hypot(xs - TARGET[0], ys - TARGET[1])
    peak_y, peak_x = np.unravel_index(values.argmax(), SIZE)
    assert np.hypot(peak_x - TARGET[0], peak_y - TARGET[1]) <= 1.0
    assert float(np.hypot(*(decoded.reshape(2).numpy() - np.array(TARGET)))) <= 1.0
    mass = probability[distance <= 2.0].sum()
    assert mass > 0.5, f"only {mass:.4f} of the softmax mass lies within 2 px of the target"


@pytest.mark.parametrize("diffusion", [False, True], ids=["baseline", "diffusion"])
def test_the_landmark_diffusion_loss_sharpens_to_its_target(diffusion):
    from lightning_modules import LandmarkDiffusion

    torch.manual_seed(0)
    model = LandmarkDiffusion(
        num_landmarks=1, image_size=SIZE, diffusion=diffusion, optim={"ema_decay": None},
        network={"channels": (16, 16, 32), "attention_levels": (False, False, False), "norm_num_groups": 8},
        schedule={"num_train_timesteps": 20, "beta_end": 0.2},
    )  # fmt: skip
    batch = _example()
    _fit(model.unet.parameters(), lambda b: model.loss(b, model.unet)[0], batch, steps=300)
    model.eval()
    settings = {"mode": "single", "steps": 1, "ensemble": 1} if diffusion else None
    result = model.infer(batch["image"], torch.tensor([0]), settings)
    # The logits the decoding used: x_T of image 0 at t = T - 1, or zeros at t = 0 for the baseline.
    with torch.no_grad():
        if diffusion:
            from xraydiff.diffusion.engine import draw_noise
            from xraydiff.diffusion.landmark import item_generators

            x_t = draw_noise(item_generators(0, [0], 1), (1, 1, *SIZE), "cpu")
            logits = model.unet(batch["image"], x_t, torch.tensor([19]))
        else:
            logits = model.unet(batch["image"], torch.zeros(1, 1, *SIZE), torch.tensor([0]))
    _check_sharp(logits, result["members"])


def test_the_localizer_loss_sharpens_to_its_target():
    from lightning_modules import LandmarkLocalizer

    torch.manual_seed(0)
    model = LandmarkLocalizer(num_landmarks=1, image_size=SIZE, channels=(16, 16, 32), heatmap_sigma=1.0)
    batch = _example()
    _fit(model.net.parameters(), lambda b: model.loss(model(b["image"]), b), batch, steps=300)
    model.eval()
    with torch.no_grad():
        logits, decoded = model.predict_landmarks(batch["image"])
    _check_sharp(logits, decoded)
