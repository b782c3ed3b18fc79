"""The (W, A, G) bitwidth triple that names every DoReFa configuration.

``Bits(1, 2, 6)`` means 1-bit weights, 2-bit activations, 6-bit gradients; 32 means "not
quantized" for that part (docs/method.md, section 1). ``Bits.parse`` is also the argparse type
of ``--bits``: its errors are BitsError, a ValueError that argparse prints as it is.
"""

from __future__ import annotations

import argparse
import operator
import re
from dataclasses import dataclass

FLOAT = 32
VALID_BITS = tuple(range(1, 9)) + (FLOAT,)


class BitsError(ValueError, argparse.ArgumentTypeError):
    """A bitwidth spec that is not W,A,G with each in 1..8 or 32 (one-line message)."""


def check_bits(value: object, name: str = "bits") -> int:
    """Return ``value`` as an int if it is a valid bitwidth (1..8 or 32), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in VALID_BITS:
        raise ValueError(f"{name} must be an int in 1..8 or 32, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Bits:
    """Bitwidths of weights (w), activations (a) and gradients (g); 32 = float."""

    w: int = 32  # weight bits: 1 = sign * mean|W|, 2..8 = tanh-normalised uniform levels
    a: int = 32  # activation bits: clip to [0,1] then k-bit uniform; 32 = ReLU
    g: int = 32  # gradient bits: stochastic rounding with a per-sample scale; 32 = exact

    def __post_init__(self) -> None:
        check_bits(self.w, "weight bits (w)")
        check_bits(self.a, "activation bits (a)")
        check_bits(self.g, "gradient bits (g)")

    @classmethod
    def parse(cls, spec: str | Bits | tuple | list) -> Bits:
        """Parse ``"1,2,6"`` (or ``"w1a2g6"``, a tuple, or a Bits) into a Bits.

        Raises BitsError ("bits must be ...") for anything else."""
        if isinstance(spec, Bits):
            return spec
        if isinstance(spec, (tuple, list)):
            values = list(spec)
        else:
            text = str(spec).strip().lower()
            tag = re.fullmatch(r"w(\d+)a(\d+)g(\d+)", "".join(text.split()))  # in this order
            values = list(tag.groups()) if tag else [p.strip() for p in text.split(",")]
        if len(values) != 3 or not all(_is_int(v) for v in values):
            raise BitsError(
                f"bits must be three comma-separated integers W,A,G such as '1,2,6' (or a tag "
                f"such as 'w1a2g6'), got {spec!r}"
            )
        ints = [int(v) for v in values]
        for part, value in zip(("weight", "activation", "gradient"), ints, strict=True):
            if value not in VALID_BITS:
                raise BitsError(
                    f"bits must be W,A,G with each in 1..8 or 32 (32 = float), got {spec!r} "
                    f"({part} bits {value})"
                )
        return cls(*ints)

    @property
    def tag(self) -> str:
        """Run-folder style name, e.g. ``w1a2g6``."""
        return f"w{self.w}a{self.a}g{self.g}"

    def __str__(self) -> str:
        return f"{self.w},{self.a},{self.g}"

    @property
    def is_float(self) -> bool:
        return self.w == FLOAT and self.a == FLOAT and self.g == FLOAT


def _is_int(value: object) -> bool:
    """A digit string (a leading "-" allowed) or an integer (Python or numpy), not a bool."""
    if isinstance(value, str):  # a sign allowed: "-1" is an integer, refused as out of range
        digits = value.removeprefix("-")
        return digits.isascii() and digits.isdigit()  # not "¹": isdigit takes, int() refuses
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
