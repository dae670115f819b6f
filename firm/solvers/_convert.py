"""Accept numpy arrays or torch tensors and hand back the caller's type."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

ArrayT = TypeVar("ArrayT", npt.NDArray[np.floating], torch.Tensor)


def to_numpy(x: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float64]:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def like(result: npt.NDArray[np.float64], reference: object) -> npt.NDArray[np.float64] | torch.Tensor:
    """Return `result` as a tensor on the reference's device and dtype if the reference is one."""
    if isinstance(reference, torch.Tensor):
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.as_tensor(result, dtype=dtype, device=reference.device)
    return result


def check_gram(gram: npt.NDArray[np.float64]) -> None:
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram must be a non-empty square [M, M] matrix, got shape {gram.shape}")
    if not np.all(np.isfinite(gram)):
        raise ValueError("gram contains NaN or Inf: a per-objective gradient was not finite")
