"""The calculator tool under hostile input (issue 29): a model's arguments are untrusted, so every intermediate
result's size is bounded before it is computed, and every refusal is the tool's own error (a ToolError with a
sentence), never a hang, a bare ValueError or a result that cannot be shown.

The hostile expressions run in a child process with a generous wall-clock limit: a hang detector (on the old code
the first one ran past 60 s), not a speed claim. Big-integer arithmetic holds the GIL, so a thread could not be
stopped; a process can."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from llamatune.tools.http import ToolError
from llamatune.tools.misc import MAX_EXPRESSION_CHARS, MAX_OPERATIONS, MAX_RESULT_DIGITS, calculate
from tests.conftest import REPO

HANG_S = 60  # for all of them together; each takes well under a millisecond when bounded

HOSTILE = {
    # chains of powers: each exponent is small, the chain is not
    "((((10**99)**99)**99)**99)": "digits",
    "((10**99)**99)": "digits",  # 9,802 digits: past Python's int-to-string limit (4,300)
    "2**2**2**2**2": "digits",  # right-associative: 2**65536
    "9**9**9": "digits",
    "(-7)**(10**6)": "digits",
    "10**1000": "digits",
    # long products and sums
    "*".join(["(10**99)"] * 40): "digits",
    "(10**999)*(10**999)": "digits",
    "(2**3000)*(2**400)": "digits",
    "+".join(["9**1047"] * 20): "digits",
    "-".join(["1"] * (MAX_OPERATIONS + 2)): "operations",
    # huge literals
    "9" * 5000: "characters",
    "1e999": "too large",
    "1e308*10": "too large",
    "0x" + "f" * 900: "characters",
    # floats out of range, no real value, division by zero
    "10**400.0": "too large",
    "(10**999)/3": "too large",
    "1.5**(10**900)": "too large",
    "(-8)**0.5": "no real value",
    "1/0": "Division by zero",
    "5 % 0": "Division by zero",
    # not arithmetic
    "True + 1": "only evaluate numbers",
    "__import__('os')": "only evaluate numbers",
    "(" * 300 + "1" + ")" * 300: "characters",
    "(" * 150 + "1" + ")" * 150: None,  # deep but short: fine (1)
}

SCRIPT = """
import json, sys
from llamatune.tools.http import ToolError
from llamatune.tools.misc import calculate
out = {}
for e in json.loads(sys.stdin.read()):
    try:
        out[e] = {"result": json.dumps(calculate(e)["result"])}
    except ToolError as exc:
        out[e] = {"tool_error": str(exc)}
    except BaseException as exc:
        out[e] = {"other": f"{type(exc).__name__}: {exc}"[:200]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hostile_answers() -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT], input=json.dumps(list(HOSTILE)), capture_output=True,
                       text=True, timeout=HANG_S, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("expression", list(HOSTILE), ids=lambda e: e if len(e) < 40 else e[:30] + "…")
def test_hostile_expressions_get_the_tools_own_error_quickly(expression, hostile_answers):
    got = hostile_answers[expression]
    assert "other" not in got, got  # never a bare exception (the old code: ValueError, OverflowError, a hang)
    want = HOSTILE[expression]
    if want is None:
        assert json.loads(got["result"]) == 1
    else:
        assert want in got.get("tool_error", ""), got


def test_results_up_to_the_limit_are_exact_and_printable():
    assert calculate("(17 * 23) / 4")["result"] == 97.75
    assert calculate("2**10 - 7 % 3 + -(3)")["result"] == 1020
    assert calculate("10**999")["result"] == 10**999
    product = "*".join(["99999999999"] * 40)
    assert len(product) <= MAX_EXPRESSION_CHARS and calculate(product)["result"] == 99999999999**40
    big = calculate("9**1047")["result"]  # 1,000 digits
    assert len(str(big)) == MAX_RESULT_DIGITS and json.loads(json.dumps(big)) == big
    assert calculate("2**-10000")["result"] == 0.0 and math.isclose(calculate("2**0.5")["result"], 2**0.5)
    assert calculate("0x" + "f" * 200)["result"] == 16**200 - 1


def test_a_non_string_expression_is_refused_by_the_tool():
    with pytest.raises(ToolError, match="must be a string"):
        calculate(10**5)
