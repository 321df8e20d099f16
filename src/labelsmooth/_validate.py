"""Argument and tensor checks shared by every entry point.

One place, one wording: the functional API and the module API call the same checks, so an error
reads the same from either door. Checks that need the tensor's *values* (a target out of range)
are only run on CPU, where reading values costs no host-device synchronisation; on CUDA the
kernels use a device-side assertion instead.
"""

from __future__ import annotations

import math
import numbers

import torch

REDUCTIONS = ("none", "mean", "sum")


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value. A ValueError, and also a RuntimeError because torch raises RuntimeError for
    the same mistakes (label_smoothing 1.2, a weight of the wrong length, a target of the wrong shape),
    so that ``except RuntimeError`` written for torch catches ours too."""


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument type (a TypeError, and a RuntimeError as torch's are; see :class:`ArgumentError`)."""


def check_unit_interval(value: object, name: str) -> float:
    """Return ``value`` as a float, or raise naming ``name`` if it is not a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number in [0, 1], got {value!r} of type {type(value).__name__}")
    result = float(value)
    if math.isnan(result) or not 0.0 <= result <= 1.0:
        raise ArgumentError(f"{name} must be in [0, 1], got {result!r}")
    return result


def check_label_smoothing(
    label_smoothing: object, name: str = "label_smoothing", *, allow_negative: bool = False
) -> float:
    """Return ``label_smoothing`` as a float, or raise if it is not a number in [0, 1] (any finite
    number <= 1 with ``allow_negative``). A one-element real tensor is read as its number, as torch's
    ``F.cross_entropy`` does (on a GPU that reads the device: pass a Python float to avoid it)."""
    if isinstance(label_smoothing, torch.Tensor):
        t = label_smoothing
        if t.numel() != 1 or t.is_complex() or t.dtype == torch.bool:
            raise ArgumentTypeError(
                f"{name} must be a real number or a one-element real tensor, got a {t.dtype} tensor of shape "
                f"{tuple(t.shape)}"
            )
        label_smoothing = t.item()
    if not allow_negative:
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
            raise ArgumentTypeError(
                f"{name} must be a real number in [0, 1], got {label_smoothing!r} of type "
                f"{type(label_smoothing).__name__}"
            )
        value = float(label_smoothing)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            # torch's own wording first, so that a message matched for torch matches ours too.
            hint = (
                "negative label smoothing needs allow_negative=True"
                if value < 0
                else "allow_negative=True also admits any finite value <= 1, none above 1"
            )
            raise ArgumentError(f"{name} must be between 0.0 and 1.0. Got: {value!r} ({hint})")
        return value
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise ArgumentTypeError(
            f"{name} must be a real number <= 1, got {label_smoothing!r} of type {type(label_smoothing).__name__}"
        )
    result = float(label_smoothing)
    if not math.isfinite(result) or result > 1.0:
        raise ArgumentError(f"{name} must be a finite number <= 1, got {result!r}")
    return result


def check_prior(
    prior: object, num_classes: int | None, device: torch.device | None, name: str = "smoothing_prior"
) -> torch.Tensor | None:
    """Return ``prior`` as a (C,) floating tensor on ``device``, or None; raise if it is not a
    probability vector over the ``num_classes`` classes (None: any length, any device). Its values are
    checked on the host only for CPU tensors (elsewhere with a device-side assertion: no
    synchronisation)."""
    if prior is None:
        return None
    shape = "(C,)" if num_classes is None else f"({num_classes},)"
    if not isinstance(prior, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(prior).__name__}")
    if not prior.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating-point tensor (probabilities), got {prior.dtype}")
    if num_classes is None:
        if prior.dim() != 1 or prior.numel() == 0:
            raise ArgumentError(
                f"{name} must be a non-empty 1-D tensor (one probability per class), got shape {tuple(prior.shape)}"
            )
    elif prior.shape != (num_classes,):
        raise ArgumentError(
            f"{name} must have shape ({num_classes},) (one probability per class), got {tuple(prior.shape)}"
        )
    if device is not None and prior.device != device:
        raise ArgumentError(f"{name} is on {prior.device} but input is on {device}")
    if prior.requires_grad:
        prior = prior.detach()
    p64 = prior.to(torch.float64)
    total = p64.sum()
    # A float32 vector of 10^6 probabilities sums to 1 only within ~1e-4 after rounding.
    tol = 1e-4 if prior.dtype != torch.float64 else 1e-9
    if prior.device.type == "cpu":
        if not torch.isfinite(p64).all() or (p64 < 0).any():
            raise ArgumentError(f"{name} must hold finite non-negative probabilities, got min {p64.min().item()!r}")
        if abs(total.item() - 1.0) > tol:
            raise ArgumentError(f"{name} must sum to 1, got {total.item()!r}")
    else:
        torch._assert_async(
            ((p64 >= 0).all() & ((total - 1.0).abs() <= tol)),
            f"{name} must hold non-negative probabilities that sum to 1",
        )
    return prior


def check_nonnegative_float(value: object, name: str) -> float:
    """Return ``value`` as a finite float >= 0, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_softcap(softcap: object) -> float | None:
    """Return ``softcap`` as a positive float, or None."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise ArgumentTypeError(f"softcap must be None or a positive number, got {softcap!r}")
    value = float(softcap)
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"softcap must be None or a finite number > 0, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_index(value: object, name: str) -> int:
    """An integer option such as ``ignore_index`` (numpy integers welcome, bools not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_num_classes(num_classes: object, minimum: int = 1, reason: str = "") -> int:
    """Return ``num_classes`` as an int >= ``minimum``; ``reason`` explains the bound in the error."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ArgumentTypeError(f"num_classes must be an integer >= {minimum}, got {num_classes!r}")
    if num_classes < minimum:
        raise ArgumentError(f"num_classes must be >= {minimum}{reason}, got {num_classes!r}")
    return int(num_classes)


def check_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(tensor: torch.Tensor, name: str) -> None:
    if not tensor.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_integer(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ArgumentTypeError(f"{name} must be an integer tensor of class indices, got dtype {tensor.dtype}")


def check_weight(weight: torch.Tensor | None, num_classes: int, name: str = "weight") -> None:
    if weight is None:
        return
    check_tensor(weight, name)
    check_floating(weight, name)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ArgumentError(
            f"{name} must be a 1-D tensor with one entry per class ({num_classes}), got shape {tuple(weight.shape)}"
        )


def check_class_indices(target: torch.Tensor, num_classes: int, ignore_index: int | None, name: str = "target") -> None:
    """Raise IndexError if a class index (other than ``ignore_index``) lies outside [0, num_classes).

    On CPU the values are read and a clear IndexError raised. Elsewhere reading them would synchronise
    the host, so a device-side assertion is queued instead (it fires when the device reaches it).
    """
    if target.numel() == 0:
        return
    if target.device.type != "cpu":
        ok = (target >= 0) & (target < num_classes)
        if ignore_index is not None:
            ok |= target == ignore_index
        torch._assert_async(ok.all(), f"{name} contains a class index outside [0, {num_classes - 1}]")
        return
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        raise IndexError(
            f"{name} contains class index {value}, outside [0, {num_classes - 1}]"
            + (f" (and not ignore_index={ignore_index})" if ignore_index is not None else "")
        )
