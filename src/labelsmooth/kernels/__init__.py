"""Fused label-smoothed cross-entropy kernels.

Every kernel here has the same contract, on a 2-D problem::

    loss_rows = kernel(logits, target, weight, ignore_index, label_smoothing, z_loss, softcap, grad,
                       *, grad_scale=None)

* ``logits``: (M, C) floating tensor with contiguous rows (stride(1) == 1).
* ``target``: (M,) int64 class indices, or (M, C) floating class probabilities.
* ``weight``: (C,) float32/float64 class weights, or None.
* ``ignore_index``: rows whose index target equals it give loss 0 and gradient 0.
* ``label_smoothing`` eps, ``z_loss`` z >= 0, ``softcap`` s > 0 or None: as in ``labelsmooth.reference``.
* ``grad``: None (no gradient wanted) or an (M, C) tensor of the logits' dtype, possibly the logits
  themselves (``inplace``): the kernel writes d loss_rows[n] / d logits[n, :] into it, unscaled by
  any grad_output (the caller's autograd glue multiplies by grad_output in backward).
* ``grad_scale``: None or a 0-d tensor (on the logits' device, compute dtype) that multiplies the
  written gradient; "mean" passes 1/denominator here so that backward often has nothing left to do.
  It is a tensor, not a float, so that computing it needs no host-device synchronisation.
* ``grad_output`` (Triton's ``fused_ce`` only): None, a one-element or an (M,) tensor multiplying
  each row's written gradient, read on the device (the fused linear loss's "none" backward).
* ``logit_scale``, ``dscale``, ``aux`` (and ``grad_scale`` as an (M,) per-row factor): the options of
  the language-model losses, each free when off; see ``labelsmooth.kernels.chunked.fused_ce``.
* returns ``loss_rows``: (M,) float32 (float64 for float64 logits), the row losses of
  ``labelsmooth.reference.ce_rows``.

Kernels know nothing of argument parsing or shapes beyond this; ``labelsmooth.functional`` does that.
"""
