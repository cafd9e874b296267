"""Generate the C of a record parser from a checked spec (see vtlparse.h for the ABI).

The spec's rules become one function, vp_feed, in which every statement is straight-line
code and every place that can wait for input is a label with a number: vp_feed saves the
number in the state when the input runs out (or the event array fills) and jumps back to
it on the next call. Calls between rules push a frame that holds the return point and the
rule's loop counters, so recursive formats (RESP arrays) resume at any depth.
"""

from __future__ import annotations

import json

from vtlstack import _pspec as S

GENERATOR_VERSION = 2


def _c_string(b: bytes) -> str:
    out = []
    for c in b:
        ch = chr(c)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 32 <= c < 127:
            out.append(ch)
        else:
            out.append(f"\\{c:03o}")
    return '"' + "".join(out) + '"'


def _bytes_init(b: bytes) -> str:
    return "{" + ", ".join(str(c) for c in b) + "}"


def _kmp(lit: bytes) -> bytes:
    fail, k = [0] * len(lit), 0
    for i in range(1, len(lit)):
        while k and lit[i] != lit[k]:
            k = fail[k - 1]
        if lit[i] == lit[k]:
            k += 1
        fail[i] = k
    return bytes(fail)


def _char_class(name: str) -> set[int]:
    tchar = set(b"!#$%&'*+-.^_`|~0123456789") | set(range(65, 91)) | set(range(97, 123))
    return {
        "any": set(range(256)),
        "tchar": tchar,
        "vchar": set(range(0x21, 0x7F)),
        "text": set(range(0x21, 0x7F)) | {0x20, 0x09} | set(range(0x80, 0x100)),
        "digit": set(range(0x30, 0x3A)),
        "alpha": set(range(65, 91)) | set(range(97, 123)),
    }[name]


class _Gen:
    def __init__(self, spec: S.Spec) -> None:
        self.spec = spec
        self.code: list[str] = []
        self.statics: list[str] = []
        self.resumes: list[str] = []
        self.nlabel = 0
        self.fields: list[tuple[str, str]] = []
        self.delims: list[S.Matcher] = []
        self.classes: dict[tuple[str, bool], str] = {}
        self.returns: dict[str, list[str]] = {}
        self.slots = 1
        self.depth_in_rule = 0
        self.todo: list[str] = []

    # -- helpers
    def label(self, what: str = "L") -> str:
        self.nlabel += 1
        return f"{what}{self.nlabel}"

    def resume(self) -> tuple[int, str]:
        """A new resume point: its number and its label, placed by the caller."""
        lab = self.label("R")
        self.resumes.append(lab)
        return len(self.resumes) - 1, lab

    def emit(self, line: str) -> None:
        self.code.append(line)

    def static(self, decl: str) -> None:
        self.statics.append(decl)

    def field_id(self, path: str, conv: str) -> int:
        key = (path, conv)
        if key not in self.fields:
            self.fields.append(key)
        return self.fields.index(key)

    def val(self, v: S.Val) -> str:
        if v.kind == "int":
            return f"INT64_C({v.value})"
        return f"st->{'vars' if v.kind == 'var' else 'params'}[{v.value}]"

    def delim(self, m: S.Matcher) -> int:
        """The index of a delimited matcher's class table (st->cls) in the state."""
        for k, d in enumerate(self.delims):
            if d is m:
                return k
        self.delims.append(m)
        return len(self.delims) - 1

    def lit(self, b: bytes) -> str:
        name = self.label("lit")
        self.static(f"static const uint8_t {name}[] = {_bytes_init(b)};")
        return name

    def cls(self, name: str, line: bool) -> str:
        key = (name, line)
        if key not in self.classes:
            allowed = _char_class(name) - ({13, 10} if line else set())
            cname = f"cls_{name}{'_line' if line else ''}"
            table = "".join("1," if c in allowed else "0," for c in range(256))
            self.static(f"static const uint8_t {cname}[256] = {{{table}}};")
            self.classes[key] = cname
        return self.classes[key]

    def wait(self, rid: int, on_room: bool = False) -> None:
        """After a matcher call: suspend on MORE (or ROOM), fail on FAIL."""
        self.emit(f"  if (r == VP_MORE) {{ b->node = {rid}; goto more; }}")
        if on_room:
            self.emit(f"  if (r == VP_ROOM) {{ b->node = {rid}; goto full; }}")
        self.emit("  if (r != VP_DONE) goto fail;")

    def room(self, n: int) -> None:
        rid, lab = self.resume()
        self.emit(f"{lab}:")
        self.emit(f"  if (out->cap - out->n < {n}) {{ b->node = {rid}; goto full; }}")

    # -- statements
    def block(self, body: list[S.Stmt]) -> None:
        for s in body:
            self.emit(f"  /* line {s.line}: {type(s).__name__.lower()} */")
            getattr(self, "s_" + type(s).__name__.lower())(s)

    def s_field(self, s: S.Field) -> None:
        m = s.matcher
        emits = s.path is not None
        if emits:
            self.room(1)
        self.emit("  vp_begin(b, POS);")
        if m.kind == "fixed":
            self.emit(f"  b->m_cnt = {self.val(m.count)};")
            self.emit('  if (b->m_cnt < 0) FAIL_AT(POS, "negative length");')
            self.emit(f'  if (b->m_cnt > {s.max}) FAIL_AT(POS, "field too long");')
        rid, lab = self.resume()
        self.emit(f"{lab}:")
        if m.kind == "until":
            n = len(m.lit)
            cls = "NULL" if m.cls in (None, "any") else self.cls(m.cls, False)
            self.emit(f"  r = vp_until(b, {self.lit(m.lit)}, {self.lit(_kmp(m.lit))}, {n}, "
                      f"{cls}, buf, &p, end, base);")
        elif m.kind == "line":
            self.emit(f"  r = vp_line(b, {self.cls(m.cls, True)}, buf, &p, end, base);")
        elif m.kind == "delimited":
            k = self.delim(m)
            self.emit("  if (p == end && b->eof && AT_BOUNDARY) goto stop;")
            self.emit(f"  r = vp_delimited(b, st->cls[{k}], (uint8_t){self.val(m.sep)}, "
                      f"(uint8_t){self.val(m.quote)}, (uint8_t){self.val(m.escape)}, {s.max}, "
                      "&st->vars[0], buf, &p, end, base);")
        elif m.kind == "fixed":
            self.emit("  r = vp_fixed(b, buf, &p, end, base);")
        elif m.kind in ("int", "uint"):
            self.emit(f"  r = vp_int(b, {int(m.kind == 'int')}, {self.lit(m.lit)}, "
                      f"{len(m.lit)}, buf, &p, end, base);")
        elif m.kind == "digits":
            self.emit(f"  r = vp_digits(b, {m.width}, buf, &p, end, base);")
        else:
            self.emit(f"  r = vp_uint(b, {m.width}, {int(m.big_endian)}, &p, end);")
        if not m.value:
            # The limit counts the field's bytes seen so far, not a terminator that may be
            # only partly in (until's partial match, line's CR), and comes before a later
            # error in the same field: then an input is too long, or not, however it is cut.
            seen = {"delimited": "vp_delimited_len(b, POS)",
                    "until": "POS - b->m_start - b->m_i",
                    "line": "(b->m_sub ? b->m_end : POS) - b->m_start"}.get(
                        m.kind, "POS - b->m_start")
            self.emit(f"  if (r == VP_MORE && {seen} > {s.max}) "
                      f'FAIL_AT(b->m_start + {s.max}, "field too long");')
            if m.kind in ("until", "line"):
                self.emit(f"  if (r == VP_FAIL && b->err_off > b->m_start + {s.max}) "
                          f'FAIL_AT(b->m_start + {s.max}, "field too long");')
        self.wait(rid)
        if not m.value:
            self.emit(f"  if (b->m_end - b->m_start > {s.max}) "
                      f'FAIL_AT(b->m_start + {s.max}, "field too long");')
            if s.min:
                self.emit(f"  if (b->m_end - b->m_start < {s.min}) "
                          'FAIL_AT(b->m_start, "field too short");')
        if emits:
            fid = self.field_id(s.path, "int" if m.value else s.conv)
            if m.value:
                self.emit(f"  vp_emit(out, VP_EV_VALUE, {fid}, b->m_start, 0, b->m_val, 0);")
            else:
                esc = "0"
                if m.kind == "delimited":
                    esc = f"({self.val(m.quote)} << 8 | {self.val(m.escape)})"
                self.emit(f"  vp_emit(out, VP_EV_SPAN, {fid}, b->m_start, b->m_end - b->m_start,"
                          f" {esc}, b->m_flags);")
        if s.store is not None:
            self.emit(f"  st->vars[{s.store}] = b->m_val;")

    def s_expect(self, s: S.Expect) -> None:
        self.emit("  vp_begin(b, POS);")
        rid, lab = self.resume()
        reason = _c_string(b"expected " + repr(s.lit)[1:].encode())
        self.emit(f"{lab}:")
        self.emit(f"  r = vp_expect(b, {self.lit(s.lit)}, {len(s.lit)}, {int(s.ci)}, buf, &p, "
                  f"end, base, {reason});")
        self.wait(rid)

    def s_eol(self, s: S.Eol) -> None:
        self.emit("  vp_begin(b, POS);")
        rid, lab = self.resume()
        self.emit(f"{lab}:")
        self.emit("  r = vp_line(b, NULL, buf, &p, end, base);")
        self.wait(rid)

    def s_if(self, s: S.If) -> None:
        lelse, lend = self.label(), self.label()
        self.emit(f"  if (!({self.val(s.a)} {s.op} {self.val(s.b)})) goto {lelse};")
        self.block(s.then)
        self.emit(f"  goto {lend};")
        self.emit(f"{lelse}:;")
        self.block(s.orelse)
        self.emit(f"{lend}:;")

    def s_set(self, s: S.Set) -> None:
        self.emit(f"  st->vars[{s.var}] = {self.val(s.value)};")

    def s_fail(self, s: S.Fail) -> None:
        self.emit(f"  FAIL_AT(POS, {_c_string(s.reason.encode())});")

    def s_switch(self, s: S.Switch) -> None:
        rid, lab = self.resume()
        lend = self.label()
        arms = [self.label() for _ in s.cases]
        ldef = self.label()
        self.emit(f"{lab}:")
        if s.peek:  # at the end of the stream a peek sees no byte: the else arm
            self.emit(f"  if (p == end && b->eof) goto {ldef};")
        self.emit(f"  if (p == end) {{ b->node = {rid}; goto more; }}")
        self.emit("  switch (*p) {")
        for (chars, _), arm in zip(s.cases, arms, strict=True):
            cases = " ".join(f"case {c}:" for c in chars)
            self.emit(f"  {cases} {'' if s.peek else 'p++; '}goto {arm};")
        self.emit(f"  default: goto {ldef};")
        self.emit("  }")
        for (_, body), arm in zip(s.cases, arms, strict=True):
            self.emit(f"{arm}:;")
            self.block(body)
            self.emit(f"  goto {lend};")
        self.emit(f"{ldef}:;")
        if s.default is None:
            if s.peek:
                self.emit("  if (p == end) goto more;")
            self.emit('  FAIL_AT(POS, "unexpected byte");')
        else:
            if not s.peek:
                self.emit("  p++;")
            self.block(s.default)
        self.emit(f"{lend}:;")

    def s_repeat(self, s: S.Repeat) -> None:
        lloop, lend = self.label(), self.label()
        slot = self.depth_in_rule
        self.depth_in_rule += 1
        self.slots = max(self.slots, self.depth_in_rule)
        if s.count is not None:
            self.emit(f"  fr->cnt[{slot}] = {self.val(s.count)};")
            self.emit(f'  if (fr->cnt[{slot}] < 0) FAIL_AT(POS, "negative repeat count");')
            self.emit(f"{lloop}:")
            self.emit(f"  if (fr->cnt[{slot}] == 0) goto {lend};")
            self.emit(f"  fr->cnt[{slot}]--;")
            self.emit("  SPIN();")
            self.block(s.body)
            self.emit(f"  goto {lloop};")
        else:
            a, op, b = s.cond
            self.emit(f"{lloop}:")
            self.emit("  SPIN();")
            self.block(s.body)
            self.emit(f"  if ({self.val(a)} {op} {self.val(b)}) goto {lloop};")
        self.emit(f"{lend}:;")
        self.depth_in_rule -= 1

    def s_whilepeek(self, s: S.WhilePeek) -> None:
        rid, lab = self.resume()
        lend = self.label()
        self.emit(f"{lab}:")
        self.emit(f"  if (p == end && b->eof) goto {lend};")
        self.emit(f"  if (p == end) {{ b->node = {rid}; goto more; }}")
        cond = " && ".join(f"*p != {c}" for c in s.chars)
        self.emit(f"  if ({cond}) goto {lend};")
        self.emit("  SPIN();")
        self.block(s.body)
        self.emit(f"  goto {lab};")
        self.emit(f"{lend}:;")

    def s_group(self, s: S.Group) -> None:
        fid = self.field_id(s.path, "group")
        self.room(1)
        self.emit(f"  vp_emit(out, VP_EV_BEGIN, {fid}, POS, 0, 0, 0);")
        self.block(s.body)
        self.room(1)
        self.emit(f"  vp_emit(out, VP_EV_END, {fid}, POS, 0, 0, 0);")

    def s_null(self, s: S.Null) -> None:
        fid = self.field_id(s.path, "null")
        self.room(1)
        self.emit(f"  vp_emit(out, VP_EV_NULL, {fid}, POS, 0, 0, 0);")

    def s_call(self, s: S.Call) -> None:
        ret = self.label("ret")
        self.returns.setdefault(s.rule, []).append(ret)
        self.todo.append(s.rule)
        k = len(self.returns[s.rule]) - 1
        self.emit('  if (b->depth + 1 >= VP_DEPTH) FAIL_AT(POS, "nesting too deep");')
        self.emit("  SPIN();")
        self.emit(f"  fr = &st->frames[++b->depth]; fr->ret = {k}; goto rule_{s.rule};")
        self.emit(f"{ret}:;")

    def rows_field(self, s: S.Record) -> S.Field | None:
        """The field of a record that vp_rows can take whole: the stream is this record
        and nothing else (the start rule's only statement, a rule no other calls), and the
        record is one delimited field repeated while $term == 0, without a store or min."""
        sp = self.spec
        if sp.rules[sp.start] != [s] or self.calls_to(sp.start):
            return None
        if len(s.body) != 1 or not isinstance(s.body[0], S.Repeat):
            return None
        rep = s.body[0]
        if rep.count is not None or rep.cond != (S.Val("var", 0), "==", S.Val("int", 0)):
            return None
        if len(rep.body) != 1 or not isinstance(rep.body[0], S.Field):
            return None
        f = rep.body[0]
        if f.matcher.kind != "delimited" or f.path is None or f.store is not None or f.min:
            return None
        return f

    def calls_to(self, rule: str) -> bool:
        todo = [st for body in self.spec.rules.values() for st in body]
        while todo:
            st = todo.pop()
            if isinstance(st, S.Call) and st.rule == rule:
                return True
            todo += [c for body in S._children(st) for c in body]
        return False

    def s_record(self, s: S.Record) -> None:
        tid = self.spec.record_types.index(s.type)
        f = self.rows_field(s)
        if f is not None:
            m = f.matcher
            k = self.delim(m)
            self.emit(f"  if (p != end) vp_rows(st->cls[{k}], (uint8_t){self.val(m.sep)}, "
                      f"(uint8_t){self.val(m.quote)}, (uint8_t){self.val(m.escape)}, {f.max}, "
                      f"{self.spec.record_limit}, {self.field_id(f.path, f.conv)}, {tid}, "
                      "buf, &p, end, base, out);")
        self.emit("  b->in_record = 1; b->rec_start = POS;")
        for i, (_, init) in enumerate(self.spec.vars):
            self.emit(f"  st->vars[{i}] = INT64_C({init});")
        self.block(s.body)
        self.room(1)
        limit = self.spec.record_limit
        self.emit(f"  if (POS - b->rec_start > {limit}) "
                  f'FAIL_AT(b->rec_start + {limit}, "record too long");')
        self.emit(f"  vp_emit(out, VP_EV_RECORD, {tid}, b->rec_start, POS - b->rec_start, 0, 0);")
        self.emit("  b->in_record = 0;")

    def header_cfg(self, rules: list[S.HeaderRule], path: str, count: int, line: int,
                   size: int) -> str:
        name = self.label("hcfg")
        actions = {"none": "VP_HA_NONE", "length": "VP_HA_LENGTH", "coding": "VP_HA_CODING",
                   "count": "VP_HA_COUNT"}
        rows = []
        for r in rules:
            dup = _c_string(b"duplicate " + r.name + b" header") if r.unique else "NULL"
            rows.append(f"{{{_c_string(r.name)}, {dup}, {len(r.name)}, {r.var}, "
                        f"{actions[r.action]}}}")
        table = "NULL"
        if rows:
            table = f"{name}_rules"
            self.static(f"static const vp_hdr_rule {table}[] = {{{', '.join(rows)}}};")
        nid, vid = self.field_id(path + ".0", "bytes"), self.field_id(path + ".1", "bytes")
        self.static(f"static const vp_hdr_cfg {name} = {{{table}, {len(rules)}, {count}, "
                    f"{line}, {size}, {nid}, {vid}}};")
        return name

    def s_headers(self, s: S.Headers) -> None:
        cfg = self.header_cfg(s.rules, s.path, s.count, s.max_line, s.size)
        self.emit("  vp_hdrs_begin(&b->h, POS);")
        rid, lab = self.resume()
        self.emit(f"{lab}:")
        self.emit(f"  r = vp_headers(b, &{cfg}, st->vars, out, buf, &p, end, base);")
        self.wait(rid, on_room=True)

    def s_body(self, s: S.Body) -> None:
        # trailers share the limits of a header block
        tcfg = self.header_cfg([], s.trailers, 100, 8192, 65536)
        fid = self.field_id(s.path, "bytes")
        self.room(1)
        self.emit("  vp_begin(b, POS);")
        self.emit(f"  if ({self.val(s.chunked)} == 1) {{ b->m_sub = 1; vp_chunk_begin(&b->c); }}")
        self.emit(f"  else if ({self.val(s.length)} >= 0) {{")
        self.emit(f"    b->m_sub = 2; b->m_cnt = {self.val(s.length)};")
        self.emit(f'    if (b->m_cnt > {s.max}) FAIL_AT(POS, "body too long");')
        self.emit("  } else b->m_sub = 3;")
        rid, lab = self.resume()
        lend = self.label()
        self.emit(f"{lab}:")
        self.emit("  if (b->m_sub == 1) {")
        self.emit(f"    r = vp_chunked(b, {fid}, {s.max}, &{tcfg}, st->vars, out, buf, &p, end,"
                  " base);")
        self.emit(f"    if (r == VP_MORE) {{ b->node = {rid}; goto more; }}")
        self.emit(f"    if (r == VP_ROOM) {{ b->node = {rid}; goto full; }}")
        self.emit("    if (r != VP_DONE) goto fail;")
        self.emit(f"    goto {lend};")
        self.emit("  }")
        self.emit("  if (b->m_sub == 2) {")
        self.emit("    r = vp_fixed(b, buf, &p, end, base);")
        self.emit(f"    if (r == VP_MORE) {{ b->node = {rid}; goto more; }}")
        self.emit("  } else { /* until the end of the stream */")
        self.emit("    p = end;")
        self.emit(f"    if (POS - b->m_start > {s.max}) "
                  f'FAIL_AT(b->m_start + {s.max}, "body too long");')
        self.emit(f"    if (!b->eof) {{ b->node = {rid}; goto more; }}")
        self.emit("    b->m_end = POS;")
        self.emit("  }")
        self.emit("  if (b->m_end > b->m_start)")
        self.emit(f"    vp_emit(out, VP_EV_SPAN, {fid}, b->m_start, b->m_end - b->m_start, 0, 0);")
        self.emit(f"{lend}:;")

    def s_input(self, s: S.Input) -> None:
        self.emit(f"  st->vars[{s.var}] = b->qlen ? b->q[b->qhead] : INT64_C({s.default});")

    def s_consume(self, s: S.Consume) -> None:
        self.emit("  if (b->qlen) { b->qhead = (b->qhead + 1) % VP_QCAP; b->qlen--; }")

    # -- the whole file
    def rules(self) -> None:
        rid, lab = self.resume()  # resume point 0: the top of the stream
        assert rid == 0
        self.emit(f"{lab}:")
        self.emit("  b->depth = 0; fr = &st->frames[0];")
        self.s_call(S.Call(0, self.spec.start))
        self.emit(f"  goto {lab};")
        done: set[str] = set()
        while self.todo:
            name = self.todo.pop()
            if name in done:
                continue
            done.add(name)
            self.emit(f"rule_{name}:")
            self.depth_in_rule = 0
            self.block(self.spec.rules[name])
            self.emit(f"  goto return_{name};")
        # Return points are known once every rule is generated: a rule may be called from
        # code generated after it.
        for name in sorted(done):
            self.emit(f"return_{name}:")
            self.emit("  { uint32_t k = fr->ret; fr = &st->frames[--b->depth]; switch (k) {")
            for k, ret in enumerate(self.returns[name]):
                self.emit(f"    case {k}: goto {ret};")
            self.emit("  } goto fail; }")

    def meta(self) -> str:
        sp = self.spec
        return json.dumps({
            "abi": 1,
            "format": sp.format,
            "options": [{"name": o.name, "kind": o.kind, "default": o.default}
                        for o in sp.options],
            "fields": [{"path": p, "as": c} for p, c in self.fields],
            "records": [{"name": t, "fields": sp.record_fields.get(t, [])}
                        for t in sp.record_types],
        }, separators=(",", ":"))

    def init_code(self) -> list[str]:
        out = ["  for (size_t i = 0; i < VP_NPARAMS; i++) st->params[i] = params[i];"]
        for k, m in enumerate(self.delims):
            sep, quote, esc = (self.val(m.sep), self.val(m.quote), self.val(m.escape))
            out += [
                f"  if ({sep} < 0 || {sep} > 255 || {quote} < 0 || {quote} > 255 || "
                f"{esc} < 0 || {esc} > 255) return \"a delimiter, quote or escape is one byte\";",
                f"  if ({sep} == {quote} || {sep} == {esc} || {sep} == 13 || {sep} == 10 || "
                f"{quote} == 13 || {quote} == 10 || {esc} == 13 || {esc} == 10)",
                '    return "delimiter, quote and escape must differ and not be CR or LF";',
                f"  st->cls[{k}][{sep}] = 1;",
                f"  st->cls[{k}][{quote}] = 1;",
                f"  st->cls[{k}][{esc}] = 1;",
                f"  st->cls[{k}][13] = 1;",
                f"  st->cls[{k}][10] = 1;",
            ]
        for i, (_, init) in enumerate(self.spec.vars):
            out.append(f"  st->vars[{i}] = INT64_C({init});")
        return out

    def source(self) -> str:
        self.rules()
        sp = self.spec
        resume_cases = " ".join(f"case {i}: goto {lab};" for i, lab in enumerate(self.resumes))
        meta = self.meta()
        return "\n".join([
            f"/* Generated by vtlstack (generator {GENERATOR_VERSION}) from the spec of format "
            f"{sp.format}. Do not edit: edit the spec. */",
            "#include <vtlparse.h>",
            "",
            "#define VP_EXPORT __attribute__((visibility(\"default\")))",
            f"#define VP_NPARAMS {len(sp.options)}",
            f"#define VP_DEPTH {sp.depth + 1}",
            "#define POS VP_OFF(p)",
            "#define AT_BOUNDARY (!b->in_record || POS == b->rec_start)",
            "#define FAIL_AT(o, why) do { b->err = (why); b->err_off = (o); goto fail; } while (0)",
            "#define SPIN() do { if (POS != b->spin_pos) { b->spin_pos = POS; b->spin = 0; } "
            "else if (++b->spin > VP_SPIN_MAX) FAIL_AT(POS, \"loop makes no progress\"); } "
            "while (0)",
            "",
            f"typedef struct vp_frame {{ uint32_t ret; int64_t cnt[{self.slots}]; }} vp_frame;",
            "typedef struct vp_state {",
            "  vp_base b;",
            f"  int64_t params[{max(1, len(sp.options))}];",
            f"  int64_t vars[{len(sp.vars)}];",
            f"  uint8_t cls[{max(1, len(self.delims))}][256];",
            "  vp_frame frames[VP_DEPTH];",
            "} vp_state;",
            "",
            *self.statics,
            "",
            "VP_EXPORT int vp_abi(void) { return VP_ABI; }",
            f"VP_EXPORT const char *vp_meta(void) {{ return {_c_string(meta.encode())}; }}",
            "VP_EXPORT size_t vp_state_size(void) { return sizeof(vp_state); }",
            "",
            "VP_EXPORT const char *vp_init(void *vst, const int64_t *params) {",
            "  vp_state *st = (vp_state *)vst;",
            "  memset(st, 0, sizeof *st);",
            *self.init_code(),
            "  return NULL;",
            "}",
            "",
            "VP_EXPORT int vp_push(void *vst, int64_t v) {",
            "  vp_base *b = &((vp_state *)vst)->b;",
            "  if (b->qlen == VP_QCAP) return -1;",
            "  b->q[(b->qhead + b->qlen++) % VP_QCAP] = v;",
            "  return 0;",
            "}",
            "",
            "VP_EXPORT const char *vp_error(const void *vst, uint64_t *off) {",
            "  const vp_base *b = &((const vp_state *)vst)->b;",
            "  *off = b->err_off;",
            "  return b->dead ? b->err : NULL;",
            "}",
            "",
            "VP_EXPORT int vp_feed(void *vst, const uint8_t *data, size_t len, uint64_t base, "
            "vp_out *out) {",
            "  static const uint8_t nothing[1];",
            "  vp_state *st = (vp_state *)vst;",
            "  vp_base *b = &st->b;",
            "  const uint8_t *buf = data ? data : nothing;",
            "  const uint8_t *p = buf, *end = buf + len;",
            "  vp_frame *fr = &st->frames[b->depth];",
            "  int r = VP_DONE;",
            "  (void)r;",
            "  out->n = 0;",
            "  out->consumed = 0;",
            "  if (b->dead) return VP_ERROR;",
            "  if (base != b->pos) FAIL_AT(base, \"input is not contiguous with the last feed\");",
            "  if (b->closed) {",
            "    if (len == 0) return VP_OK;",
            "    FAIL_AT(base, \"data after the end of the stream\");",
            "  }",
            f"  switch (b->node) {{ {resume_cases} }}",
            "  goto fail;",
            *self.code,
            "more:",
            "  if (b->eof) {",
            "    if (AT_BOUNDARY) goto stop;",
            "    FAIL_AT(POS, \"unexpected end of stream\");",
            "  }",
            f"  if (b->in_record && POS - b->rec_start > {sp.record_limit})",
            f"    FAIL_AT(b->rec_start + {sp.record_limit}, \"record too long\");",
            "  b->pos = POS;",
            "  out->consumed = (uint64_t)(p - buf);",
            "  return VP_OK;",
            "full:",
            "  b->pos = POS;",
            "  out->consumed = (uint64_t)(p - buf);",
            "  return VP_FULL;",
            "stop:",
            "  b->closed = 1;",
            "  b->pos = POS;",
            "  out->consumed = (uint64_t)(p - buf);",
            "  return VP_OK;",
            "fail:",
            "  if (!b->err) { b->err = \"internal error: bad resume point\"; b->err_off = POS; }",
            "  b->dead = 1;",
            "  out->consumed = (uint64_t)(p - buf);",
            "  return VP_ERROR;",
            "}",
            "",
            "VP_EXPORT int vp_finish(void *vst, vp_out *out) {",
            "  vp_state *st = (vp_state *)vst;",
            "  st->b.eof = 1;",
            "  return vp_feed(vst, NULL, 0, st->b.pos, out);",
            "}",
            "",
        ])


def generate(spec: S.Spec) -> str:
    """The C source of the parser for `spec` (one translation unit)."""
    return _Gen(spec).source()
