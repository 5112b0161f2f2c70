"""Minimum-cost matching of a few rows to a few columns (tracks to detections), exact and without scipy."""

from __future__ import annotations

import numpy as np

# Leaving a row or a column unmatched costs more than any admissible pair (tracking's costs stay under ~2), so
# as many pairs as possible are made first; a forbidden (infinite) pair is never chosen.
UNMATCHED_COST = 1e4
FORBIDDEN_COST = 1e9


def min_cost_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) of a minimum-cost partial assignment of cost [n, m] (inf = forbidden): as many pairs as
    possible, then the least total. Solved exactly per connected group of admissible pairs (a crowd splits into
    small groups), each augmented to a square matrix in which a row or column may stay unmatched at
    `UNMATCHED_COST`, by the Hungarian method."""
    admissible = np.isfinite(cost)
    pairs = []
    for rows, cols in _groups(admissible):
        if len(rows) == len(cols) == 1:  # the common case: one track, one detection near it
            pairs.append((rows[0], cols[0]))
            continue
        sub = cost[np.ix_(rows, cols)]
        n, m = sub.shape
        square = np.full((n + m, n + m), FORBIDDEN_COST)
        square[:n, :m] = np.where(np.isfinite(sub), sub, FORBIDDEN_COST)
        square[np.arange(n), m + np.arange(n)] = UNMATCHED_COST
        square[n + np.arange(m), np.arange(m)] = UNMATCHED_COST
        square[n:, m:] = 0.0
        col_of_row = _hungarian(square)
        pairs += [(rows[i], cols[j]) for i, j in enumerate(col_of_row[:n]) if j < m and np.isfinite(sub[i, j])]
    return sorted(pairs)


def _groups(admissible: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Connected components (rows, cols) of the bipartite graph of admissible [n, m] pairs; lone rows and
    columns are left out (they stay unmatched)."""
    unvisited = admissible.any(axis=1)
    groups = []
    for start in np.flatnonzero(unvisited):
        if not unvisited[start]:
            continue
        rows, cols = np.zeros(len(admissible), bool), np.zeros(admissible.shape[1], bool)
        rows[start] = True
        while True:
            cols_now = admissible[rows].any(axis=0)
            rows_now = admissible[:, cols_now].any(axis=1)
            if (rows_now == rows).all() and (cols_now == cols).all():
                break
            rows, cols = rows_now | rows, cols_now
        unvisited &= ~rows
        groups.append((np.flatnonzero(rows).tolist(), np.flatnonzero(cols).tolist()))
    return groups


def _hungarian(cost: np.ndarray) -> np.ndarray:
    """Column assigned to each row in a minimum-cost perfect matching of a square finite cost matrix [N, N]
    (Kuhn-Munkres with potentials, O(N^3); the inner scan over columns is vectorised)."""
    size = len(cost)
    u, v = np.zeros(size + 1), np.zeros(size + 1)
    row_of_col = np.zeros(size + 1, dtype=np.int64)  # 1-based rows; column 0 is the virtual start
    way = np.zeros(size + 1, dtype=np.int64)
    for row in range(1, size + 1):
        row_of_col[0], col = row, 0
        min_slack = np.full(size + 1, np.inf)
        used = np.zeros(size + 1, dtype=bool)
        while row_of_col[col] != 0:
            used[col] = True
            current = row_of_col[col]
            slack = cost[current - 1] - u[current] - v[1:]
            better = ~used[1:] & (slack < min_slack[1:])
            min_slack[1:][better] = slack[better]
            way[1:][better] = col
            free_slack = np.where(used[1:], np.inf, min_slack[1:])
            next_col = int(np.argmin(free_slack)) + 1
            delta = free_slack[next_col - 1]
            u[row_of_col[used]] += delta
            v[used] -= delta
            min_slack[1:][~used[1:]] -= delta
            col = next_col
        while col:
            previous = way[col]
            row_of_col[col] = row_of_col[previous]
            col = previous
    col_of_row = np.empty(size, dtype=np.int64)
    col_of_row[row_of_col[1:] - 1] = np.arange(size)
    return col_of_row
