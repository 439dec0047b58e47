"""The winner's training augmentation (`light_augmentation_train`, docs/method.md §8.1), batched on
the training device; input conversion and ImageNet normalisation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment_batch(x: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """The winner's `light_augmentation_train` (§8.1), per sample, batched; x float [B,3,S,S] in 0..1.

    Random parameters come from the CPU `generator` so results do not depend on the device;
    `strength` scales every magnitude (0 turns augmentation off).
    """
    if strength <= 0:
        return x
    n, size = x.shape[0], x.shape[-1]
    x = _flips_and_rotations(x, torch.rand(n, generator=generator))
    x = _shift_scale_rotate(x, generator, strength, p=0.5)
    x = _colour(x, generator, strength, p=0.3)
    x = _blur_or_noise(x, generator, strength, p=0.1)
    x = _coarse_dropout(x, generator, max_holes=3, max_side=max(1, size // 6), p=0.25)
    return x.clamp_(0.0, 1.0)


def _flips_and_rotations(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """OneOf p=.75: hflip (w .25), vflip (w .25), rot90 or rot270 (w .5)."""
    ops = [(0.25, lambda t: t.flip(-1)), (0.4375, lambda t: t.flip(-2)), (0.625, lambda t: t.rot90(1, (-2, -1))),
           (0.8125, lambda t: t.rot90(3, (-2, -1)))]
    for index, (low, op) in enumerate(ops):
        high = ops[index + 1][0] if index + 1 < len(ops) else 1.0
        mask = ((u >= low) & (u < high)).to(x.device)
        if mask.any():
            x[mask] = op(x[mask])
    return x


def _shift_scale_rotate(x: torch.Tensor, generator: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """ShiftScaleRotate(shift .1, scale .2, rotate 30 deg), bilinear, black border."""
    picked = torch.rand(x.shape[0], generator=generator) < p
    count = int(picked.sum())
    if not count:
        return x
    angle = torch.deg2rad(_uniform(generator, count, -30.0, 30.0) * strength)
    scale = 1.0 + _uniform(generator, count, -0.2, 0.2) * strength
    shift = _uniform(generator, 2 * count, -0.1, 0.1).view(count, 2) * 2.0 * strength  # grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    mask = picked.to(x.device)
    chosen = x[mask]
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(chosen.shape), align_corners=False)
    x[mask] = F.grid_sample(chosen, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


def _colour(x: torch.Tensor, generator: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """OneOf p=.3: brightness/contrast, gamma, saturation jitter, greyscale (equal odds)."""
    n = x.shape[0]
    picked = torch.rand(n, generator=generator) < p
    which = torch.randint(0, 4, (n,), generator=generator)
    brightness = _uniform(generator, n, -0.35, 0.35) * strength
    contrast = 1.0 + _uniform(generator, n, -0.5, 0.5) * strength
    gamma = torch.exp(_uniform(generator, n, math.log(0.8), math.log(1.1)) * strength)
    saturation = 1.0 + _uniform(generator, n, -0.3, 0.3) * strength
    for option in range(4):
        rows = torch.nonzero(picked & (which == option)).flatten()
        if not len(rows):
            continue
        chosen = x[rows.to(x.device)]
        view = (len(rows), 1, 1, 1)
        grey = (0.299 * chosen[:, 0:1] + 0.587 * chosen[:, 1:2] + 0.114 * chosen[:, 2:3]).expand_as(chosen)
        if option == 0:
            mean = chosen.mean(dim=(1, 2, 3), keepdim=True)
            chosen = (chosen - mean) * contrast[rows].view(view).to(x) + mean + brightness[rows].view(view).to(x)
        elif option == 1:
            chosen = chosen.clamp(min=0).pow(gamma[rows].view(view).to(x))
        elif option == 2:
            chosen = grey + (chosen - grey) * saturation[rows].view(view).to(x)
        else:
            chosen = grey.contiguous()
        x[rows.to(x.device)] = chosen
    return x


def _blur_or_noise(x: torch.Tensor, generator: torch.Generator, strength: float, p: float) -> torch.Tensor:
    """OneOf p=.1: 3x3 Gaussian blur (w .9) or Gaussian noise (w .1, sigma 2/255)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    n = x.shape[0]
    picked = torch.rand(n, generator=generator) < p
    blur = torch.rand(n, generator=generator) < 0.9
    blurred = torch.nonzero(picked & blur).flatten().to(x.device)
    noisy = torch.nonzero(picked & ~blur).flatten()
    if len(blurred):
        x[blurred] = gaussian_blur(x[blurred], kernel_size=[3, 3])
    if len(noisy):
        noise = torch.randn((len(noisy), *x.shape[1:]), generator=generator) * (2.0 / 255.0) * strength
        x[noisy.to(x.device)] += noise.to(x)
    return x


def _coarse_dropout(x: torch.Tensor, generator: torch.Generator, max_holes: int, max_side: int,
                    p: float) -> torch.Tensor:
    """CoarseDropout(max 3 holes, max side S/6, fill 0), p=.25."""
    n, size = x.shape[0], x.shape[-1]
    picked = torch.rand(n, generator=generator) < p
    holes = torch.randint(1, max_holes + 1, (n,), generator=generator)
    sides = torch.randint(1, max_side + 1, (n, max_holes, 2), generator=generator)
    corners = torch.rand((n, max_holes, 2), generator=generator)
    for sample in torch.nonzero(picked).flatten().tolist():
        for hole in range(int(holes[sample])):
            h, w = (int(v) for v in sides[sample, hole])
            top = int(corners[sample, hole, 0] * (size - h + 1))
            left = int(corners[sample, hole, 1] * (size - w + 1))
            x[sample, :, top:top + h, left:left + w] = 0.0
    return x


def to_model_input(pixels: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [B,S,S,3] -> float [B,3,S,S] in 0..1 on the device (normalisation comes later)."""
    x = torch.from_numpy(pixels).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std

