"""kv_write reference: the cache with rows [pos, pos + T) replaced by x (in the cache's dtype)."""
from __future__ import annotations

import numpy as np


def kv_write_reference(cache: np.ndarray, x: np.ndarray, pos: int) -> np.ndarray:
    out = np.array(cache, copy=True)
    x = np.asarray(x, np.float32)
    out[pos: pos + x.shape[0]] = x.astype(out.dtype)  # float16: round to nearest even
    return out
