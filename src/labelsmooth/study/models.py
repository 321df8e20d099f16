"""The study's models: an MLP for feature vectors and signals, a small CNN for images.

A binary problem gets a single output logit (trained with binary cross-entropy), a K-class problem K
logits; that is what claim (4) compares.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["build_model", "cnn", "mlp"]


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


def cnn(in_channels: int, out_features: int, widths: Sequence[int] = (32, 64, 128)) -> nn.Module:
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


def build_model(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256)) -> nn.Module:
    """The model for one dataset: CNN for ``(C, H, W)`` inputs, MLP otherwise.

    Args:
        input_shape: shape of one sample (without the batch axis).
        num_classes: K; a binary problem (K = 2) gets a single logit.
        hidden: MLP hidden widths.

    Returns:
        The untrained model (initialised from torch's global generator: seed it first).
    """
    out = 1 if num_classes == 2 else num_classes
    if len(input_shape) == 3:
        return cnn(input_shape[0], out)
    size = 1
    for s in input_shape:
        size *= s
    return mlp(size, out, hidden)
