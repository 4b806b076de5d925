"""The fixed permutation sets of jigsaw puzzles (Noroozi and Favaro 2016): orders of the nine
tiles chosen greedily from all 9! for maximal Hamming distance, seeded, and cached on disk with a
checksum because large sets take seconds."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import sys
from pathlib import Path

import torch

from ..files import cache_dir

TILES = 9


def all_orders() -> torch.Tensor:
    """All 9! orders of the nine tiles (362,880 x 9, int8)."""
    return torch.tensor(list(itertools.permutations(range(TILES))), dtype=torch.int8)


# Bump when the greedy choice below changes, so sets cached by an older version are not reused.
PERMUTATION_ALGORITHM = 1


def _cache_path(count: int, seed: int) -> Path:
    return cache_dir("jigsaw") / f"hamming-v{PERMUTATION_ALGORITHM}-{count}-seed{seed}.pt"


def _digest(perms: torch.Tensor) -> str:
    return hashlib.sha256(perms.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _start(seed: int, n: int) -> tuple[torch.Tensor, int]:
    """The seeded tie-breakers over all `n` orders and the first order's index."""
    gen = torch.Generator().manual_seed(seed)
    tie = torch.rand(n, generator=gen, dtype=torch.float64)
    return tie, int(torch.randint(n, (1,), generator=gen))


def _cache_problem(saved: object, count: int, seed: int, orders: torch.Tensor) -> str:
    """Why a cached permutation set cannot be used for (count, seed), or '' when it can."""
    if not isinstance(saved, dict) or not isinstance(saved.get("perms"), torch.Tensor):
        return "it is not an sslcli permutation set"
    key = {k: saved.get(k) for k in ("algorithm", "count", "seed")}
    if key != {"algorithm": PERMUTATION_ALGORITHM, "count": count, "seed": seed}:
        return f"it was made for {key}"
    perms = saved["perms"]
    if perms.shape != (count, TILES) or perms.dtype != torch.int64:
        return f"it holds a {tuple(perms.shape)} {perms.dtype} tensor, not ({count}, {TILES}) int64"
    if saved.get("sha256") != _digest(perms):
        return "its contents do not match their checksum"
    if not torch.equal(perms.sort(1).values, torch.arange(TILES).expand(count, TILES)) or len(perms.unique(dim=0)) != count:
        return "its rows are not distinct permutations of the nine tiles"
    if not torch.equal(perms[0], orders[_start(seed, len(orders))[1]].long()):
        return "its first permutation is not the seeded one"
    return ""


def hamming_permutations(count: int, seed: int = 0, cache: bool = True) -> torch.Tensor:
    """`count` permutations of the nine tiles (count x 9, int64), chosen greedily from all 9!:
    each next one is the order farthest from those already chosen: largest minimum Hamming
    distance, ties broken by the largest total distance, then by a seeded random draw. The first
    is a seeded random order. The same (count, seed) always gives the same set; it is cached on
    disk because large sets take seconds, keyed by count, seed and algorithm version, with a
    checksum; a cache file that does not check out is recomputed with a warning."""
    if not 2 <= count <= math.factorial(TILES):
        raise ValueError(f"count must lie in [2, 9!], got {count}")
    orders = all_orders()
    path = _cache_path(count, seed)
    if cache and path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            problem = _cache_problem(saved, count, seed, orders)
        except Exception as exc:  # torch raises many types for damaged files
            problem = f"it cannot be read ({type(exc).__name__})"
        if not problem:
            return saved["perms"]
        print(f"warning: jigsaw permutation cache '{path}' is not usable ({problem}); recomputing it", file=sys.stderr)
    tie, pick = _start(seed, len(orders))
    min_dist = torch.full((len(orders),), TILES + 1, dtype=torch.int64)
    total = torch.zeros(len(orders), dtype=torch.int64)
    chosen = []
    for _ in range(count):
        chosen.append(pick)
        dist = (orders != orders[pick]).sum(1)
        min_dist = torch.minimum(min_dist, dist)
        total += dist
        score = min_dist.double() * 1e9 + total.double() + tie  # lexicographic: min, then total, then tie
        score[chosen] = -1.0
        pick = int(score.argmax())
    result = orders[chosen].long()
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            torch.save({"algorithm": PERMUTATION_ALGORITHM, "count": count, "seed": seed, "perms": result,
                        "sha256": _digest(result)}, tmp)
            os.replace(tmp, path)
        except OSError:  # a read-only home only costs the recomputation
            pass
    return result


def min_hamming_distance(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two rows of `perms`."""
    dist = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    dist.fill_diagonal_(TILES + 1)
    return int(dist.min())
