"""Parse a record spec (the language of parsers/README.md) into a checked tree.

Everything that can be wrong with a spec is found here, before any C is written: a bad
spec raises SpecError with its line and the reason. The tree is what _pgen turns into C.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vtlstack.errors import SpecError

CHAR_CLASSES = ("any", "tchar", "vchar", "text", "digit", "alpha")
BINARY_INTS = {f"u{8 * n}{e}": (n, e == "be") for n in (2, 4, 8) for e in ("be", "le")}
BINARY_INTS["u8"] = (1, True)
COMPARE = ("==", "!=", "<", "<=", ">", ">=")
HEADER_ACTIONS = ("none", "length", "coding", "count")
MAX_SPAN = 2**32 - 1
_PATH = re.compile(r"^([a-z_][a-z0-9_]*)(\[\])?(?:\.(\d))?(\+)?$")
_TOKEN = re.compile(r'[A-Za-z_]\w*=(?:"(?:[^"\\]|\\.)*"|[^\s"]+)|"(?:[^"\\]|\\.)*"|[^\s"]+')
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TOP_LEVEL = ("format", "option", "var", "limit", "rule", "start")


# ---- the tree -------------------------------------------------------------------------

@dataclass(frozen=True)
class Val:
    """An operand: a literal integer, a variable or an option (both written $name)."""

    kind: str  # "int", "var", "opt"
    value: int  # the integer, or the index of the variable / option


@dataclass
class Stmt:
    line: int


@dataclass
class Matcher:
    kind: str  # until, line, delimited, fixed, int, uint, digits, binary
    lit: bytes = b""
    cls: str | None = None
    sep: Val | None = None
    quote: Val | None = None
    escape: Val | None = None
    count: Val | None = None
    width: int = 0
    big_endian: bool = True

    @property
    def value(self) -> bool:
        """True when the matcher yields an integer rather than a span."""
        return self.kind in ("int", "uint", "digits", "binary")


@dataclass
class Field(Stmt):
    path: str | None  # None for skip
    matcher: Matcher
    conv: str = "bytes"
    max: int = MAX_SPAN
    min: int = 0
    store: int | None = None  # variable index for "-> $var"


@dataclass
class Expect(Stmt):
    lit: bytes
    ci: bool


@dataclass
class Eol(Stmt):
    pass


@dataclass
class If(Stmt):
    a: Val
    op: str
    b: Val
    then: list[Stmt]
    orelse: list[Stmt]


@dataclass
class Set(Stmt):
    var: int
    value: Val


@dataclass
class Fail(Stmt):
    reason: str


@dataclass
class Switch(Stmt):
    peek: bool
    cases: list[tuple[bytes, list[Stmt]]]
    default: list[Stmt] | None


@dataclass
class Repeat(Stmt):
    count: Val | None  # None: repeat ... while
    body: list[Stmt]
    cond: tuple[Val, str, Val] | None = None


@dataclass
class WhilePeek(Stmt):
    chars: bytes
    body: list[Stmt]


@dataclass
class Group(Stmt):
    path: str
    body: list[Stmt]


@dataclass
class Null(Stmt):
    path: str


@dataclass
class Call(Stmt):
    rule: str


@dataclass
class Record(Stmt):
    type: str
    body: list[Stmt]


@dataclass
class HeaderRule:
    name: bytes
    action: str
    var: int
    unique: bool


@dataclass
class Headers(Stmt):
    path: str
    rules: list[HeaderRule]
    count: int
    max_line: int
    size: int


@dataclass
class Body(Stmt):
    path: str
    chunked: Val
    length: Val
    trailers: str
    max: int


@dataclass
class Input(Stmt):
    var: int
    default: int


@dataclass
class Consume(Stmt):
    pass


@dataclass
class Option:
    name: str
    kind: str  # byte, int, flag
    default: int


@dataclass
class Spec:
    format: str
    options: list[Option]
    vars: list[tuple[str, int]]  # variable 0 is $term
    rules: dict[str, list[Stmt]]
    start: str
    record_limit: int = 1 << 30
    depth: int = 16
    record_types: list[str] = field(default_factory=list)
    # record type -> the field paths it can hold, in the order they appear
    record_fields: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


# ---- lexing ---------------------------------------------------------------------------

_ESCAPES = {"n": 10, "r": 13, "t": 9, "0": 0, "\\": 92, '"': 34}


def _string(tok: str, line: int) -> bytes:
    body, out, i = tok[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        e = body[i + 1 : i + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        else:
            raise SpecError(line, f"unknown escape \\{e} in {tok}")
    return bytes(out)


def _tokens(text: str, line: int) -> list[str]:
    out, at = [], 0
    for m in _TOKEN.finditer(text):
        gap = text[at : m.start()]
        if gap.strip():
            raise SpecError(line, "unterminated string" if '"' in gap else f"cannot read {gap!r}")
        tok = m.group(0)
        if tok.startswith("#"):
            return out
        out.append(tok)
        at = m.end()
    rest = text[at:]
    if rest.strip():
        raise SpecError(line, "unterminated string" if '"' in rest else f"cannot read {rest!r}")
    return out


# ---- parsing --------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, list[str]]] = []
        for no, raw in enumerate(text.splitlines(), 1):
            toks = _tokens(raw, no)
            if toks:
                self.lines.append((no, toks))
        self.i = 0
        self.options: dict[str, int] = {}
        self.option_list: list[Option] = []
        self.vars: dict[str, int] = {"term": 0}
        self.var_list: list[tuple[str, int]] = [("term", 0)]
        self.line = 0

    def err(self, reason: str, line: int | None = None) -> SpecError:
        return SpecError(self.line if line is None else line, reason)

    # -- operands
    def number(self, tok: str) -> int:
        try:
            n = int(tok, 0)
        except ValueError:
            raise self.err(f"expected a number, not {tok!r}") from None
        return n

    def val(self, tok: str) -> Val:
        if tok.startswith("$"):
            name = tok[1:]
            if name in self.vars:
                return Val("var", self.vars[name])
            if name in self.options:
                return Val("opt", self.options[name])
            raise self.err(f"unknown variable {tok}")
        if tok.startswith('"'):
            s = _string(tok, self.line)
            if len(s) != 1:
                raise self.err(f"expected one byte, not {tok}")
            return Val("int", s[0])
        return Val("int", self.number(tok))

    def byte_val(self, tok: str) -> Val:
        v = self.val(tok)
        if v.kind == "opt" and self.option_list[v.value].kind != "byte":
            raise self.err(f"option {tok} is not a byte")
        if v.kind == "var":
            raise self.err(f"{tok}: a byte must be a literal or an option")
        if v.kind == "int" and not 0 <= v.value <= 255:
            raise self.err(f"{tok} is not a byte")
        return v

    def var(self, tok: str) -> int:
        if not tok.startswith("$"):
            raise self.err(f"expected a variable, not {tok!r}")
        if tok[1:] not in self.vars:
            raise self.err(f"unknown variable {tok}")
        return self.vars[tok[1:]]

    def lit(self, tok: str) -> bytes:
        if not tok.startswith('"'):
            raise self.err(f"expected a string, not {tok!r}")
        s = _string(tok, self.line)
        if not s:
            raise self.err("empty string")
        return s

    def path(self, tok: str) -> str:
        m = _PATH.match(tok)
        if not m or (m.group(4) and (m.group(2) or m.group(3))):
            raise self.err(f"bad field name {tok!r} (name, name[], name+, name.N or name[].N)")
        return tok

    def cond(self, toks: list[str]) -> tuple[Val, str, Val]:
        if len(toks) != 3 or toks[1] not in COMPARE:
            raise self.err("expected a comparison: $var OP value")
        return self.val(toks[0]), toks[1], self.val(toks[2])

    def kwargs(self, toks: list[str], allowed: tuple[str, ...]) -> tuple[list[str], dict]:
        pos, kw = [], {}
        for t in toks:
            if re.match(r"^[A-Za-z_]\w*=", t):
                k, v = t.split("=", 1)
                if k not in allowed:
                    raise self.err(f"unknown setting {k}= (allowed: {', '.join(allowed)})")
                kw[k] = v
            else:
                pos.append(t)
        return pos, kw

    # -- top level
    def spec(self) -> Spec:
        fmt, rules, start = None, {}, None
        limits = {"record": 1 << 30, "depth": 16}
        while self.i < len(self.lines):
            self.line, toks = self.lines[self.i]
            self.i += 1
            word, args = toks[0], toks[1:]
            if word == "format":
                if len(args) != 1 or not _NAME.match(args[0]):
                    raise self.err("format takes one name")
                fmt = args[0]
            elif word == "option":
                self.option(args)
            elif word == "var":
                self.declare_var(args)
            elif word == "limit":
                if len(args) != 2 or args[0] not in limits:
                    raise self.err("limit record N | limit depth N")
                n = self.number(args[1])
                if not 1 <= n <= (256 if args[0] == "depth" else MAX_SPAN):
                    raise self.err(f"limit {args[0]} out of range")
                limits[args[0]] = n
            elif word == "rule":
                if len(args) != 1 or not _NAME.match(args[0]):
                    raise self.err("rule takes one name")
                if args[0] in rules:
                    raise self.err(f"rule {args[0]} defined twice")
                rules[args[0]] = None  # allows recursion
                body, _ = self.block(("end",))
                rules[args[0]] = body
            elif word == "start":
                if len(args) != 1:
                    raise self.err("start takes one rule name")
                start = (args[0], self.line)
            else:
                raise self.err(f"unknown statement {word!r} at the top level")
        if fmt is None:
            raise SpecError(1, "missing 'format NAME'")
        if start is None:
            raise SpecError(self.line, "missing 'start RULE'")
        if start[0] not in rules:
            raise SpecError(start[1], f"start: no rule named {start[0]}")
        return Spec(fmt, self.option_list, self.var_list, rules, start[0],
                    limits["record"], limits["depth"])

    def option(self, args: list[str]) -> None:
        if len(args) != 3 or args[1] not in ("byte", "int", "flag"):
            raise self.err("option NAME byte|int|flag DEFAULT")
        name, kind, default = args
        if not _NAME.match(name) or name in self.options or name in self.vars:
            raise self.err(f"bad or duplicate option name {name!r}")
        if kind == "byte":
            d = self.lit(default)
            if len(d) != 1:
                raise self.err("a byte option's default is one byte")
            value = d[0]
        elif kind == "flag":
            if default not in ("true", "false"):
                raise self.err("a flag's default is true or false")
            value = int(default == "true")
        else:
            value = self.number(default)
        self.options[name] = len(self.option_list)
        self.option_list.append(Option(name, kind, value))

    def declare_var(self, args: list[str]) -> None:
        if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "="):
            raise self.err("var NAME [= N]")
        name = args[0]
        if not _NAME.match(name) or name in self.vars or name in self.options:
            raise self.err(f"bad or duplicate variable name {name!r}")
        self.vars[name] = len(self.var_list)
        self.var_list.append((name, self.number(args[2]) if len(args) == 3 else 0))

    # -- blocks
    def block(self, ends: tuple[str, ...]) -> tuple[list[Stmt], list[str]]:
        """Statements up to a line starting with one of `ends`; returns them and that line."""
        opened = self.line
        body: list[Stmt] = []
        while self.i < len(self.lines):
            self.line, toks = self.lines[self.i]
            self.i += 1
            if toks[0] in ends and not (toks[0] == "while" and toks[1:2] == ["peek"]):
                return body, toks
            if toks[0] in _TOP_LEVEL:
                raise SpecError(opened, f"block opened here is never closed ({' or '.join(ends)}"
                                f" missing before '{toks[0]}' on line {self.line})")
            body.append(self.stmt(toks))
        raise SpecError(opened, f"block opened here is never closed ({' or '.join(ends)})")

    def stmt(self, toks: list[str]) -> Stmt:
        word, args, line = toks[0], toks[1:], self.line
        if word in ("field", "skip"):
            return self.field(word, args)
        if word == "expect":
            ci = args[1:] == ["ci"]
            if len(args) != 1 + ci:
                raise self.err('expect "LITERAL" [ci]')
            lit = self.lit(args[0])
            return Expect(line, lit.lower() if ci else lit, ci)
        if word == "eol":
            if args:
                raise self.err("eol takes nothing")
            return Eol(line)
        if word == "if":
            a, op, b = self.cond(args)
            then, end = self.block(("else", "end"))
            orelse: list[Stmt] = []
            if end[0] == "else":
                orelse, _ = self.block(("end",))
            return If(line, a, op, b, then, orelse)
        if word == "set":
            if len(args) != 3 or args[1] != "=":
                raise self.err("set $var = value")
            return Set(line, self.var(args[0]), self.val(args[2]))
        if word == "fail":
            if len(args) != 1 or not args[0].startswith('"'):
                raise self.err('fail "reason"')
            return Fail(line, _string(args[0], line).decode("ascii", "replace"))
        if word == "switch":
            return self.switch(args)
        if word == "repeat":
            return self.repeat(args)
        if word == "while":
            if not args or args[0] != "peek" or len(args) < 2:
                raise self.err('while peek "c" ... (a loop whose body runs while the next '
                               'byte is one of these)')
            chars = b"".join(self.lit(a) for a in args[1:])
            body, _ = self.block(("end",))
            return WhilePeek(line, chars, body)
        if word == "group":
            if len(args) != 1:
                raise self.err("group PATH")
            body, _ = self.block(("end",))
            return Group(line, self.path(args[0]), body)
        if word == "null":
            if len(args) != 1:
                raise self.err("null PATH")
            return Null(line, self.path(args[0]))
        if word == "record":
            if len(args) != 1 or not _NAME.match(args[0]):
                raise self.err("record TYPE")
            body, _ = self.block(("end",))
            return Record(line, args[0], body)
        if word == "headers":
            return self.headers(args)
        if word == "body":
            return self.body(args)
        if word == "input":
            pos, kw = self.kwargs(args, ("default",))
            if len(pos) != 1:
                raise self.err("input $var [default=N]")
            return Input(line, self.var(pos[0]), self.number(kw.get("default", "0")))
        if word == "consume":
            if args != ["input"]:
                raise self.err("consume input")
            return Consume(line)
        if word in ("end", "else", "case"):
            raise self.err(f"'{word}' without a matching block")
        if not args and _NAME.match(word):
            return Call(line, word)
        raise self.err(f"unknown statement {word!r}")

    def field(self, word: str, args: list[str]) -> Field:
        line = self.line
        if word == "field":
            if not args:
                raise self.err("field PATH MATCHER ...")
            path, args = self.path(args[0]), args[1:]
        else:
            path = None
        store = None
        if "->" in args:
            k = args.index("->")
            if len(args) != k + 2:
                raise self.err("-> takes one variable, at the end")
            store, args = self.var(args[k + 1]), args[:k]
        pos, kw = self.kwargs(args, ("max", "min", "chars", "sep", "quote", "escape", "as"))
        if not pos:
            raise self.err("missing matcher")
        m = self.matcher(pos[0], pos[1:], kw)
        if store is not None and not m.value:
            raise self.err("-> stores an integer: use it with int, uint, digits, u8..u64")
        conv = kw.get("as", "int" if m.value else "bytes")
        if conv not in ("bytes", "int", "error"):
            raise self.err("as= takes bytes or error")
        if m.value != (conv == "int"):
            raise self.err(f"as={conv} does not fit matcher {m.kind}")
        mx = self.number(kw.get("max", str(MAX_SPAN)))
        mn = self.number(kw.get("min", "0"))
        if not 0 <= mn <= mx <= MAX_SPAN:
            raise self.err(f"need 0 <= min <= max <= {MAX_SPAN}")
        return Field(line, path, m, conv, mx, mn, store)

    def matcher(self, kind: str, pos: list[str], kw: dict) -> Matcher:
        cls = kw.get("chars")
        if cls is not None and cls not in CHAR_CLASSES:
            raise self.err(f"chars= takes one of {', '.join(CHAR_CLASSES)}")
        if cls is not None and kind not in ("until", "line"):
            raise self.err("chars= applies to until and line")
        if kind in ("sep", "quote", "escape") or (kw.keys() & {"sep", "quote", "escape"}
                                                 and kind != "delimited"):
            raise self.err("sep=, quote= and escape= apply to delimited")
        if kind == "until":
            if len(pos) != 1:
                raise self.err('until "TERMINATOR"')
            return Matcher("until", lit=self.lit(pos[0]), cls=cls)
        if kind == "line":
            if pos:
                raise self.err("line takes settings only")
            return Matcher("line", cls=cls or "any")
        if kind == "delimited":
            if pos:
                raise self.err("delimited takes settings only")
            sep = self.byte_val(kw.get("sep", '","'))
            quote = self.byte_val(kw.get("quote", '"\\""'))
            escape = self.byte_val(kw["escape"]) if "escape" in kw else quote
            return Matcher("delimited", sep=sep, quote=quote, escape=escape)
        if kind == "fixed":
            if len(pos) != 1:
                raise self.err("fixed N|$var")
            count = self.val(pos[0])
            if count.kind == "int" and count.value < 0:
                raise self.err("fixed takes a length >= 0")
            return Matcher("fixed", count=count)
        if kind in ("int", "uint"):
            if len(pos) != 2 or pos[0] != "until":
                raise self.err(f'{kind} until "TERMINATOR"')
            return Matcher(kind, lit=self.lit(pos[1]))
        if kind == "digits":
            if len(pos) != 1:
                raise self.err("digits N")
            n = self.number(pos[0])
            if not 1 <= n <= 18:
                raise self.err("digits takes 1 to 18")
            return Matcher("digits", width=n)
        if kind in BINARY_INTS:
            if pos:
                raise self.err(f"{kind} takes no arguments")
            n, be = BINARY_INTS[kind]
            return Matcher("binary", width=n, big_endian=be)
        raise self.err(f"unknown matcher {kind!r}")

    def switch(self, args: list[str]) -> Switch:
        if args not in (["byte"], ["peek"]):
            raise self.err("switch byte | switch peek")
        line = self.line
        cases: list[tuple[bytes, list[Stmt]]] = []
        default = None
        seen: set[int] = set()
        if self.i >= len(self.lines) or self.lines[self.i][1][0] != "case":
            raise self.err("switch needs at least one case")
        while True:
            self.line, toks = self.lines[self.i]
            self.i += 1
            if toks[0] == "case":
                if len(toks) < 2:
                    raise self.err('case "c" ["d" ...]')
                chars = b"".join(self.lit(t) for t in toks[1:])
                dup = seen & set(chars)
                if dup:
                    raise self.err(f"byte {bytes(sorted(dup))!r} in two cases")
                seen |= set(chars)
                body, end = self.block(("case", "else", "end"))
                cases.append((chars, body))
            elif toks[0] == "else":
                body, end = self.block(("end",))
                default = body
            if end[0] == "end":
                return Switch(line, args == ["peek"], cases, default)
            self.i -= 1  # the case / else line opens the next arm

    def repeat(self, args: list[str]) -> Repeat:
        line = self.line
        if len(args) > 1:
            raise self.err("repeat [N|$var]")
        if args:
            count = self.val(args[0])
            body, _ = self.block(("end",))
            return Repeat(line, count, body)
        body, end = self.block(("while",))
        return Repeat(line, None, body, self.cond(end[1:]))

    def headers(self, args: list[str]) -> Headers:
        line = self.line
        pos, kw = self.kwargs(args, ("count", "line", "size"))
        if len(pos) != 1:
            raise self.err("headers PATH[] [count=N] [line=N] [size=N]")
        path = self.path(pos[0])
        if not path.endswith("[]"):
            raise self.err("headers collect (name, value) pairs: the path ends with []")
        rules = []
        while True:
            if self.i >= len(self.lines):
                raise SpecError(line, "headers block is never closed")
            self.line, toks = self.lines[self.i]
            self.i += 1
            if toks == ["end"]:
                break
            if toks[0] != "on" or len(toks) < 3:
                raise self.err('on "name" none|length|coding|count [-> $var] [unique]')
            name = self.lit(toks[1])
            if not all(c < 128 and chr(c).isprintable() and c not in b' :' for c in name):
                raise self.err("a header name is a token")
            action, rest = toks[2], toks[3:]
            if action not in HEADER_ACTIONS:
                raise self.err(f"unknown header action {action!r}")
            unique = "unique" in rest
            rest = [t for t in rest if t != "unique"]
            var = 0
            if action != "none":
                if len(rest) != 2 or rest[0] != "->":
                    raise self.err(f"{action} needs -> $var")
                var = self.var(rest[1])
            elif rest:
                raise self.err("none takes no variable")
            rules.append(HeaderRule(name.lower(), action, var, unique))
        if len(rules) > 32:
            raise SpecError(line, "at most 32 header rules")
        return Headers(line, path, rules, self.number(kw.get("count", "100")),
                       self.number(kw.get("line", "8192")), self.number(kw.get("size", "65536")))

    def body(self, args: list[str]) -> Body:
        pos, kw = self.kwargs(args, ("chunked", "length", "trailers", "max"))
        if len(pos) != 1 or not {"chunked", "length", "trailers"} <= kw.keys():
            raise self.err("body PATH chunked=$var length=$var trailers=PATH[] [max=N]")
        trailers = kw["trailers"]
        if not self.path(trailers).endswith("[]"):
            raise self.err("trailers collect (name, value) pairs: the path ends with []")
        mx = self.number(kw.get("max", str(MAX_SPAN)))
        if not 0 <= mx <= MAX_SPAN:
            raise self.err(f"max is 0 to {MAX_SPAN}")
        return Body(self.line, self.path(pos[0]), self.val(kw["chunked"]),
                    self.val(kw["length"]), trailers, mx)


# ---- checks over the whole tree -------------------------------------------------------

def _children(s: Stmt) -> list[list[Stmt]]:
    if isinstance(s, If):
        return [s.then, s.orelse]
    if isinstance(s, Switch):
        return [b for _, b in s.cases] + ([s.default] if s.default is not None else [])
    if isinstance(s, (Repeat, WhilePeek, Group, Record)):
        return [s.body]
    return []


class _Checker:
    """Static checks: calls resolve, fields sit inside records, loops make progress."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.consumes: dict[str, bool] = {}

    def run(self) -> None:
        for body in self.spec.rules.values():
            self.calls(body)
        # which rules always consume a byte: a fixed point, since rules may recurse
        self.consumes = dict.fromkeys(self.spec.rules, True)
        changed = True
        while changed:
            changed = False
            for name, body in self.spec.rules.items():
                c = self.seq_consumes(body)
                if c != self.consumes[name]:
                    self.consumes[name], changed = c, True
        if not self.consumes[self.spec.start]:
            raise SpecError(self.first_line(self.spec.rules[self.spec.start]),
                            f"start rule {self.spec.start} can match without consuming input,"
                            " so the stream would never advance")
        for body in self.spec.rules.values():
            self.loops(body)
        self.visit(self.spec.start, False, set())

    @staticmethod
    def first_line(body: list[Stmt]) -> int:
        return body[0].line if body else 1

    def calls(self, body: list[Stmt]) -> None:
        for s in body:
            if isinstance(s, Call) and s.rule not in self.spec.rules:
                raise SpecError(s.line, f"no rule named {s.rule}")
            for b in _children(s):
                self.calls(b)

    def consumes_stmt(self, s: Stmt) -> bool:
        if isinstance(s, Field):
            m = s.matcher
            return not (m.kind == "fixed" and (m.count.kind != "int" or m.count.value == 0))
        if isinstance(s, (Expect, Eol, Headers)):
            return True
        if isinstance(s, Switch):
            arms = [b for _, b in s.cases] + [s.default or []]
            return (not s.peek) or all(self.seq_consumes(b) for b in arms)
        if isinstance(s, If):
            return self.seq_consumes(s.then) and self.seq_consumes(s.orelse)
        if isinstance(s, Repeat):
            counted = s.count is None or (s.count.kind == "int" and s.count.value > 0)
            return counted and self.seq_consumes(s.body)
        if isinstance(s, (Group, Record)):
            return self.seq_consumes(s.body)
        if isinstance(s, Call):
            return self.consumes[s.rule]
        if isinstance(s, Fail):
            return True  # never falls through
        return False

    def seq_consumes(self, body: list[Stmt]) -> bool:
        return any(self.consumes_stmt(s) for s in body)

    def loops(self, body: list[Stmt]) -> None:
        for s in body:
            if isinstance(s, (WhilePeek, Repeat)) and not (
                isinstance(s, Repeat) and s.count is not None
            ) and not self.seq_consumes(s.body):
                raise SpecError(s.line, "this loop's body can match without consuming input,"
                                " so the loop would never end")
            for b in _children(s):
                self.loops(b)

    def visit(self, rule: str, in_record: bool, done: set) -> None:
        if (rule, in_record) in done:
            return
        done.add((rule, in_record))
        self.walk(self.spec.rules[rule], in_record, done)

    def walk(self, body: list[Stmt], in_record: bool, done: set) -> None:
        for s in body:
            if isinstance(s, Record):
                if in_record:
                    raise SpecError(s.line, "a record cannot start inside another record")
                if s.type not in self.spec.record_types:
                    self.spec.record_types.append(s.type)
                self.walk(s.body, True, done)
                continue
            emits = isinstance(s, (Group, Null, Headers, Body)) or (
                isinstance(s, Field) and s.path is not None)
            if emits and not in_record:
                raise SpecError(s.line, "a field outside any record (wrap it in record TYPE)")
            if isinstance(s, Call):
                self.visit(s.rule, in_record, done)
            for b in _children(s):
                self.walk(b, in_record, done)


def _fields_of(spec: Spec) -> None:
    """record type -> (path, conversion) pairs it may emit, in order of appearance."""

    def collect(body: list[Stmt], out: list, seen_rules: set) -> None:
        for s in body:
            pairs = []
            if isinstance(s, Field) and s.path is not None:
                pairs = [(s.path, s.conv if not s.matcher.value else "int")]
            elif isinstance(s, Null):
                pairs = [(s.path, "null")]
            elif isinstance(s, Group):
                pairs = [(s.path, "group")]
            elif isinstance(s, Headers):
                pairs = [(s.path + ".0", "bytes"), (s.path + ".1", "bytes")]
            elif isinstance(s, Body):
                pairs = [(s.path, "bytes"), (s.trailers + ".0", "bytes"),
                         (s.trailers + ".1", "bytes")]
            for p in pairs:
                if p not in out:
                    out.append(p)
            if isinstance(s, Call) and s.rule not in seen_rules:
                seen_rules.add(s.rule)
                collect(spec.rules[s.rule], out, seen_rules)
            for b in _children(s):
                collect(b, out, seen_rules)

    def records(body: list[Stmt], seen_rules: set) -> None:
        for s in body:
            if isinstance(s, Record):
                out = spec.record_fields.setdefault(s.type, [])
                collect(s.body, out, set())
            elif isinstance(s, Call) and s.rule not in seen_rules:
                seen_rules.add(s.rule)
                records(spec.rules[s.rule], seen_rules)
            for b in _children(s):
                records(b, seen_rules)

    records(spec.rules[spec.start], {spec.start})


def parse_spec(text: str) -> Spec:
    """Parse and check a spec; raise SpecError(line, reason) if it is not valid."""
    spec = _Parser(text).spec()
    _Checker(spec).run()
    _fields_of(spec)
    return spec


def load_spec(path: str | Path) -> Spec:
    return parse_spec(Path(path).read_text(encoding="utf-8"))
