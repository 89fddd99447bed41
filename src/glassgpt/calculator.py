"""The chat model's calculator tool: evaluate a tiny, safe subset of Python arithmetic.

The model writes a tool call such as `37 + 48` or `'strawberry'.count('r')` between special
tokens; the engine hands that text to `calculate` and forces `CalculatorResult.text` back into the
model's context. The text is arbitrary model output, so it is treated as adversarial: it is parsed
with `ast.parse(..., mode="eval")` and the tree is walked here, node by node. Nothing is ever handed
to Python's own evaluator, and anything not on the list below is refused with a short
`"error: ..."` text (never an exception).

Accepted (strict Python syntax, nothing friendlier):
- int and float literals in Python syntax (`12`, `2.5`, `1e3`, `0x10`, `1_000`); not complex,
  bytes, booleans or None. `1,000` is a tuple in Python, so it is refused.
- binary `+ - * / // %`, unary `-` and `+`, parentheses.
- `**` with |base| <= MAX_POWER_BASE and 0 <= exponent <= MAX_POWER_EXPONENT (a negative base may
  not take a fractional exponent: the answer would be complex).
- `'text'.count('x')` (either quote style): both sides string literals, exactly one positional
  argument, str.count semantics (`"banana".count("an")` is 2); also `'Text'.lower().count('x')`,
  which counts in the lowercased text (so a model can copy a word as it was asked, "STRAWBERRY"
  included, and still count its r's). Strings appear nowhere else, so
  `'a' * 10**9` can never build a big string.
- Surrounding whitespace and one trailing `=` (`37 + 48 =`) are stripped before parsing.

Bounds, chosen so every evaluation is fast without threads or signals:
- the expression is at most MAX_EXPRESSION_CHARS long (checked before anything else); this also
  bounds the length of string literals and the digits of number literals;
- brackets nest at most MAX_NESTING_DEPTH deep (a text scan, before the parser sees deep nesting)
  and so does the parsed tree (an iterative walk, before the recursive evaluator runs);
- every int, literal or intermediate, is at most MAX_INT_MAGNITUDE in magnitude and every float is
  finite. Because operands are already bounded, one operation costs at most one multiply of two
  bounded ints (or one bounded power) before its result is checked, so chains never build huge ints.
"""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass

MAX_EXPRESSION_CHARS = 200
MAX_NESTING_DEPTH = 32
MAX_INT_POWER_OF_TEN = 30
MAX_INT_MAGNITUDE = 10**MAX_INT_POWER_OF_TEN
MAX_POWER_BASE = 10**6
MAX_POWER_EXPONENT = 64

# Floats print with this many decimals at most; at or beyond the limit they print in exponent form,
# because fixed-point digits of a float that large would be noise.
FLOAT_DECIMALS = 6
FIXED_POINT_LIMIT = 1e16

ONLY_ARITHMETIC = "error: only numbers, + - * / // % ** and 'text'.count('x') are allowed"
ONLY_COUNT_CALLS = "error: the only call allowed is 'text'.count('x')"

_BINARY_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


@dataclass(frozen=True)
class CalculatorResult:
    ok: bool
    text: str  # forced into the model's context: the formatted value, or a short "error: ..." text
    value: int | float | None = None


class _Refused(Exception):
    """Internal: carries the error text from wherever a refusal is decided back to `calculate`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def calculate(expression: str) -> CalculatorResult:
    """Evaluate one tool call. Never raises (any input string, including huge or binary-looking
    ones); bounded in time and memory by the module's bounds."""
    try:
        tree = _parse(expression)
        value = _evaluate(tree.body)
    except _Refused as refusal:
        return CalculatorResult(ok=False, text=refusal.text)
    return CalculatorResult(ok=True, text=format_value(value), value=value)


def format_value(value: int | float) -> str:
    """How results print: ints in full ("85"); integral floats as ints ("24"); other floats rounded
    to FLOAT_DECIMALS decimals without trailing zeros ("2.5", "0.333333"). Only values a fixed-point
    form would misrepresent use exponent form: nonzero values that round to 0 ("1e-07") and
    magnitudes of FIXED_POINT_LIMIT or more ("1e+20")."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value) or abs(value) >= FIXED_POINT_LIMIT:
        return f"{value:.{FLOAT_DECIMALS}g}"
    text = f"{value:.{FLOAT_DECIMALS}f}".rstrip("0").rstrip(".")
    if text in ("0", "-0"):
        return "0" if value == 0 else f"{value:.{FLOAT_DECIMALS}g}"
    return text


def _parse(expression: str) -> ast.Expression:
    if not isinstance(expression, str):
        raise _Refused("error: the expression must be text")
    # Checked on the raw input, before stripping or scanning, so huge inputs cost nothing.
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _Refused(f"error: expressions longer than {MAX_EXPRESSION_CHARS} characters are not allowed")
    text = _strip_tool_call(expression)
    if not text:
        raise _Refused("error: empty expression")
    # The parser itself recurses on nesting (and can raise RecursionError or MemoryError), so deep
    # brackets are refused by a plain scan before it runs.
    if _bracket_depth(text) > MAX_NESTING_DEPTH:
        raise _Refused(f"error: nesting deeper than {MAX_NESTING_DEPTH} levels is not allowed")
    try:
        # Model text such as `1if` or `'\['` makes the parser warn; that is the model's problem, not the
        # user's, so it must not reach stderr (or be raised, under a "warnings are errors" filter).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        # ValueError covers NUL bytes (some Python versions) and lone surrogates (UnicodeEncodeError).
        raise _Refused("error: not a valid expression") from None
    # Unary minus nests without brackets (`-------1`), so the tree is measured too, before the
    # recursive evaluator walks it.
    if _tree_depth(tree) > MAX_NESTING_DEPTH:
        raise _Refused(f"error: nesting deeper than {MAX_NESTING_DEPTH} levels is not allowed")
    return tree


def _strip_tool_call(expression: str) -> str:
    """Drop surrounding whitespace and one trailing "=": small models often write `37 + 48 =`."""
    text = expression.strip()
    if text.endswith("="):
        text = text[:-1].rstrip()
    return text


def _bracket_depth(text: str) -> int:
    """Deepest nesting of ( [ { outside quoted strings. Deliberately simple: it is only an early,
    cheap guard for the parser; the tree depth check afterwards is the exact one."""
    depth = deepest = 0
    quote: str | None = None
    escaped = False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _tree_depth(tree: ast.AST) -> int:
    """Depth of the syntax tree, measured with an explicit stack so it cannot itself recurse."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _evaluate(node: ast.expr) -> int | float:
    """Recursive, which is safe because the tree depth is already bounded."""
    if isinstance(node, ast.Constant):
        return _number_literal(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINARY_OPERATORS):
        return _apply(node.op, _evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.Call):
        return _count_call(node)
    if isinstance(node, ast.Name):
        raise _Refused("error: names are not allowed")
    if isinstance(node, ast.Attribute):
        raise _Refused("error: attributes are not allowed, except 'text'.count('x')")
    raise _Refused(ONLY_ARITHMETIC)


def _number_literal(value: object) -> int | float:
    # bool is a subclass of int, so it is refused before the int check lets it through.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            raise _Refused("error: text is only allowed in 'text'.count('x')")
        raise _Refused(ONLY_ARITHMETIC)
    return _checked(value)


def _count_call(node: ast.Call) -> int:
    method = node.func
    if not (isinstance(method, ast.Attribute) and method.attr == "count" and _is_counted_text(method.value)):
        raise _Refused(ONLY_COUNT_CALLS)
    if node.keywords or len(node.args) != 1 or not _is_text(node.args[0]):
        raise _Refused("error: 'text'.count('x') takes exactly one text argument")
    # Both strings come from the expression itself, so they are short and the count is fast.
    if _is_text(method.value):
        text = method.value.value
    else:  # 'Text'.lower()
        text = method.value.func.value.value.lower()
    return text.count(node.args[0].value)


def _is_counted_text(node: ast.expr) -> bool:
    """A string literal, or a string literal's .lower() with no arguments."""
    if _is_text(node):
        return True
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lower"
            and _is_text(node.func.value) and not node.args and not node.keywords)


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _apply(op: ast.operator, left: int | float, right: int | float) -> int | float:
    """One binary operation on already-bounded operands, then the result is bounded too."""
    if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
        raise _Refused("error: division by zero")
    try:
        if isinstance(op, ast.Add):
            result = left + right
        elif isinstance(op, ast.Sub):
            result = left - right
        elif isinstance(op, ast.Mult):
            result = left * right
        elif isinstance(op, ast.Div):
            result = left / right
        elif isinstance(op, ast.FloorDiv):
            result = left // right
        elif isinstance(op, ast.Mod):
            result = left % right
        else:
            result = _power(left, right)
    except OverflowError:
        # Float ** raises instead of returning inf (1e6 ** 64.0); the caller sees the same error.
        raise _Refused("error: the result is not a finite number") from None
    return _checked(result)


def _power(base: int | float, exponent: int | float) -> int | float:
    if not (abs(base) <= MAX_POWER_BASE and 0 <= exponent <= MAX_POWER_EXPONENT):
        raise _Refused(
            f"error: ** needs |base| <= {MAX_POWER_BASE} and 0 <= exponent <= {MAX_POWER_EXPONENT}"
        )
    if base < 0 and not float(exponent).is_integer():
        raise _Refused("error: a negative number to a fractional power is not allowed")
    # At worst (10**6) ** 64, a 10**384 int: cheap to build, then refused by the magnitude check.
    return base**exponent


def _checked(value: int | float) -> int | float:
    if isinstance(value, int) and abs(value) > MAX_INT_MAGNITUDE:
        raise _Refused(f"error: numbers larger than 10**{MAX_INT_POWER_OF_TEN} are not allowed")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused("error: the result is not a finite number")
    return value
