#!/usr/bin/env python3
"""A client of rpc-core's wire protocol in Python, written from docs/wire.md alone.

It shows that the document is enough to speak the protocol from another language, and checks
a running `example_server` against it, section by section:

    cargo run -p rpc-examples --bin example_server      # terminal 1: 127.0.0.1:7000
    python3 rpc-examples/interop/wire_client.py 127.0.0.1:7000

It exits 0 after printing "all checks passed", and 1 at the first answer that differs from what
the document says. `cargo test -p rpc-examples` runs it against a server of its own wherever
python3 is installed. Only the standard library is used; wire.py holds what it shares with
wire_server.py.
"""
import socket
import sys

from wire import (BYTES, CANCEL, CREDIT, ENUM, GOAWAY, RESPONSE, STREAM_END, STREAM_ITEM,
                  STREAMED, TUPLE, Connection, Reader, client_hello, decode_hello,
                  expected_fingerprints, fnv1a, item_cost, request, string, varint, zigzag)


def call(conn, id, method, args=b"", **options):
    conn.send(request(id, method, args, **options))
    answer = conn.message()
    assert answer["kind"] == RESPONSE and answer["id"] == id, answer
    return answer


# ---------------------------------------------------------------- section 6.1: schemas


def schema(r):
    tag = r.varint()
    if tag <= 16:
        return tag
    if tag in (17, 18):
        return (tag, schema(r))
    if tag == 19:
        return (tag, schema(r), schema(r))
    if tag == 20:
        return (tag, [schema(r) for _ in range(r.varint())])
    if tag == 21:
        return (tag, r.string())
    raise AssertionError(f"a Schema of tag {tag}")


def fields(r):
    return [(r.string(), schema(r)) for _ in range(r.varint())]


def variant(r, tag):
    if tag == 0:
        return None
    if tag == 1:
        return schema(r)
    if tag == 2:
        return [schema(r) for _ in range(r.varint())]
    if tag == 3:
        return fields(r)
    raise AssertionError(f"a Variant of tag {tag}")


def type_def(r):
    tag = r.varint()
    if tag <= 3:
        return (tag, variant(r, tag))
    if tag == 4:
        variants = []
        for _ in range(r.varint()):
            name, shape = r.string(), r.varint()
            variants.append((name, (shape, variant(r, shape))))
        return (tag, variants)
    raise AssertionError(f"a TypeDef of tag {tag}")


def decode_service_schema(body):
    r = Reader(body)
    name = r.string()
    methods = {}
    for _ in range(r.varint()):
        method = r.string()
        args = fields(r)
        upload = (r.string(), schema(r)) if r.byte() else None
        result = schema(r)
        # 0: one value, 1: a stream, 2: a stream or, instead of it, an error of this schema.
        download = r.varint()
        download = (download, schema(r) if download == 2 else None)
        idempotent, fingerprint = r.byte(), r.varint()
        methods[method] = (args, upload, result, download, idempotent, fingerprint)
    types = {r.string(): type_def(r) for _ in range(r.varint())}
    assert r.done(), "bytes after the schema"
    return name, methods, types


# ---------------------------------------------------------------- section 5.1 from 6.1


UNIT, U8, OPTION, SEQ, MAP, TUPLE_SCHEMA, NAMED = 0, 7, 17, 18, 19, 20, 21
ENUM_DEF = 4


class Canonical:
    """A method's canonical form (section 5.1), written from its described schema (6.1)."""

    def __init__(self, types):
        self.types = types

    def method(self, args, upload, result, download):
        streams, error = download
        shape = (1 if upload else 0) + (2 if streams else 0) + (4 if error is not None else 0)
        out = bytes([shape])
        out += self.tuple_node([schema for _, schema in args], [])
        if upload:
            out += bytes([STREAMED]) + self.node(upload[1], [])
        if streams:
            out += bytes([STREAMED])
        out += self.node(result, [])
        if error is not None:
            out += self.node(error, [])
        return out

    def named_in(self, schema):
        """The names a schema refers to, through options, sequences, maps and tuples."""
        if isinstance(schema, int):
            return []
        tag = schema[0]
        if tag in (OPTION, SEQ):
            return self.named_in(schema[1])
        if tag == MAP:
            return self.named_in(schema[1]) + self.named_in(schema[2])
        if tag == TUPLE_SCHEMA:
            return [name for item in schema[1] for name in self.named_in(item)]
        return [schema[1]]

    def members(self, name):
        """The schemas a type's definition holds: fields, items, variants' contents."""
        tag, body = self.types[name]
        if tag == ENUM_DEF:
            return [schema for _, shape in body for schema in self.shape_items(shape)]
        return self.shape_items((tag, body))

    @staticmethod
    def shape_items(shape):
        tag, body = shape
        if tag == 0:
            return []
        if tag == 1:
            return [body]
        if tag == 2:
            return body
        return [schema for _, schema in body]

    def recursive(self, name):
        """Whether the type's definition reaches itself through any number of other types."""
        seen, todo = set(), [n for s in self.members(name) for n in self.named_in(s)]
        while todo:
            next_name = todo.pop()
            if next_name == name:
                return True
            if next_name not in seen:
                seen.add(next_name)
                todo.extend(n for s in self.members(next_name) for n in self.named_in(s))
        return False

    def is_named_node(self, name):
        return self.types[name][0] == ENUM_DEF or self.recursive(name)

    def elements(self, schema):
        if schema == UNIT:
            return []
        if isinstance(schema, tuple) and schema[0] == TUPLE_SCHEMA:
            return [e for item in schema[1] for e in self.elements(item)]
        if isinstance(schema, tuple) and schema[0] == NAMED:
            if self.is_named_node(schema[1]):
                return [schema]
            return [e for member in self.members(schema[1]) for e in self.elements(member)]
        return [schema]

    def tuple_node(self, schemas, stack):
        elements = [e for schema in schemas for e in self.elements(schema)]
        if not elements:
            return bytes([0])
        if len(elements) == 1:
            return self.node(elements[0], stack)
        return (bytes([TUPLE]) + varint(len(elements))
                + b"".join(self.node(e, stack) for e in elements))

    def node(self, schema, stack):
        if isinstance(schema, int):
            return self.tuple_node([], stack) if schema == UNIT else bytes([schema])
        tag = schema[0]
        if tag == OPTION:
            return bytes([17]) + self.node(schema[1], stack)
        if tag == SEQ:
            if schema[1] == U8:
                return bytes([BYTES])
            return bytes([18]) + self.node(schema[1], stack)
        if tag == MAP:
            return bytes([19]) + self.node(schema[1], stack) + self.node(schema[2], stack)
        if tag == TUPLE_SCHEMA:
            return self.tuple_node(schema[1], stack)
        name = schema[1]
        if not self.is_named_node(name):
            return self.tuple_node([schema], stack)
        if name in stack:
            return bytes([22]) + varint(len(stack) - 1 - stack.index(name))
        if self.recursive(name):
            return bytes([23]) + self.definition(name, stack + [name])
        return self.definition(name, stack)

    def definition(self, name, stack):
        tag, body = self.types[name]
        if tag != ENUM_DEF:
            return self.tuple_node(self.shape_items((tag, body)), stack)
        out = bytes([ENUM]) + varint(len(body))
        for _, (shape, content) in body:
            if shape == 0:
                out += bytes([0])
            elif shape == 1:
                out += self.node(content, stack)
            else:
                out += self.tuple_node(self.shape_items((shape, content)), stack)
        return out


# ---------------------------------------------------------------- the checks


def check(holds, what):
    if not holds:
        raise AssertionError(what)
    print("ok:", what)


def calls(addr):
    conn = Connection.connect(addr)
    conn.send(client_hello("Calc"))
    hello = decode_hello(conn.frame())
    check(hello["version"] == 2 and hello["service"] == "Calc", "the server's Hello names Calc")
    tables = {name: dict(methods) for name, methods in hello["services"]}
    check(sorted(tables) == ["Calc", "Evaluator", "FileStore", "LogTail"],
          "its Hello lists four services")
    check(dict(hello["methods"]) == tables["Calc"], "the own service's table is Calc's")
    for (service, method), fingerprint in expected_fingerprints().items():
        check(tables[service][method] == fingerprint, f"{service}.{method}'s fingerprint")

    answer = call(conn, 1, "add", zigzag(2) + zigzag(3), timeout_ms=100)
    check(answer["ok"] and answer["body"] == b"\x00" + zigzag(5), "add(2, 3) is Ok(5)")
    answer = call(conn, 2, "div", zigzag(1) + zigzag(0))
    check(answer["ok"] and answer["body"] == b"\x01\x00", "div(1, 0) is Err(DivideByZero)")
    answer = call(conn, 3, "sqrt")
    check(not answer["ok"] and answer["code"] == 1, f"an unknown method: code 1 ({answer})")
    answer = call(conn, 4, "add", zigzag(2) + zigzag(3) + b"\x00")
    check(not answer["ok"] and answer["code"] == 2, f"a byte left over: code 2 ({answer})")
    answer = call(conn, 5, "add", zigzag(2))
    check(not answer["ok"] and answer["code"] == 2, f"an argument missing: code 2 ({answer})")
    answer = call(conn, 6, "Calc.count", metadata=[("k", b"v")])
    check(answer["ok"] and Reader(answer["body"]).varint() >= 2,
          "a qualified name with metadata: Calc.count")
    answer = call(conn, 7, "count", metadata=[(f"k{i}", b"") for i in range(65)])
    check(not answer["ok"] and answer["code"] == 9, f"65 metadata entries: code 9 ({answer})")

    conn.send_bytes(bytes.fromhex("0000000104"))  # section 10's Ping
    check(call(conn, 8, "count")["ok"], "a Ping gets no answer; the next call does")

    # Section 6.2's worked example, byte for byte.
    conn.send_bytes(bytes.fromhex(
        "00000016" "0101" "10" + b"rpc.health.check".hex() + "00" "00" "00"))
    answer = conn.read_exact(8)
    check(answer == bytes.fromhex("0000000402010000"), "rpc.health.check: serving")

    answer = call(conn, 9, "rpc.describe")
    name, methods, types = decode_service_schema(answer["body"])
    check(name == "Calc" and sorted(methods) == ["add", "count", "div", "mul"],
          "rpc.describe: Calc's four methods")
    check(methods["add"][5] == expected_fingerprints()[("Calc", "add")],
          "rpc.describe: add's fingerprint")
    check(types["MathError"] == (4, [("DivideByZero", (0, None)), ("Overflow", (0, None))]),
          "rpc.describe: MathError, an enum of two unit variants")

    # Every method's fingerprint, worked out from its description as section 5.1 says: the
    # Evaluator's types are recursive, and refer to each other.
    id = 100
    for service, table in tables.items():
        id += 1
        answer = call(conn, id, f"{service}.rpc.describe")
        _, methods, types = decode_service_schema(answer["body"])
        canonical = Canonical(types)
        for method, (args, upload, result, download, _, _) in methods.items():
            form = canonical.method(args, upload, result, download)
            check(fnv1a(form) == table[method],
                  f"{service}.{method}'s fingerprint from its description: {form.hex()}")

    # Evaluator.eval(Add(Num(2), Neg(Num(5)))): variants Num 0, Add 2, Neg 4.
    expr = b"\x02" + b"\x00" + zigzag(2) + b"\x04" + b"\x00" + zigzag(5)
    answer = call(conn, 10, "Evaluator.eval", expr)
    check(answer["ok"] and answer["body"] == b"\x00" + zigzag(-3), "eval(2 + -5) is Ok(-3)")
    return conn, hello


def streams(conn, hello):
    conn.send(request(10, "LogTail.tail", varint(0)))
    answer = conn.message()
    check(answer["kind"] == RESPONSE and answer["id"] == 10 and answer["ok"]
          and answer["body"] == b"", "a streamed result starts with an empty Ok Response")
    lines = []
    while len(lines) < 3:
        item = conn.message()
        assert item["kind"] == STREAM_ITEM and item["id"] == 10, item
        lines.append(Reader(item["body"]).string())
    check(lines == [f"boot step {n} done" for n in (1, 2, 3)], f"three items: {lines}")
    conn.send(bytes([CANCEL]) + varint(10))
    # Items already on their way may still come; then nothing more for call 10.
    conn.send(request(11, "count"))
    while True:
        message = conn.message()
        if message["kind"] == STREAM_ITEM and message["id"] == 10:
            continue
        break
    check(message["kind"] == RESPONSE and message["id"] == 11 and message["ok"],
          "after a Cancel, the stream stops and calls go on")

    # A method that returns Result<Streaming<T>, E>: the Response's body is Result<(), E>, and
    # the items follow only Ok(()).
    conn.send(request(15, "LogTail.lines", varint(0) + varint(2)))
    answer = conn.message()
    check(answer["kind"] == RESPONSE and answer["id"] == 15 and answer["ok"]
          and answer["body"] == b"\x00", "a fallible stream starts with a Response of Ok(())")
    lines = []
    while True:
        message = conn.message()
        if message["kind"] == STREAM_END:
            check(message["id"] == 15, "its StreamEnd")
            break
        assert message["kind"] == STREAM_ITEM and message["id"] == 15, message
        lines.append(Reader(message["body"]).string())
    check(lines == ["boot step 1 done", "boot step 2 done"], f"two lines: {lines}")
    conn.send(request(16, "LogTail.lines", varint(0) + varint(1_000_000)))
    answer = conn.message()
    r = Reader(answer["body"])
    check(answer["kind"] == RESPONSE and answer["id"] == 16 and answer["ok"] and r.byte() == 1
          and r.varint() >= 3 and r.done(), "or a Response of Err(TooFewLines { written })")
    conn.send(request(17, "count"))
    answer = conn.message()
    check(answer["kind"] == RESPONSE and answer["id"] == 17,
          "no stream follows the error: the next frame answers the next call")

    window = hello["stream_window"]
    data = bytes(i % 251 for i in range(300_000))
    conn.send(request(12, "FileStore.upload", string("notes.bin")))
    credit, sent, chunk = window, 0, 64 * 1024
    while sent < len(data):
        if credit <= 0:
            grant = conn.message()
            assert grant["kind"] == CREDIT and grant["id"] == 12, grant
            credit += grant["bytes"]
            continue
        piece = data[sent:sent + chunk]
        payload = bytes([STREAM_ITEM]) + varint(12) + varint(len(piece)) + piece
        conn.send(payload)
        credit -= item_cost(payload)
        sent += len(piece)
    conn.send(bytes([STREAM_END]) + varint(12) + b"\x00")
    answer = conn.message()
    while answer["kind"] == CREDIT:
        answer = conn.message()
    check(answer["kind"] == RESPONSE and answer["id"] == 12 and answer["ok"], "upload answered")
    r = Reader(answer["body"])
    check(r.byte() == 0, "the upload is Ok")
    receipt = (r.string(), r.varint(), r.varint(), r.varint())
    check(receipt == ("notes.bin", len(data), 5, fnv1a(data)), f"its receipt: {receipt}")

    # Over the store's 1 MiB: its handler stops reading and answers; we stop at the answer.
    conn.send(request(13, "FileStore.upload", string("big.bin")))
    credit, piece = window, bytes(200_000)
    while True:
        if credit > 0:
            payload = bytes([STREAM_ITEM]) + varint(13) + varint(len(piece)) + piece
            conn.send(payload)
            credit -= item_cost(payload)
            continue
        message = conn.message()
        if message["kind"] == CREDIT:
            credit += message["bytes"]
        else:
            break
    r = Reader(message["body"])
    check(message["kind"] == RESPONSE and message["ok"] and r.byte() == 1 and r.varint() == 0
          and r.varint() == 1 << 20, "an upload over the limit: Err(TooLarge { limit: 1 MiB })")

    conn.send(request(14, "count"))
    conn.sock.shutdown(socket.SHUT_WR)
    answer = conn.message()
    check(answer["kind"] == RESPONSE and answer["id"] == 14, "answered after our FIN")
    check(conn.closed_by_server(), "then the server closes")


def protocol_errors(addr):
    conn = Connection.connect(addr)
    conn.send(client_hello(""))
    check(decode_hello(conn.frame())["service"] == "Calc",
          "a Hello naming no service gets the first")
    conn.send(bytes([0x0B]))
    goaway = conn.message()
    check(goaway["kind"] == GOAWAY and goaway["reason"] == 3, f"kind 0b: GoAway 3 ({goaway})")
    check(conn.closed_by_server(), "then the server closes")

    conn = Connection.connect(addr)
    conn.send(client_hello("Calc", version=3))
    check(decode_hello(conn.frame())["version"] == 2, "version 3: the server's Hello all the same")
    check(conn.closed_by_server(), "then the server closes")

    conn = Connection.connect(addr)
    conn.send(client_hello("LogTail"))
    decode_hello(conn.frame())
    conn.send(request(1, "tail", varint(0)))
    conn.send(request(1, "tail", varint(0)))
    while True:
        message = conn.message()
        if message["kind"] == GOAWAY:
            break
    check(message["reason"] == 3, f"an id reused while its call runs: GoAway 3 ({message})")


def main():
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7000").rpartition(":")
    addr = (host, int(port))
    # Section 5.1's worked example.
    check(fnv1a(bytes.fromhex("00140304041" "10f01")) == 0xE66942CB19E1708D,
          "the worked fingerprint example")
    conn, hello = calls(addr)
    streams(conn, hello)
    protocol_errors(addr)
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, EOFError, ValueError, OSError) as error:
        print(f"FAILED: {error!r}")
        sys.exit(1)
