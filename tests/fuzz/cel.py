"""A small evaluator for the CEL subset that the upstream CRDs' `x-kubernetes-validations` use.

The API server evaluates these rules after defaulting; the cross-check needs the same verdicts without a
Go toolchain. This covers what shared/crds uses: literals, `? :`, `&& || !`, comparisons, `+`, `in`,
field access (with Kubernetes' `__name__` escaping), indexing, `has()`, the `all/exists/exists_one/filter/map`
macros, `size`, string functions (`matches`, `startsWith`, `endsWith`, `contains`, `substring`, `split`),
`duration()`, `isIP()`, `isURL()` and `url().getScheme()`. Anything else raises `CelUnsupported`: callers
then skip the object (and count it), rather than guess. Transition rules (`oldSelf`) are skipped likewise:
a create has no old object.

Errors follow CEL's commutative logic: `false && <error>` is false, `true || <error>` is true; an error that
decides the result makes the rule fail, as the API server reports a rule that cannot be evaluated.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit


class CelUnsupported(Exception):
    """The rule uses something this evaluator does not implement: do not decide."""


class CelError(Exception):
    """A runtime error (no such field, bad argument): the rule fails."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<rstr>[rR](?P<rq>\"\"\"|'''|"|')) |
      (?P<str>\"\"\"|'''|"|') |
      (?P<num>\d+(?:\.\d+)?[uU]?) |
      (?P<id>[A-Za-z_][A-Za-z0-9_]*) |
      (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:()\[\],.{}])
    )""",
    re.X,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "/": "/"}


def _tokenize(src: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if not m:
            raise CelUnsupported(f"cannot tokenize at {src[pos:pos + 20]!r}")
        if m.group("rstr") or m.group("str"):
            raw = bool(m.group("rstr"))
            quote = m.group("rq") if raw else m.group("str")
            start = m.end()
            end = src.find(quote, start)
            if not raw:
                # find the closing quote, skipping escapes
                i = start
                buf = []
                while True:
                    if i >= len(src):
                        raise CelUnsupported("unterminated string")
                    if src.startswith(quote, i):
                        end = i
                        break
                    if src[i] == "\\":
                        nxt = src[i + 1]
                        if nxt not in _ESCAPES:
                            raise CelUnsupported(f"escape \\{nxt}")
                        buf.append(_ESCAPES[nxt])
                        i += 2
                        continue
                    buf.append(src[i])
                    i += 1
                out.append(("str", "".join(buf)))
            else:
                if end < 0:
                    raise CelUnsupported("unterminated string")
                out.append(("str", src[start:end]))
            pos = end + len(quote)
            continue
        if m.group("num"):
            text = m.group("num").rstrip("uU")
            out.append(("num", float(text) if "." in text else int(text)))
        elif m.group("id"):
            out.append(("id", m.group("id")))
        else:
            out.append(("op", m.group("op")))
        pos = m.end()
    out.append(("eof", None))
    return out


class _Parser:
    def __init__(self, src: str) -> None:
        self.toks = _tokenize(src)
        self.i = 0

    def peek(self, value: str | None = None) -> bool:
        kind, v = self.toks[self.i]
        return value is None or (kind in ("op", "id") and v == value)

    def take(self, value: str | None = None) -> tuple[str, Any]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise CelUnsupported(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.cond()
        if self.toks[self.i][0] != "eof":
            raise CelUnsupported(f"trailing {self.toks[self.i]!r}")
        return node

    def cond(self):
        c = self.or_()
        if self.peek("?"):
            self.take("?")
            a = self.cond()
            self.take(":")
            b = self.cond()
            return ("?", c, a, b)
        return c

    def or_(self):
        n = self.and_()
        while self.peek("||"):
            self.take()
            n = ("||", n, self.and_())
        return n

    def and_(self):
        n = self.rel()
        while self.peek("&&"):
            self.take()
            n = ("&&", n, self.rel())
        return n

    def rel(self):
        n = self.add()
        while self.toks[self.i][0] in ("op", "id") and self.toks[self.i][1] in ("==", "!=", "<", "<=", ">", ">=", "in"):
            op = self.take()[1]
            n = (op, n, self.add())
        return n

    def add(self):
        n = self.unary()
        while self.peek("+") or self.peek("-"):
            op = self.take()[1]
            n = (op, n, self.unary())
        return n

    def unary(self):
        if self.peek("!"):
            self.take()
            return ("!", self.unary())
        if self.peek("-"):
            self.take()
            return ("neg", self.unary())
        return self.member()

    def args(self):
        self.take("(")
        out = []
        while not self.peek(")"):
            out.append(self.cond())
            if not self.peek(")"):
                self.take(",")
        self.take(")")
        return out

    def member(self):
        n = self.primary()
        while True:
            if self.peek("."):
                self.take()
                kind, name = self.take()
                if kind != "id":
                    raise CelUnsupported("field name expected")
                if self.peek("("):
                    if name in ("all", "exists", "exists_one", "filter", "map"):
                        self.take("(")
                        var = self.take()[1]
                        self.take(",")
                        body = self.cond()
                        self.take(")")
                        n = ("macro", name, n, var, body)
                    else:
                        n = ("method", name, n, self.args())
                else:
                    n = ("field", n, _unescape(name))
            elif self.peek("["):
                self.take()
                idx = self.cond()
                self.take("]")
                n = ("index", n, idx)
            else:
                return n

    def primary(self):
        kind, v = self.take()
        if kind in ("num", "str"):
            return ("lit", v)
        if kind == "id":
            if v in ("true", "false"):
                return ("lit", v == "true")
            if v == "null":
                return ("lit", None)
            if self.peek("("):
                if v == "has":
                    self.take("(")
                    arg = self.member()
                    self.take(")")
                    if arg[0] != "field":
                        raise CelUnsupported("has() of a non-field")
                    return ("has", arg[1], arg[2])
                return ("call", v, self.args())
            return ("var", v)
        if v == "(":
            n = self.cond()
            self.take(")")
            return n
        if v == "[":
            items = []
            while not self.peek("]"):
                items.append(self.cond())
                if not self.peek("]"):
                    self.take(",")
            self.take("]")
            return ("list", items)
        raise CelUnsupported(f"unexpected {v!r}")


_RESERVED = {"namespace", "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let",
             "loop", "package", "return", "var", "void", "while", "in", "true", "false", "null"}


def _unescape(name: str) -> str:
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        inner = name[2:-2]
        if inner in _RESERVED:
            return inner
        return inner.replace("__underscores__", "__").replace("__dot__", ".").replace("__dash__", "-").replace("__slash__", "/")
    return name


@lru_cache(maxsize=None)
def compile_rule(rule: str):
    if "oldSelf" in rule:
        raise CelUnsupported("transition rule (oldSelf)")
    return _Parser(rule).parse()


_GO_DURATION = re.compile(r"^([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _duration(value: Any) -> float:
    if not isinstance(value, str):
        raise CelError("duration of a non-string")
    s = value.lstrip("+-")
    if s == "0":
        return 0.0
    if not _GO_DURATION.match(s):
        raise CelError(f"invalid duration {value!r}")
    total = 0.0
    for number, _, unit in re.findall(r"([0-9]*(\.[0-9]*)?)(ns|us|µs|ms|s|m|h)", s):
        if number in ("", "."):
            raise CelError(f"invalid duration {value!r}")
        total += float(number) * _UNIT[unit]
    return -total if value.startswith("-") else total


def _is_url(value: str) -> bool:
    # Kubernetes' isURL: url.ParseRequestURI succeeds (an absolute URI or an absolute path).
    if any(ord(c) < 0x20 or c in " \x7f" for c in value):
        return False
    if value.startswith("/"):
        return True
    parts = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", value, re.S)
    if not parts:
        return False
    try:
        split = urlsplit(value)
        split.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return True


def _scheme(value: str) -> str:
    if not _is_url(value):
        raise CelError(f"url() of an invalid URL {value!r}")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", value)
    return m.group(1).lower() if m else ""


def _size(v: Any) -> int:
    if isinstance(v, (str, list, dict)):
        return len(v)
    raise CelError("size of a scalar")


class _URL:
    def __init__(self, value: str) -> None:
        self.value = value


def _method(name: str, target: Any, args: list[Any]) -> Any:
    if name == "size" and not args:
        return _size(target)
    if isinstance(target, _URL):
        if name == "getScheme":
            return _scheme(target.value)
        raise CelUnsupported(f"url().{name}")
    if isinstance(target, str):
        if name == "matches":
            try:
                return re.search(args[0], target) is not None
            except re.error as exc:
                raise CelUnsupported(f"regex {args[0]!r}: {exc}") from None
        if name == "startsWith":
            return target.startswith(args[0])
        if name == "endsWith":
            return target.endswith(args[0])
        if name == "contains":
            return args[0] in target
        if name == "substring":
            start = args[0]
            end = args[1] if len(args) > 1 else len(target)
            if not 0 <= start <= end <= len(target):
                raise CelError("substring out of range")
            return target[start:end]
        if name == "split":
            return target.split(args[0])
        if name == "lowerAscii":
            return target.lower()
    raise CelUnsupported(f"method {name} on {type(target).__name__}")


def _truth(v: Any) -> bool:
    if not isinstance(v, bool):
        raise CelError(f"expected a bool, got {type(v).__name__}")
    return v


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b


def evaluate(node, env: dict[str, Any]) -> Any:
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "var":
        if node[1] not in env:
            raise CelUnsupported(f"variable {node[1]}")
        return env[node[1]]
    if op == "list":
        return [evaluate(n, env) for n in node[1]]
    if op == "field":
        target = evaluate(node[1], env)
        if not isinstance(target, dict):
            raise CelError("field access on a non-object")
        if node[2] not in target:
            raise CelError(f"no such key: {node[2]}")
        return target[node[2]]
    if op == "has":
        target = evaluate(node[1], env)
        if not isinstance(target, dict):
            raise CelError("has() on a non-object")
        return node[2] in target
    if op == "index":
        target = evaluate(node[1], env)
        idx = evaluate(node[2], env)
        try:
            return target[idx]
        except (IndexError, KeyError, TypeError):
            raise CelError("index out of range") from None
    if op == "!":
        return not _truth(evaluate(node[1], env))
    if op == "neg":
        return -evaluate(node[1], env)
    if op in ("&&", "||"):
        stop = op == "||"  # the value that decides
        err = None
        for side in (node[1], node[2]):
            try:
                v = _truth(evaluate(side, env))
            except CelError as exc:
                err = exc
                continue
            if v is stop:
                return stop
        if err is not None:
            raise err
        return not stop
    if op == "?":
        return evaluate(node[2] if _truth(evaluate(node[1], env)) else node[3], env)
    if op in ("==", "!=", "<", "<=", ">", ">=", "in", "+", "-"):
        a = evaluate(node[1], env)
        b = evaluate(node[2], env)
        if op == "==":
            return _eq(a, b)
        if op == "!=":
            return not _eq(a, b)
        if op == "in":
            if isinstance(b, (list, dict)):
                return any(_eq(a, x) for x in b)
            raise CelError("in on a scalar")
        if op == "+":
            if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
                raise CelError("+ of mixed types")
            return a + b
        if op == "-":
            return a - b
        if isinstance(a, bool) or isinstance(b, bool) or type(a) is not type(b) and not (
            isinstance(a, (int, float)) and isinstance(b, (int, float))
        ):
            raise CelError("comparison of mixed types")
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if op == "macro":
        _, name, target_node, var, body = node
        target = evaluate(target_node, env)
        items = list(target.keys()) if isinstance(target, dict) else target
        if not isinstance(items, list):
            raise CelError("macro on a scalar")

        def run(item):
            return evaluate(body, {**env, var: item})

        if name == "all":
            err = None
            for item in items:
                try:
                    if not _truth(run(item)):
                        return False
                except CelError as exc:
                    err = exc
            if err:
                raise err
            return True
        if name == "exists":
            err = None
            for item in items:
                try:
                    if _truth(run(item)):
                        return True
                except CelError as exc:
                    err = exc
            if err:
                raise err
            return False
        if name == "exists_one":
            return sum(1 for item in items if _truth(run(item))) == 1
        if name == "filter":
            return [item for item in items if _truth(run(item))]
        if name == "map":
            return [run(item) for item in items]
    if op == "method":
        _, name, target_node, arg_nodes = node
        target = evaluate(target_node, env)
        return _method(name, target, [evaluate(a, env) for a in arg_nodes])
    if op == "call":
        _, name, arg_nodes = node
        args = [evaluate(a, env) for a in arg_nodes]
        if name == "size":
            return _size(args[0])
        if name == "duration":
            return _duration(args[0])
        if name == "isIP":
            try:
                ipaddress.ip_address(args[0])
                return "%" not in args[0]
            except ValueError:
                return False
        if name == "isURL":
            return _is_url(args[0])
        if name == "url":
            if not _is_url(args[0]):
                raise CelError("invalid URL")
            return _URL(args[0])
        if name == "int":
            return int(args[0])
        if name == "string":
            return str(args[0])
        raise CelUnsupported(f"function {name}")
    raise CelUnsupported(f"node {op}")


def check(rule: str, value: Any) -> bool:
    """True when `rule` holds for `self` = value. Raises CelUnsupported when it cannot tell."""
    node = compile_rule(rule)
    try:
        return _truth(evaluate(node, {"self": value}))
    except CelError:
        return False
    except (TypeError, AttributeError, IndexError, KeyError, ValueError, RecursionError) as exc:
        raise CelUnsupported(f"{type(exc).__name__}: {exc}") from None
