"""Online label smoothing: soft labels learned from the model's own correct predictions.

Zhang et al. (2021) replace the fixed uniform smoothing distribution by one per class, re-estimated
every epoch: the soft label of class k is the mean predicted distribution of the training samples of
class k that the model classified correctly during the previous epoch. The loss mixes the hard label
and the soft one::

    loss = alpha * CE(x, y) + (1 - alpha) * CE(x, S[y])

Cross-entropy is linear in its target, so this is one cross-entropy against the target
``alpha * onehot(y) + (1 - alpha) * S[y]``, computed here in a single pass by the fused backends.

References:
    Zhang et al., "Delving Deep into Label Smoothing", IEEE Transactions on Image Processing, 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labelsmooth import _validate as V
from labelsmooth import functional as LF
from labelsmooth.targets import smooth_labels


class OnlineLabelSmoothing(nn.Module):
    """Online label smoothing (OLS) as a loss module with per-class soft labels.

    ``soft_labels`` (K x K, each row sums to 1) starts as the uniformly smoothed one-hot rows
    ``(1 - eps) * I + eps / K``. In training mode every forward call adds the softmax of each correctly
    classified sample to its class's accumulator; :meth:`next_epoch` (call it once per epoch, after the
    epoch's last step) replaces each class's row by the mean of its accumulated predictions (a class with
    no correct prediction keeps its row) and resets the accumulators. In eval mode nothing accumulates.

    Args:
        num_classes: K.
        alpha: weight of the hard-label term, in [0, 1] (the paper's default 0.5).
        label_smoothing: eps of the initial soft labels, in [0, 1].
        ignore_index: target value whose rows contribute neither loss nor statistics.
        reduction: ``"mean"`` (over the rows that are not ignored), ``"sum"`` or ``"none"``.
        backend: passed to :func:`labelsmooth.cross_entropy`.

    Shape:
        input (N, K) or (N, K, d1, ..., dk) logits; target (N) or (N, d1, ..., dk) class indices.

    State:
        ``soft_labels``, ``correct_prob_sum`` (K x K) and ``correct_count`` (K,) are buffers: they move
        with ``.to(device)`` and round-trip through ``state_dict``, so a resumed run continues exactly.
        Under ``torch.distributed`` (DDP), :meth:`next_epoch` all-reduces the accumulators first, so
        every rank gets the same soft labels.

    Example:
        >>> import torch, labelsmooth as ls
        >>> ols = ls.OnlineLabelSmoothing(num_classes=3, alpha=0.5, label_smoothing=0.1)
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0]], requires_grad=True)
        >>> loss = ols(logits, torch.tensor([0, 1]))
        >>> loss.backward()
        >>> ols.next_epoch()                       # classes 0 and 1 were predicted correctly
        >>> [round(float(v), 3) for v in ols.soft_labels[0]]
        [0.965, 0.018, 0.018]
        >>> [round(float(v), 3) for v in ols.soft_labels[2]]   # no correct prediction: unchanged
        [0.033, 0.033, 0.933]

    References:
        Zhang et al., "Delving Deep into Label Smoothing", IEEE Transactions on Image Processing, 2021.
    """

    soft_labels: Tensor
    correct_prob_sum: Tensor
    correct_count: Tensor

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        label_smoothing: float = 0.1,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_classes = V.check_num_classes(num_classes)
        self.alpha = V.check_unit_interval(alpha, "alpha")
        self.label_smoothing = V.check_label_smoothing(label_smoothing)
        self.ignore_index = V.check_index(ignore_index, "ignore_index")
        self.reduction = V.check_reduction(reduction)
        self.backend = LF.check_backend(backend)
        k = self.num_classes
        self.register_buffer(
            "soft_labels", smooth_labels(torch.arange(k), k, self.label_smoothing, dtype=torch.float32)
        )
        self.register_buffer("correct_prob_sum", torch.zeros(k, k, dtype=torch.float32))
        self.register_buffer("correct_count", torch.zeros(k, dtype=torch.float32))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        V.check_tensor(input, "input")
        V.check_tensor(target, "target")
        V.check_floating(input, "input")
        V.check_integer(target, "target")
        if input.dim() < 2 or input.shape[1] != self.num_classes:
            raise V.ArgumentError(
                f"input must have shape (N, {self.num_classes}) or (N, {self.num_classes}, d1, ...), "
                f"got {tuple(input.shape)}"
            )
        batch_shape = (input.shape[0], *input.shape[2:])
        if tuple(target.shape) != batch_shape:
            raise V.ArgumentError(
                f"target must have shape {batch_shape} for input of shape {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        V.check_class_indices(target, self.num_classes, self.ignore_index)
        if self.soft_labels.device != input.device:
            raise V.ArgumentError(
                f"the module's soft labels are on {self.soft_labels.device} but input is on "
                f"{input.device}: move the module with .to(device)"
            )
        x2 = input.movedim(1, -1).reshape(-1, self.num_classes)
        t = target.reshape(-1).long()
        keep = t != self.ignore_index
        safe = torch.where(keep, t, torch.zeros_like(t))
        # One target for both terms: alpha * onehot(y) + (1 - alpha) * S[y]; zero rows for ignored ones,
        # which gives them zero loss and zero gradient.
        q = self.soft_labels[safe] * (1.0 - self.alpha)
        q.scatter_add_(1, safe.unsqueeze(1), torch.full((q.shape[0], 1), self.alpha, dtype=q.dtype, device=q.device))
        q = q * keep.unsqueeze(1).to(q.dtype)
        if x2.dtype == torch.float64:
            q = q.double()
        rows = LF.cross_entropy(x2, q, reduction="none", backend=self.backend)
        if self.training:
            self._accumulate(x2.detach(), safe, keep)
        if self.reduction == "none":
            return rows.reshape(batch_shape)
        if self.reduction == "sum":
            return rows.sum()
        return rows.sum() / keep.sum().to(rows.dtype)

    @torch.no_grad()
    def _accumulate(self, logits: Tensor, target: Tensor, keep: Tensor) -> None:
        # Masks instead of boolean indexing: nothing here reads a device value on the host.
        probs = torch.softmax(logits.float(), dim=1)
        correct = (keep & (probs.argmax(dim=1) == target)).to(torch.float32)
        self.correct_prob_sum.index_add_(0, target, probs * correct.unsqueeze(1))
        self.correct_count.index_add_(0, target, correct)

    @torch.no_grad()
    def next_epoch(self) -> None:
        """End an epoch: each class's soft label becomes the mean of its correct predictions since the
        last call (classes without one keep theirs), and the accumulators restart from zero."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.correct_prob_sum)
            dist.all_reduce(self.correct_count)
        seen = self.correct_count > 0
        mean = self.correct_prob_sum / self.correct_count.clamp_min(1.0).unsqueeze(1)
        self.soft_labels.copy_(torch.where(seen.unsqueeze(1), mean, self.soft_labels))
        self.correct_prob_sum.zero_()
        self.correct_count.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
        )
