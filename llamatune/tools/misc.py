"""Offline tools that need no network: unit conversion, local time, arithmetic. They are real tools in the
agent, and distractors in the function-calling data (so that tool *selection* is tested)."""

from __future__ import annotations

import ast
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


def _eval(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolError("That exponent is too large.")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ToolError("I can only evaluate numbers with + - * / % ** and parentheses.")


@tool
def calculate(expression: str) -> dict:
    """Evaluate an arithmetic expression exactly, e.g. "(17 * 23) / 4".

    Args:
        expression: The arithmetic expression, using numbers, + - * / % ** and parentheses.
    """
    try:
        result = _eval(ast.parse(expression, mode="eval").body)
    except SyntaxError:
        raise ToolError(f"{expression!r} is not an arithmetic expression.") from None
    except ZeroDivisionError:
        raise ToolError("Division by zero.") from None
    return {"expression": expression, "result": result}
