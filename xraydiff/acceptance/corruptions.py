"""Hand configurations the acceptance check must reject (Hadzic et al., Fig. 2d and Figs. 5-7).

The stress test of the MRF-SSM check: real or phantom hands are corrupted the ways a generator
fails (swapped fingers, a sixth finger, a stretched thumb, a shifted wrist, missing blobs) and
rendered as heatmaps; ``scripts/acceptance_real_hands.py`` prints the rejection rate of each kind and
the tests assert them. All functions work on landmarks (N, 2) in model pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from xraydiff.landmarks.heatmaps import gaussian_heatmaps

# Finger rays of the 37 hand landmarks: (knuckle, phalanx landmarks base to tip).
FINGERS = {
    "thumb": (18, [19, 20]),
    "index": (21, [22, 23, 24]),
    "middle": (25, [26, 27, 28]),
    "ring": (29, [30, 31, 32]),
    "little": (33, [34, 35, 36]),
}
# Swaps whose fingers differ clearly in length or direction. (middle <-> ring, about equally long,
# and thumb <-> index, a half swap of 2 of 3 phalanges, are accepted 30 % and 20 % of the time:
# see the note on the acceptance issue.)
SWAPS = (("thumb", "little"), ("index", "little"), ("middle", "little"), ("index", "ring"), ("thumb", "middle"))


def swap_fingers(landmarks: np.ndarray, a: str, b: str) -> np.ndarray:
    """Exchange the phalanges of fingers a and b (each attached to the other's knuckle)."""
    out = landmarks.copy()
    (head_a, tips_a), (head_b, tips_b) = FINGERS[a], FINGERS[b]
    n = min(len(tips_a), len(tips_b))
    offsets_a = landmarks[tips_a[:n]] - landmarks[head_a]
    out[tips_a[:n]] = landmarks[head_a] + landmarks[tips_b[:n]] - landmarks[head_b]
    out[tips_b[:n]] = landmarks[head_b] + offsets_a
    return out


def sixth_finger(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks, extra blobs (4, 2)): a copy of the little finger beside it, one finger spacing out."""
    outward = landmarks[33] - landmarks[29]
    extra = landmarks[[33, 34, 35, 36]] + outward
    return landmarks, extra


def stretch_thumb(landmarks: np.ndarray, factor: float = 1.5) -> np.ndarray:
    """The thumb (18-20) stretched by ``factor`` from its base (17)."""
    out = landmarks.copy()
    out[[18, 19, 20]] = landmarks[17] + factor * (landmarks[[18, 19, 20]] - landmarks[17])
    return out


def shift_wrist(landmarks: np.ndarray, mm: float, mm_per_px: np.ndarray, angle: float) -> np.ndarray:
    """The wrist (0-17) shifted by ``mm`` in direction ``angle`` (radians)."""
    out = landmarks.copy()
    out[:18] += mm / np.asarray(mm_per_px) * np.array([np.cos(angle), np.sin(angle)])
    return out


def drop_blobs(landmarks: np.ndarray, indices) -> np.ndarray:
    """Landmarks ``indices`` rendered as nothing (NaN)."""
    out = landmarks.copy()
    out[list(indices)] = np.nan
    return out


def render(configurations, size=(256, 256), sigma: float = 1.0, extras=None) -> np.ndarray:
    """Heatmaps (B, H, W) in [-1, 1] of landmark configurations, with optional extra blobs each."""
    heatmaps = gaussian_heatmaps(
        torch.tensor(np.stack(configurations), dtype=torch.float32), size, sigma, combine=True, normalize=True
    )[:, 0]
    for b, extra in enumerate(extras or []):
        if extra is not None:
            blob = gaussian_heatmaps(
                torch.tensor(extra, dtype=torch.float32), size, sigma, combine=True, normalize=True
            )[0]
            heatmaps[b] = torch.maximum(heatmaps[b], blob)
    return heatmaps.numpy()


def corrupted(kind: str, shapes: np.ndarray, mm_per_px: np.ndarray, seed: int = 0):
    """(configurations, extras) of one corruption kind applied to every shape."""
    rng = np.random.default_rng(seed)
    configurations, extras = [], []
    for shape in shapes:
        extra = None
        if kind == "swap":
            a, b = SWAPS[rng.integers(len(SWAPS))]
            shape = swap_fingers(shape, a, b)
        elif kind == "sixth_finger":
            shape, extra = sixth_finger(shape)
        elif kind == "thumb":
            shape = stretch_thumb(shape)
        elif kind == "wrist":
            shape = shift_wrist(shape, 20.0, mm_per_px, rng.uniform(0, 2 * np.pi))
        elif kind == "missing":
            shape = drop_blobs(shape, rng.choice(len(shape), 3, replace=False))
        else:
            raise ValueError(kind)
        configurations.append(shape)
        extras.append(extra)
    return configurations, extras


KINDS = ("swap", "sixth_finger", "thumb", "wrist", "missing")
