"""Test-time augmentation: invertible transforms of the mixture whose separations are mapped back and averaged.

Shape legend: mixtures ``(..., C, T)``, estimates ``(..., S, C, T)`` (channels are dim -2 in both).

``tta=[flip_channels, flip_sign]`` runs the plain pass plus one pass per transform (the mixture transformed,
separated, the estimates transformed back) and averages the ``1 + len(tta)`` results, as MSST's ``use_tta`` does
(there with both transforms). ``flip_channels`` swaps left and right (reverses the channel order; skipped for mono),
``flip_sign`` negates the polarity. A model equivariant to a transform gives exactly the plain result; for a model
linear in its input ``flip_sign`` is exact too. Used by :func:`mss.inference.overlap_add.apply_model` (``tta=``),
hence by ``mss.separate tta=[...]`` and ``mss.evaluate evaluation.tta=[...]``, for any model or bag, together with
the shift trick (each pass draws its own shifts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["TTA_TRANSFORMS", "check_tta"]

Transform = Callable[[torch.Tensor], torch.Tensor]

# name -> (forward on the mixture, inverse on the estimates); both are involutions on the channel / sign axis
TTA_TRANSFORMS: dict[str, tuple[Transform, Transform]] = {
    "flip_channels": (lambda mix: mix.flip(-2), lambda est: est.flip(-2)),
    "flip_sign": (lambda mix: -mix, lambda est: -est),
}


def check_tta(tta: Sequence[str] | str | None) -> list[str]:
    """The TTA transform names of ``tta`` (a list, or one name), with a clear error for unknown or repeated ones."""
    if tta is None:
        return []
    names = [tta] if isinstance(tta, str) else [str(t) for t in tta]
    for name in names:
        if name not in TTA_TRANSFORMS:
            raise ValueError(f"tta: unknown transform {name!r}; expected a list of {', '.join(TTA_TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"tta={names}: each transform once")
    return names
