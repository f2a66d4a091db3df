#!/usr/bin/env python3
"""A client of rpc-core's wire protocol in Python, written from docs/wire.md alone.

It shows that the document is enough to speak the protocol from another language, and checks
a running `example_server` against it, section by section:

    cargo run -p rpc-examples --bin example_server      # terminal 1: 127.0.0.1:7000
    python3 rpc-examples/interop/wire_client.py 127.0.0.1:7000

It exits 0 after printing "all checks passed", and 1 at the first answer that differs from what
the document says. `cargo test -p rpc-examples` runs it against a server of its own when python3 is there.
Only the standard library is used.
"""
import socket
import struct
import sys

# ---------------------------------------------------------------- section 3: postcard


def varint(n):
    """An unsigned integer, 7 bits a byte, least significant first."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def zigzag(n, bits=64):
    """A signed integer: zigzag, then varint."""
    return varint(((n << 1) ^ (n >> (bits - 1))) & ((1 << bits) - 1))


def string(s):
    data = s.encode()
    return varint(len(data)) + data


class Reader:
    """Reads postcard values from one payload."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def byte(self):
        if self.pos >= len(self.data):
            raise ValueError("the payload ended before the value did")
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("the payload ended before the value did")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def varint(self):
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def zigzag(self):
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def string(self):
        return self.take(self.varint()).decode()

    def rest(self):
        return self.data[self.pos:]

    def done(self):
        return self.pos == len(self.data)


# ---------------------------------------------------------------- section 5.1: fingerprints

FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) % (1 << 64)
    return h


# Nodes of the canonical form.
BOOL, I64, U64, STRING, BYTES, TUPLE, ENUM = 1, 5, 10, 15, 16, 20, 21
STREAMED = 24


def tuple_node(*elements):
    if not elements:
        return bytes([0])
    if len(elements) == 1:
        return elements[0]
    return bytes([TUPLE]) + varint(len(elements)) + b"".join(elements)


def enum_node(*variants):
    return bytes([ENUM]) + varint(len(variants)) + b"".join(variants)


UNIT_VARIANT = bytes([0])


def expected_fingerprints():
    """The example services' methods, as their Rust traits declare them."""
    i64, u64, text = bytes([I64]), bytes([U64]), bytes([STRING])
    math_error = enum_node(UNIT_VARIANT, UNIT_VARIANT)  # DivideByZero, Overflow
    calc_result = enum_node(i64, math_error)  # Result<i64, MathError>
    two_i64 = tuple_node(i64, i64)
    receipt = tuple_node(text, u64, u64, u64)  # name, bytes, chunks, checksum
    upload_error = enum_node(tuple_node(u64), text)  # TooLarge { limit }, Interrupted(String)
    return {
        ("Calc", "add"): fnv1a(b"\x00" + two_i64 + calc_result),
        ("Calc", "mul"): fnv1a(b"\x00" + two_i64 + calc_result),
        ("Calc", "div"): fnv1a(b"\x00" + two_i64 + calc_result),
        ("Calc", "count"): fnv1a(b"\x00" + tuple_node() + u64),
        # fn tail(&self, from_line: u64) -> Streaming<String>
        ("LogTail", "tail"): fnv1a(b"\x02" + tuple_node(u64) + bytes([STREAMED]) + text),
        # fn upload(&self, name: String, chunks: Streaming<ByteBuf>) -> Result<Receipt, _>
        ("FileStore", "upload"): fnv1a(
            b"\x01" + tuple_node(text) + bytes([STREAMED, BYTES])
            + enum_node(receipt, upload_error)
        ),
    }


# ---------------------------------------------------------------- sections 2, 4 and 5

HELLO, REQUEST, RESPONSE, CANCEL, PING, GOAWAY = 0, 1, 2, 3, 4, 5
STREAM_ITEM, STREAM_END, CREDIT = 6, 7, 8


class Connection:
    def __init__(self, addr):
        self.sock = socket.create_connection(addr, timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, payload):
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send_bytes(self, data):
        self.sock.sendall(data)

    def read_exact(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frame(self):
        (length,) = struct.unpack(">I", self.read_exact(4))
        return self.read_exact(length)

    def message(self):
        """The next frame from the server, decoded; Pings skipped."""
        while True:
            message = decode(self.frame())
            if message["kind"] != PING:
                return message

    def closed_by_server(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def client_hello(service, version=2, window=1 << 20):
    return (bytes([HELLO]) + b"rpcc" + varint(version) + varint(16 << 20) + string(service)
            + varint(0)  # no methods
            + varint(0)  # never pings, so the server does not watch for silence
            + varint(0)  # max_concurrent_calls: a client's is 0
            + varint(window))


def method_table(r):
    return [(r.string(), r.varint()) for _ in range(r.varint())]


def decode_hello(payload):
    r = Reader(payload)
    assert r.byte() == HELLO and r.take(4) == b"rpcc", "a Hello with the magic"
    hello = {"version": r.varint(), "max_frame_len": r.varint(), "service": r.string(),
             "methods": method_table(r), "ping_interval_ms": r.varint(),
             "max_concurrent_calls": r.varint(), "stream_window": r.varint(),
             "services": [], "max_uploads": 0}
    if not r.done():
        hello["services"] = [(r.string(), method_table(r)) for _ in range(r.varint())]
    if not r.done():
        hello["serves_back"] = r.byte()
    if not r.done():
        hello["max_uploads"] = r.varint()
    return hello


def request(id, method, args=b"", timeout_ms=0, metadata=()):
    entries = b"".join(string(key) + varint(len(value)) + value for key, value in metadata)
    return (bytes([REQUEST]) + varint(id) + string(method) + varint(timeout_ms)
            + varint(len(metadata)) + entries + args)


def decode(payload):
    r = Reader(payload)
    kind = r.byte()
    message = {"kind": kind}
    if kind in (RESPONSE, STREAM_END):
        message["id"] = r.varint()
        if r.byte() == 0:
            message["ok"] = True
        else:
            message.update(ok=False, code=r.varint(), text=r.string())
        message["body"] = r.rest()
    elif kind == STREAM_ITEM:
        message.update(id=r.varint(), body=r.rest())
    elif kind == CREDIT:
        message.update(id=r.varint(), bytes=r.varint())
    elif kind == GOAWAY:
        message.update(reason=r.varint(), text=r.string())
    elif kind != PING:
        raise AssertionError(f"the server sent a frame of kind {kind}")
    return message


def call(conn, id, method, args=b"", **options):
    conn.send(request(id, method, args, **options))
    answer = conn.message()
    assert answer["kind"] == RESPONSE and answer["id"] == id, answer
    return answer


def item_cost(payload):
    """Section 7: a StreamItem costs its whole frame plus 32."""
    return 4 + len(payload) + 32


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
        return (tag, [(r.string(), variant(r, r.varint())) for _ in range(r.varint())])
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
        download, idempotent, fingerprint = r.byte(), r.byte(), r.varint()
        methods[method] = (args, upload, result, download, idempotent, fingerprint)
    types = {r.string(): type_def(r) for _ in range(r.varint())}
    assert r.done(), "bytes after the schema"
    return name, methods, types


# ---------------------------------------------------------------- the checks


def check(holds, what):
    if not holds:
        raise AssertionError(what)
    print("ok:", what)


def calls(addr):
    conn = Connection(addr)
    conn.send(client_hello("Calc"))
    hello = decode_hello(conn.frame())
    check(hello["version"] == 2 and hello["service"] == "Calc", "the server's Hello names Calc")
    tables = {name: dict(methods) for name, methods in hello["services"]}
    check(sorted(tables) == ["Calc", "FileStore", "LogTail"], "its Hello lists three services")
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
    check(types["MathError"] == (4, [("DivideByZero", None), ("Overflow", None)]),
          "rpc.describe: MathError, an enum of two unit variants")
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
    conn = Connection(addr)
    conn.send(client_hello(""))
    check(decode_hello(conn.frame())["service"] == "Calc",
          "a Hello naming no service gets the first")
    conn.send(bytes([0x0B]))
    goaway = conn.message()
    check(goaway["kind"] == GOAWAY and goaway["reason"] == 3, f"kind 0b: GoAway 3 ({goaway})")
    check(conn.closed_by_server(), "then the server closes")

    conn = Connection(addr)
    conn.send(client_hello("Calc", version=3))
    check(decode_hello(conn.frame())["version"] == 2, "version 3: the server's Hello all the same")
    check(conn.closed_by_server(), "then the server closes")

    conn = Connection(addr)
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
