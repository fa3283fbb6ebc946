"""``--where``: a row filter written as comparisons of columns with literals, turned into an Arrow expression.

The expression is untrusted (a CLI argument, a DAG Param). It is parsed, never evaluated: only column names of the
table (``scores.toxicity`` for a struct field), literals, comparisons, ``in``/``not in`` lists, ``is null`` and
``and``/``or``/``not`` are accepted; anything else is refused with the offending part named. SQL spellings work
too: ``domain = 'news' AND quality >= 0.6``, ``lang IN ('en', 'de')``, ``response IS NOT NULL``.
"""

from __future__ import annotations

import ast
import io
import operator
import tokenize

import pyarrow as pa
import pyarrow.compute as pc

MAX_LENGTH = 2_000
_KEYWORDS = {"and": "and", "or": "or", "not": "not", "in": "in", "is": "is", "null": "None", "none": "None",
             "true": "True", "false": "False"}
_COMPARISONS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
                ast.Gt: operator.gt, ast.GtE: operator.ge}


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Return the Arrow expression of ``text`` over ``schema``'s columns; raise ``ValueError`` on anything else."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"--where is {len(text)} characters long; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(_pythonic(text), mode="eval")
    except (SyntaxError, tokenize.TokenError) as exc:
        raise ValueError(f"--where {text!r} is not a filter expression: {exc}") from None
    return _Builder(schema, text).expression(tree.body)


def _pythonic(text: str) -> str:
    """Rewrite SQL spellings (``=``, ``<>``, ``AND``, ``NULL``, ``TRUE``) as the Python tokens they mean."""
    out = []
    for token in tokenize.generate_tokens(io.StringIO(text.replace("\n", " ")).readline):
        string = token.string
        if token.type == tokenize.OP and string in ("=", "<>"):
            string = "==" if string == "=" else "!="
        elif token.type == tokenize.NAME and string.lower() in _KEYWORDS:
            string = _KEYWORDS[string.lower()]
        out.append((token.type, string))
    return tokenize.untokenize(out)


class _Builder:
    def __init__(self, schema: pa.Schema, text: str) -> None:
        self.schema = schema
        self.text = text

    def refuse(self, node: ast.AST, why: str) -> ValueError:
        return ValueError(f"--where {self.text!r}: {why}: {ast.unparse(node)}")

    def expression(self, node: ast.AST) -> pc.Expression:
        if isinstance(node, ast.BoolOp):
            parts = [self.expression(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = parts[0]
            for part in parts[1:]:
                result = combine(result, part)
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.expression(node.operand)
        if isinstance(node, ast.Compare):
            left, result = node.left, None
            for op, right in zip(node.ops, node.comparators, strict=True):  # a < b < c means a < b and b < c
                part = self.compare(left, op, right)
                result = part if result is None else result & part
                left = right
            return result
        if isinstance(node, (ast.Name, ast.Attribute)):
            field, type_ = self.field(node)
            if not pa.types.is_boolean(type_):
                raise self.refuse(node, f"a bare column must be boolean, this one is {type_}")
            return field
        raise self.refuse(node, "only comparisons, in-lists, is null and and/or/not are allowed")

    def compare(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> pc.Expression:
        if isinstance(op, (ast.Is, ast.IsNot)):
            if not (isinstance(right, ast.Constant) and right.value is None):
                raise self.refuse(right, "'is' compares only with null")
            field, _ = self.field(left)
            return field.is_null() if isinstance(op, ast.Is) else field.is_valid()
        if isinstance(op, (ast.In, ast.NotIn)):
            values = right.elts if isinstance(right, (ast.List, ast.Tuple, ast.Set)) else [right]  # IN ('en')
            field, _ = self.field(left)
            found = field.isin([self.literal(v) for v in values])
            return found if isinstance(op, ast.In) else ~found
        return _COMPARISONS[type(op)](self.operand(left), self.operand(right))

    def operand(self, node: ast.AST) -> pc.Expression:
        if isinstance(node, (ast.Name, ast.Attribute)):
            return self.field(node)[0]
        return pc.scalar(self.literal(node))

    def field(self, node: ast.AST) -> tuple[pc.Expression, pa.DataType]:
        path = []
        while isinstance(node, ast.Attribute):
            path.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise self.refuse(node, "expected a column name")
        path.insert(0, node.id)
        if path[0] not in self.schema.names:
            raise ValueError(f"--where {self.text!r}: no column {path[0]!r}; columns: {', '.join(self.schema.names)}")
        type_ = self.schema.field(path[0]).type
        for name in path[1:]:
            if not pa.types.is_struct(type_) or type_.get_field_index(name) < 0:
                raise ValueError(f"--where {self.text!r}: {'.'.join(path)!r} is not a field of the table")
            type_ = type_.field(name).type
        return pc.field(*path), type_

    def literal(self, node: ast.AST) -> str | int | float | bool | None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            value = self.literal(node.operand)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
            return node.value
        raise self.refuse(node, "expected a literal (a number, a quoted string, true or false; null only with 'is')")
