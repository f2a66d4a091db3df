"""rpc-core's wire protocol in Python, written from docs/wire.md alone: postcard values, frames,
Hellos, requests and answers, and the fingerprints of the example services' methods. Shared by
wire_client.py and wire_server.py."""
import socket
import struct
import threading

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
        # fn lines(&self, from: u64, to: u64) -> Result<Streaming<String>, TooFewLines>, the
        # error a struct of one u64 (written), flattened to it
        ("LogTail", "lines"): fnv1a(
            b"\x06" + tuple_node(u64, u64) + bytes([STREAMED]) + text + u64
        ),
        # fn upload(&self, name: String, chunks: Streaming<ByteBuf>) -> Result<Receipt, _>
        ("FileStore", "upload"): fnv1a(
            b"\x01" + tuple_node(text) + bytes([STREAMED, BYTES])
            + enum_node(receipt, upload_error)
        ),
    }


# ---------------------------------------------------------------- sections 2, 4 and 5

HELLO, REQUEST, RESPONSE, CANCEL, PING, GOAWAY = 0, 1, 2, 3, 4, 5
STREAM_ITEM, STREAM_END, CREDIT, REVERSE = 6, 7, 8, 9


class Connection:
    """One side of a connection: frames out whole, frames in."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sending = threading.Lock()

    @classmethod
    def connect(cls, addr):
        return cls(socket.create_connection(addr, timeout=20))

    def send(self, payload):
        # Whole frames, never interleaved: several threads of a server send on one connection.
        with self.sending:
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


def client_hello(service, version=2, window=1 << 20, max_frame_len=16 << 20):
    return (bytes([HELLO]) + b"rpcc" + varint(version) + varint(max_frame_len) + string(service)
            + varint(0)  # no methods
            + varint(0)  # never pings, so the server does not watch for silence
            + varint(0)  # max_concurrent_calls: a client's is 0
            + varint(window))


def server_hello(service, services, max_concurrent_calls, window, max_uploads):
    """A server's Hello: `service` is the connection's own, `services` a list of (name,
    [(method, fingerprint)]) for every service served."""
    tables = dict(services)

    def table(methods):
        return varint(len(methods)) + b"".join(string(m) + varint(f) for m, f in methods)

    every = varint(len(services)) + b"".join(string(n) + table(m) for n, m in services)
    return (bytes([HELLO]) + b"rpcc" + varint(2) + varint(16 << 20) + string(service)
            + table(tables[service])
            + varint(0)  # never pings
            + varint(max_concurrent_calls) + varint(window)
            + every
            + b"\x00"  # serves_back, as a server sends it
            + varint(max_uploads))


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
    """A frame's payload as a dict: its kind, and the fields of its head (section 4)."""
    r = Reader(payload)
    kind = r.byte()
    message = {"kind": kind}
    if kind == REQUEST:
        message.update(id=r.varint(), method=r.string(), timeout_ms=r.varint())
        message["metadata"] = [(r.string(), r.take(r.varint())) for _ in range(r.varint())]
        message["body"] = r.rest()
    elif kind in (RESPONSE, STREAM_END):
        message["id"] = r.varint()
        if r.byte() == 0:
            message["ok"] = True
        else:
            message.update(ok=False, code=r.varint(), text=r.string())
        message["body"] = r.rest()
    elif kind in (CANCEL, STREAM_ITEM):
        message.update(id=r.varint(), body=r.rest())
    elif kind == CREDIT:
        message.update(id=r.varint(), bytes=r.varint())
    elif kind == GOAWAY:
        message.update(reason=r.varint(), text=r.string())
    elif kind != PING:
        raise AssertionError(f"a frame of kind {kind}")
    return message


def outcome_ok(body=b""):
    return b"\x00" + body


def outcome_err(code, text):
    return b"\x01" + varint(code) + string(text)


def response(id, outcome):
    return bytes([RESPONSE]) + varint(id) + outcome


def stream_item(id, body):
    return bytes([STREAM_ITEM]) + varint(id) + body


def stream_end(id, outcome):
    return bytes([STREAM_END]) + varint(id) + outcome


def credit(id, n):
    return bytes([CREDIT]) + varint(id) + varint(n)


def item_cost(payload):
    """Section 7: a StreamItem costs its whole frame plus 32."""
    return 4 + len(payload) + 32
