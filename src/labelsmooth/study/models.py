"""The study's models: an MLP for feature vectors and signals, a small CNN for images.

A binary problem gets a single output logit (trained with binary cross-entropy), a K-class problem K
logits; that is what claim (4) compares. Natural-image datasets (CIFAR-10) put :class:`CropFlip`, the
standard random-crop-and-flip augmentation, in front of the CNN: it acts in training mode only, so
evaluation sees the images unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CropFlip", "build_model", "cnn", "mlp"]


class CropFlip(nn.Module):
    """Random crop with zero padding and random horizontal flip, per image, in training mode only.

    Each image of an ``(N, C, H, W)`` batch is zero-padded by ``padding`` pixels on every side, an
    ``H x W`` window is cut at a uniformly random offset, and the window is mirrored left-right with
    probability ``flip``. In evaluation mode (``model.eval()``) the input is returned unchanged. The
    random numbers come from torch's global generator on the input's device, so seeding torch seeds
    the augmentation. The whole batch is transformed with one gather (no Python loop over images).

    Args:
        padding: pixels of zero padding on each side (4 for 32x32 CIFAR images), >= 0.
        flip: probability of a horizontal flip, in [0, 1].

    Raises:
        ValueError: ``padding`` negative or ``flip`` outside [0, 1].
        TypeError: ``padding`` not an int.

    Example:
        >>> import torch
        >>> aug = CropFlip(padding=4)
        >>> x = torch.rand(8, 3, 32, 32)
        >>> aug.train()(x).shape, torch.equal(aug.eval()(x), x)
        (torch.Size([8, 3, 32, 32]), True)

    References:
        He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (section 4.2:
        4-pixel padding, random 32x32 crop, horizontal flip on CIFAR-10).
    """

    def __init__(self, padding: int = 4, flip: float = 0.5) -> None:
        super().__init__()
        if isinstance(padding, bool) or not isinstance(padding, int):
            raise TypeError(f"padding must be an int, got {type(padding).__name__} {padding!r}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if not 0.0 <= float(flip) <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip}")
        self.padding = padding
        self.flip = float(flip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.dim() != 4:
            raise ValueError(f"CropFlip expects (N, C, H, W) images, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p)) if p else x
        dev = x.device
        top = torch.randint(0, 2 * p + 1, (n, 1), device=dev)
        left = torch.randint(0, 2 * p + 1, (n, 1), device=dev)
        flipped = torch.rand(n, 1, device=dev) < self.flip
        cols = torch.arange(w, device=dev)
        # A flipped image reads its window's columns right to left: flip folded into the gather.
        cols = left + torch.where(flipped, (w - 1) - cols, cols)  # (N, W)
        rows = top + torch.arange(h, device=dev)  # (N, H)
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip:g}"


def mlp(in_features: int, out_features: int, hidden: Sequence[int] = (256, 256)) -> nn.Module:
    """A ReLU multilayer perceptron.

    Args:
        in_features: input dimension D (inputs of any shape are flattened to D).
        out_features: number of logits (1 for binary, K otherwise).
        hidden: widths of the hidden layers.

    Returns:
        ``nn.Sequential``: Flatten, then Linear+ReLU per hidden width, then a Linear head.

    Example:
        >>> import torch
        >>> mlp(40, 10)(torch.zeros(3, 40)).shape
        torch.Size([3, 10])
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def cnn(in_channels: int, out_features: int, widths: Sequence[int] = (32, 64, 128)) -> nn.Sequential:
    """A small CNN: 3x3 conv + ReLU blocks, 2x2 max-pooling between them, global average pooling.

    ``ceil_mode`` pooling keeps a 1x1 map at 1x1, so any image size >= 1x1 works.

    Args:
        in_channels: C of the ``(N, C, H, W)`` input.
        out_features: number of logits.
        widths: channels of the conv blocks.

    Returns:
        ``nn.Sequential``.

    Example:
        >>> import torch
        >>> cnn(3, 10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(channels, w, 3, padding=1), nn.ReLU()]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        channels = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, out_features)]
    return nn.Sequential(*layers)


def build_model(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256), *, augment: bool = False
) -> nn.Module:
    """The model for one dataset: CNN for ``(C, H, W)`` inputs, MLP otherwise.

    Args:
        input_shape: shape of one sample (without the batch axis).
        num_classes: K; a binary problem (K = 2) gets a single logit.
        hidden: MLP hidden widths.
        augment: put :class:`CropFlip` (padding of 1/8 of the image side, 4 for 32x32) in front of
            the CNN; only for image inputs.

    Returns:
        The untrained model (initialised from torch's global generator: seed it first).

    Raises:
        ValueError: ``augment`` for inputs that are not ``(C, H, W)`` images.

    Example:
        >>> build_model((3, 32, 32), 10, augment=True)[0]
        CropFlip(padding=4, flip=0.5)
    """
    out = 1 if num_classes == 2 else num_classes
    if augment and len(input_shape) != 3:
        raise ValueError(f"augment=True needs (C, H, W) image inputs, got input_shape {tuple(input_shape)}")
    if len(input_shape) == 3:
        net = cnn(input_shape[0], out)
        if augment:
            return nn.Sequential(CropFlip(padding=max(1, min(input_shape[1:]) // 8)), *net)
        return net
    size = 1
    for s in input_shape:
        size *= s
    return mlp(size, out, hidden)
