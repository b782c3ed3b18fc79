"""The (W, A, G) bitwidth triple that names every DoReFa configuration.

``Bits(1, 2, 6)`` means 1-bit weights, 2-bit activations, 6-bit gradients; 32 means "not
quantized" for that part (DOREFA.md, introduction).
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT = 32
VALID_BITS = tuple(range(1, 9)) + (FLOAT,)


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
        """Parse ``"1,2,6"`` (or ``"w1a2g6"``, a tuple, or a Bits) into a Bits."""
        if isinstance(spec, Bits):
            return spec
        if isinstance(spec, (tuple, list)):
            if len(spec) != 3:
                raise ValueError(f"bits needs three values W,A,G, got {spec!r}")
            return cls(*(int(v) for v in spec))
        text = str(spec).strip().lower()
        if text.startswith("w") and "a" in text and "g" in text:
            text = text[1:].replace("a", ",").replace("g", ",")
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(
                f"bits must be three comma-separated integers W,A,G such as '1,2,6', got {spec!r}"
            )
        return cls(*(int(p) for p in parts))

    @property
    def tag(self) -> str:
        """Run-folder style name, e.g. ``w1a2g6``."""
        return f"w{self.w}a{self.a}g{self.g}"

    def __str__(self) -> str:
        return f"{self.w},{self.a},{self.g}"

    @property
    def is_float(self) -> bool:
        return self.w == FLOAT and self.a == FLOAT and self.g == FLOAT
