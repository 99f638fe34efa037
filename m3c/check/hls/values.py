"""Values of expressions as the checker knows them: a compile-time integer when it is one,
otherwise a symbolic text (equal texts are the same value within a loop iteration, which is
how two reads of one address are recognised as one), and whether the value changes from one
iteration of the pipelined loop under analysis to the next."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

WIDE_BITS = 64  # long long: the width whose multiplies and divides the checker reports


@dataclass(frozen=True)
class Value:
    text: str  # canonical form; a compile-time value's decimal digits
    const: int | None = None
    variant: bool = False  # differs between iterations of the loop under analysis
    carried: bool = False  # depends on a variable the loop carries into its next iteration
    width: int | None = None  # bits, where the C type says (64 for long long)
    divided: bool = False  # computed through a divider whose divisor is known at run time
    # sum of coefficient x symbol (the symbol "" is 1), when the value is linear in symbols:
    # enough to see that `k * 16 + t` lies in bank t of a cyclic-16 partition
    terms: tuple[tuple[str, int], ...] | None = None

    @staticmethod
    def of(number: int) -> Value:
        return Value(str(number), number, terms=(("", number),))

    @staticmethod
    def derived(text: str, parts: list[Value], width: int | None = None) -> Value:
        """A value computed from `parts`: it varies when any of them does."""
        return Value(text, None, any(part.variant for part in parts),
                     any(part.carried for part in parts), width,
                     any(part.divided for part in parts))

    def linear(self) -> dict[str, int]:
        if self.const is not None:
            return {"": self.const}
        return dict(self.terms) if self.terms is not None else {self.text: 1}


def linear_terms(operator: str, left: Value, right: Value) -> tuple[tuple[str, int], ...] | None:
    """The terms of `left operator right` when it stays linear."""
    a, b = left.linear(), right.linear()
    if operator in ("+", "-"):
        sign = 1 if operator == "+" else -1
        merged = dict(a)
        for symbol, coefficient in b.items():
            merged[symbol] = merged.get(symbol, 0) + sign * coefficient
    elif operator in ("*", "<<") and right.const is not None:
        scale = right.const if operator == "*" else 1 << right.const \
            if 0 <= right.const < 64 else None
        if scale is None:
            return None
        merged = {symbol: c * scale for symbol, c in a.items()}
    elif operator == "*" and left.const is not None:
        merged = {symbol: c * left.const for symbol, c in b.items()}
    else:
        return None
    return tuple(sorted((s, c) for s, c in merged.items() if c or s == ""))


def _divide(a: int, b: int) -> int | None:
    if b == 0:
        return None
    quotient = abs(a) // abs(b)
    return quotient if (a >= 0) == (b > 0) else -quotient  # C truncates toward zero


def _remainder(a: int, b: int) -> int | None:
    quotient = _divide(a, b)
    return None if quotient is None else a - b * quotient


def _shift_left(a: int, b: int) -> int | None:
    return a << b if 0 <= b < 128 else None


def _shift_right(a: int, b: int) -> int | None:
    return a >> b if 0 <= b < 128 else None


BINARY: dict[str, Callable[[int, int], int | None]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": _divide, "%": _remainder, "<<": _shift_left, ">>": _shift_right,
    "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
    "<": lambda a, b: int(a < b), "<=": lambda a, b: int(a <= b),
    ">": lambda a, b: int(a > b), ">=": lambda a, b: int(a >= b),
    "==": lambda a, b: int(a == b), "!=": lambda a, b: int(a != b),
    "&&": lambda a, b: int(bool(a) and bool(b)), "||": lambda a, b: int(bool(a) or bool(b)),
}

UNARY: dict[str, Callable[[int], int]] = {
    "-": lambda a: -a, "+": lambda a: a, "!": lambda a: int(not a), "~": lambda a: ~a,
}


def integer_literal(text: str) -> int | None:
    """A C++ integer literal's value (None for floating-point literals)."""
    digits = text.replace("'", "").rstrip("uUlL")
    try:
        return int(digits, 0) if not digits.startswith("0") or digits == "0" or \
            digits[1:2] in "xXbBoO" else int(digits, 8)
    except ValueError:
        return None


def literal_width(text: str) -> int:
    return WIDE_BITS if text.lower().rstrip("u").endswith("ll") else 32


PRIMITIVE_WIDTHS = {"long long": 64, "unsigned long long": 64, "long": 64, "int": 32,
                    "unsigned": 32, "unsigned int": 32, "short": 16, "char": 8, "bool": 1,
                    "unsigned char": 8, "__int128": 128, "int64_t": 64, "uint64_t": 64}
