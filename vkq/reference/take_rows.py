"""take_rows reference: rows [index, index + rows) of a table."""
from __future__ import annotations

import numpy as np


def take_rows_reference(table: np.ndarray, index: int, rows: int = 1) -> np.ndarray:
    return np.asarray(table, np.float32)[index: index + rows].copy()
