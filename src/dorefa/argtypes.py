"""Number types for command-line flags: parse the text and check the range in one step, with
a one-line message that argparse prints as ``argument --epochs: must be an integer >= 1, got
'-1'``. Used by every subcommand (training flags, ``dorefa run``, the sweep)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Number:
    """An int or float flag value with a lower (and optional upper) bound.

    As an argparse ``type`` it parses text and raises ArgumentTypeError with a one-line message
    (argparse prints ``argument --epochs: must be an integer >= 1, got '-1'``)."""

    kind: type  # int or float
    low: float
    low_open: bool = False  # True: value > low; False: value >= low
    high: float | None = None  # value <= high
    say_high: bool = True  # False: the upper bound is named only to a value above it

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return "integer" if self.kind is int else "number"

    def describe(self, value: Any = None) -> str:
        what = "an integer" if self.kind is int else "a number"
        bound = f"{'>' if self.low_open else '>='} {self.low:g}"
        above = isinstance(value, (int, float)) and self.high is not None and value > self.high
        say = self.high is not None and (self.say_high or above)
        return f"{what} {bound}" + (f" and <= {self.high:g}" if say else "")

    def check(self, value: Any) -> None:
        """Raise ValueError("must be ..., got VALUE") unless ``value`` is in range."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (self.kind is float or isinstance(value, int)) and math.isfinite(value)
        ok = ok and (value > self.low if self.low_open else value >= self.low)
        ok = ok and (self.high is None or value <= self.high)
        if not ok:
            raise ValueError(f"must be {self.describe(value)}, got {value!r}")

    def __call__(self, text: str) -> int | float:
        value = None
        try:
            value = self.kind(text)
            self.check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {self.describe(value)}, got {text!r}"
            ) from None
        return value


POSITIVE_INT = Number(int, 1)
NON_NEGATIVE_INT = Number(int, 0)
# The largest float32: an optimizer's float32 update overflows (a traceback in torch) past it.
FLOAT32_MAX = 3.4028234663852886e38
POSITIVE_FLOAT = Number(float, 0, low_open=True, high=FLOAT32_MAX, say_high=False)
# Adam's first step divides the rate by 1 - beta1 (0.1): past ~3.4e37 its float32 overflows.
LEARNING_RATE = Number(float, 0, low_open=True, high=1e37)
WIDTH = Number(float, 0, low_open=True, high=4)  # dorefa.models.create_model's range
NON_NEGATIVE_FLOAT = Number(float, 0, high=FLOAT32_MAX, say_high=False)
