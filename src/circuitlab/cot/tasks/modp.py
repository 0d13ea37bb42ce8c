"""Arithmetic in the field Z_p, shared by the arithmetic and linear-equation tasks."""

from __future__ import annotations

import numpy as np

from circuitlab.core.errors import CircuitlabError


def is_prime(p: int) -> bool:
    if p < 2:
        return False
    return all(p % d for d in range(2, int(p**0.5) + 1))


MAX_MODULUS = 1000


def check_modulus(p: int) -> None:
    """Z_p is a field only for prime p; division (and unique solutions) need that. Bounded
    because the arithmetic generator's tables hold every (a, op, b) per value, O(p^2) in
    time and memory: p = 997 takes seconds, p = 1000003 would ask for ~100 TB."""
    if p > MAX_MODULUS:
        raise CircuitlabError(
            f"--p {p} is above {MAX_MODULUS}: the generator's tables grow as p^2 "
            "(the paper uses 11)"
        )
    if not is_prime(p):
        raise CircuitlabError(f"--p {p} is not prime: the tasks work in the field Z_p (try 11)")


def inverse(a: int, p: int) -> int:
    """Multiplicative inverse of a (nonzero) in Z_p."""
    if a % p == 0:
        raise ZeroDivisionError(f"0 has no inverse mod {p}")
    return pow(a, p - 2, p)


def inverse_table(p: int) -> np.ndarray:
    """inv[a] = a^-1 mod p for a = 1..p-1; inv[0] = 0 (never used as a divisor)."""
    inv = np.zeros(p, dtype=np.int64)
    for a in range(1, p):
        inv[a] = inverse(a, p)
    return inv
