"""Per-dimension mean and std of features over frames: the one normalisation statistic.

Stage 1 writes motion_stats.npz with it and training normalises mel and motion with it.
"""
import numpy as np


def feature_moments(arrays, std_floor=0.0):
    """arrays: an iterable of (frames, dims) arrays (numpy, or CPU tensors), consumed one at a time
    so a generator over files keeps memory flat. Sums in float64; std is the population std
    (sqrt(E[x^2] - mean^2), clamped at 0 against round-off) floored at std_floor.
    -> (mean (dims,) float32, std (dims,) float32, count: frames seen). No frames: mean 0, std
    std_floor; dims comes from the first array, so at least one (possibly empty) array is needed."""
    n, total, total_sq = 0, None, None
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)  # (frames, dims)
        if total is None:
            total, total_sq = np.zeros(a.shape[-1]), np.zeros(a.shape[-1])
        n, total, total_sq = n + len(a), total + a.sum(0), total_sq + (a * a).sum(0)
    if total is None:
        raise ValueError("feature_moments: no arrays given (need at least one to know the dimensions)")
    mean = total / max(n, 1)
    std = np.maximum(np.sqrt(np.maximum(total_sq / max(n, 1) - mean ** 2, 0.0)), std_floor)
    return mean.astype(np.float32), std.astype(np.float32), n
