"""Offline tools that need no network: unit conversion, local time, arithmetic. They are real tools in the
agent, and distractors in the function-calling data (so that tool *selection* is tested)."""

from __future__ import annotations

import ast
import math
import operator
from datetime import datetime, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llamatune.tools.http import ToolError
from llamatune.tools.schema import tool

_FACTORS = {  # to SI base
    "km": 1000.0, "m": 1.0, "cm": 0.01, "mile": 1609.344, "ft": 0.3048, "inch": 0.0254,
    "kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125,
    "l": 1.0, "ml": 0.001, "gallon": 3.785411784,
}
_DIM = {"km": "length", "m": "length", "cm": "length", "mile": "length", "ft": "length", "inch": "length",
        "kg": "mass", "g": "mass", "lb": "mass", "oz": "mass", "l": "volume", "ml": "volume", "gallon": "volume"}
Unit = Literal["km", "m", "cm", "mile", "ft", "inch", "kg", "g", "lb", "oz", "l", "ml", "gallon", "celsius", "fahrenheit"]


@tool
def convert_units(value: float, from_unit: Unit, to_unit: Unit) -> dict:
    """Convert a quantity between units of length, mass, volume or temperature.

    Args:
        value: The number to convert.
        from_unit: The unit of the value.
        to_unit: The unit to convert to.
    """
    temps = {"celsius", "fahrenheit"}
    if from_unit in temps or to_unit in temps:
        if not (from_unit in temps and to_unit in temps):
            raise ToolError(f"Cannot convert {from_unit} to {to_unit}.")
        c = value if from_unit == "celsius" else (value - 32) * 5 / 9
        out = c if to_unit == "celsius" else c * 9 / 5 + 32
    else:
        if _DIM[from_unit] != _DIM[to_unit]:
            raise ToolError(f"Cannot convert {_DIM[from_unit]} ({from_unit}) to {_DIM[to_unit]} ({to_unit}).")
        out = value * _FACTORS[from_unit] / _FACTORS[to_unit]
    return {"value": value, "from": from_unit, "to": to_unit, "result": round(out, 6)}


@tool
def get_local_time(timezone_name: str) -> dict:
    """Get the current local date and time in a time zone.

    Args:
        timezone_name: An IANA time zone name, e.g. "Europe/Oslo" or "America/New_York".
    """
    try:
        now = datetime.now(timezone.utc).astimezone(ZoneInfo(timezone_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"{timezone_name!r} is not a time zone name I know (try e.g. 'Europe/Oslo').") from None
    return {"timezone": timezone_name, "local_time": now.strftime("%Y-%m-%d %H:%M"), "weekday": now.strftime("%A")}


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}
# A model's arguments are untrusted: every intermediate integer is bounded *before* it is computed, so no
# expression can run for long or build a number Python cannot print (its int-to-string limit is 4,300 digits).
MAX_EXPRESSION_CHARS = 500  # longer input is refused before it is parsed
MAX_OPERATIONS = 100  # operators in one expression (also bounds the nesting depth of the recursion below)
MAX_RESULT_DIGITS = 1000  # every integer, intermediate or final, stays under 10**1000 (3,322 bits)
_MAX_BITS = int(MAX_RESULT_DIGITS * 3.3219280948873626)  # log2(10)
_TOO_BIG = f"The result would have more than {MAX_RESULT_DIGITS:,} digits; I only compute smaller numbers."


def _int_bits(x) -> int:
    return x.bit_length() if isinstance(x, int) else 0


def _check_int(x):
    if isinstance(x, int) and x.bit_length() > _MAX_BITS:
        raise ToolError(_TOO_BIG)
    return x


def _pow(base, exp):
    """``base ** exp`` with its size bounded first: an integer power has at most ``exp * bits(base)`` bits."""
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if exp > _MAX_BITS or (exp * (base.bit_length() - 1)) > _MAX_BITS:  # base >= 2**(bits-1)
            raise ToolError(_TOO_BIG)
    result = base ** exp
    if isinstance(result, complex):
        raise ToolError("That power has no real value (a negative number to a fractional power).")
    return _check_int(result)


def _bounded(op: type, left, right):
    """One binary operation, refused before it runs when its integer result could exceed the digit limit."""
    if op is ast.Pow:
        return _pow(left, right)
    if op is ast.Mult and _int_bits(left) + _int_bits(right) > _MAX_BITS + 1:
        raise ToolError(_TOO_BIG)
    return _check_int(_OPS[op](left, right))  # + - % // of bounded ints stay within a bit of their operands


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, not complex
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise ToolError("That number is too large for a decimal number.")
        return _check_int(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _bounded(type(node.op), _eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ToolError("I can only evaluate numbers with + - * / % ** and parentheses.")


@tool
def calculate(expression: str) -> dict:
    """Evaluate an arithmetic expression exactly, e.g. "(17 * 23) / 4".

    Args:
        expression: The arithmetic expression, using numbers, + - * / % ** and parentheses.
    """
    if not isinstance(expression, str):
        raise ToolError("The expression must be a string, e.g. \"(17 * 23) / 4\".")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"That expression has {len(expression):,} characters; I evaluate at most "
                        f"{MAX_EXPRESSION_CHARS}.")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        # ValueError: a literal over Python's int-to-string limit; MemoryError/RecursionError: absurd nesting
        raise ToolError(f"{expression!r} is not an arithmetic expression I can evaluate.") from None
    if sum(isinstance(n, (ast.BinOp, ast.UnaryOp)) for n in ast.walk(tree)) > MAX_OPERATIONS:
        raise ToolError(f"That expression has more than {MAX_OPERATIONS} operations; please split it up.")
    try:
        result = _eval(tree.body)
    except ZeroDivisionError:
        raise ToolError("Division by zero.") from None
    except OverflowError:  # a float out of range, or an integer too large to divide as a float
        raise ToolError("The numbers are too large to compute with decimals.") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ToolError("The result is too large for a decimal number.")
    return {"expression": expression, "result": result}
