#!/usr/bin/env python3
"""A server of rpc-core's wire protocol in Python, written from docs/wire.md alone.

It serves the example services (`Calc`, `LogTail`, `FileStore`, as rpc-examples declares them)
so that rpc-core's own generated clients can call it, which checks the server's half of the
document as wire_client.py checks the client's:

    python3 rpc-examples/interop/wire_server.py 127.0.0.1:0     # prints "listening on ADDR"

With `--exit-with-stdin` it ends when its standard input does, as a test harness wants.
`cargo test -p rpc-examples` calls it with `CalcClient`, `LogTailClient` and `FileStoreClient`
wherever python3 is installed. A client that serves `Greeter` back (section 12) is called
back with `hello("Calc")` before each `add` it makes is answered. Its log is 100,000 lines, "line 1" to "line 100000", and a tail
of it ends at the last; its file store takes files of up to 1 MiB. It receives streams with a
window of 64 KiB, so an upload goes on only as it grants credit back.
"""
import os
import socket
import sys
import threading

from wire import (CANCEL, CREDIT, HELLO, PING, REQUEST, RESPONSE, REVERSE, STREAM_END,
                  STREAM_ITEM, Connection, Reader, client_hello, credit, decode, decode_hello,
                  expected_fingerprints, fnv1a, item_cost, outcome_err, outcome_ok, request,
                  response, server_hello, stream_end, stream_item, string, varint, zigzag)

LOG_LINES = 100_000
UPLOAD_LIMIT = 1 << 20
WINDOW = 64 * 1024
MAX_CALLS = 16

# Error codes of section 4.
UNKNOWN_METHOD, INVALID_ARGUMENTS, UNDISCLOSED = 1, 2, 17

# What a client that serves back must serve: `Greeter`, whose `hello(name: String) -> String`
# has the canonical form 00 0f 0f (section 5.1).
GREETER_HELLO = fnv1a(bytes([0, 15, 15]))


def services():
    tables = {}
    for (service, method), fingerprint in expected_fingerprints().items():
        tables.setdefault(service, []).append((method, fingerprint))
    return list(tables.items())


class Calculator:
    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0

    def call(self, method, r):
        if method == "count":
            return varint(self.done)
        a, b = r.zigzag(), r.zigzag()
        if not r.done():
            raise ValueError("bytes were left over after the arguments")
        with self.lock:
            self.done += 1
        if method == "div" and b == 0:
            return b"\x01\x00"  # Err(DivideByZero)
        result = {"add": lambda: a + b, "mul": lambda: a * b, "div": lambda: int(a / b)}[method]()
        if not -(1 << 63) <= result < 1 << 63:
            return b"\x01\x01"  # Err(Overflow)
        return b"\x00" + zigzag(result)  # Ok(result)


class OutgoingStream:
    """A stream this server sends, spending the credit the client grants (section 7)."""

    def __init__(self, conn, id, window):
        self.conn, self.id, self.credit = conn, id, window
        self.changed = threading.Condition()
        self.cancelled = False

    def grant(self, n):
        with self.changed:
            self.credit += n
            self.changed.notify()

    def cancel(self):
        with self.changed:
            self.cancelled = True
            self.changed.notify()

    def send_lines(self, first, streams):
        try:
            for n in range(first + 1, LOG_LINES + 1):
                with self.changed:
                    while self.credit <= 0 and not self.cancelled:
                        self.changed.wait()
                    if self.cancelled:
                        return  # a cancelled call gets nothing more, not even its end
                payload = stream_item(self.id, string(f"line {n}"))
                self.credit -= item_cost(payload)
                self.conn.send(payload)
            self.conn.send(stream_end(self.id, outcome_ok()))
        except OSError:
            return
        finally:
            streams.pop(self.id, None)


class Reverse:
    """The reverse connection (section 12): this server calls the client's `Greeter` on it."""

    def __init__(self, conn):
        self.conn = conn
        self.changed = threading.Condition()
        self.hello = None
        self.answers = {}
        self.next_id = 0

    def open(self):
        # Our reverse Hello, as a client's: no service, no pings, a frame one byte smaller than
        # our outer Hello's.
        self.conn.send(bytes([REVERSE]) + client_hello("", max_frame_len=(16 << 20) - 1))

    def receive(self, inner):
        """A frame of the reverse connection, from the client."""
        with self.changed:
            if inner and inner[0] == HELLO:
                self.hello = decode_hello(inner)
            elif inner:
                message = decode(inner)
                if message["kind"] == RESPONSE:
                    self.answers[message["id"]] = message
            self.changed.notify_all()

    def greet(self, name):
        """Calls the client's `Greeter.hello(name)` and returns the greeting."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.hello is not None, timeout=10):
                raise ValueError("the client did not answer the reverse Hello")
            if dict(self.hello["methods"]).get("hello") != GREETER_HELLO:
                raise ValueError(f"the client does not serve Greeter: {self.hello}")
            id, self.next_id = self.next_id, self.next_id + 1
        self.conn.send(bytes([REVERSE]) + request(id, "hello", string(name), timeout_ms=10_000))
        with self.changed:
            if not self.changed.wait_for(lambda: id in self.answers, timeout=10):
                raise ValueError("the client did not answer the call back")
            answer = self.answers.pop(id)
        if not answer["ok"]:
            raise ValueError(f"the call back failed: {answer}")
        return Reader(answer["body"]).string()


class Upload:
    """A streamed argument this server receives, granting credit back as it takes items."""

    def __init__(self, name):
        self.name, self.bytes, self.chunks, self.checksum = name, 0, 0, fnv1a(b"")
        self.taken = 0  # the cost of the items taken since the last grant

    def take(self, payload, body):
        r = Reader(body)
        chunk = r.take(r.varint())
        self.bytes += len(chunk)
        self.chunks += 1
        self.checksum = fnv1a(chunk, self.checksum)
        self.taken += item_cost(payload)

    def receipt(self):
        return (b"\x00" + string(self.name) + varint(self.bytes) + varint(self.chunks)
                + varint(self.checksum))


def serve(conn, calculator):
    hello = decode_hello(conn.frame())
    own = hello["service"] or "Calc"
    known = dict(services())
    if hello["version"] != 2 or own not in known:
        # Section 5: our Hello all the same, naming our first service, then close.
        conn.send(server_hello("Calc", services(), MAX_CALLS, WINDOW, 0))
        return
    conn.send(server_hello(own, services(), MAX_CALLS, WINDOW, 0))
    window = hello["stream_window"]
    outgoing, uploads = {}, {}
    reverse = None
    if hello.get("serves_back") == 1:
        reverse = Reverse(conn)
        reverse.open()
    while True:
        frame = conn.frame()
        if frame[:1] == bytes([REVERSE]) and reverse:
            reverse.receive(frame[1:])
            continue
        message = decode(frame)
        kind = message["kind"]
        if kind == REQUEST:
            if reverse and message["method"] in ("add", "Calc.add"):
                # Answered once the client has greeted us back over the reverse connection.
                args = (conn, message, reverse, calculator)
                threading.Thread(target=add_after_greeting, args=args, daemon=True).start()
                continue
            handle_request(conn, message, own, window, calculator, outgoing, uploads)
        elif kind == CANCEL:
            stream = outgoing.get(message["id"])
            if stream:
                stream.cancel()
        elif kind == CREDIT:
            stream = outgoing.get(message["id"])
            if stream:
                stream.grant(message["bytes"])
        elif kind == STREAM_ITEM:
            upload = uploads.get(message["id"])
            if upload:
                item(conn, message["id"], upload, frame, message["body"], uploads)
        elif kind == STREAM_END:
            upload = uploads.pop(message["id"], None)
            if upload and message["ok"]:
                conn.send(response(message["id"], outcome_ok(upload.receipt())))
            elif upload:
                interrupted = b"\x01\x01" + string(message["text"])  # Err(Interrupted(text))
                conn.send(response(message["id"], outcome_ok(interrupted)))
        elif kind != PING:
            raise AssertionError(f"the client sent a frame of kind {kind}")


def handle_request(conn, message, own, window, calculator, outgoing, uploads):
    id, name = message["id"], message["method"]
    service, method = own, name
    if "." in name and not name.startswith("rpc."):
        service, method = name.split(".", 1)
    r = Reader(message["body"])
    try:
        if service == "Calc" and method in ("add", "mul", "div", "count"):
            conn.send(response(id, outcome_ok(calculator.call(method, r))))
        elif service == "LogTail" and method == "tail":
            first = r.varint()
            conn.send(response(id, outcome_ok()))  # a streamed result: an empty Ok first
            stream = OutgoingStream(conn, id, window)
            outgoing[id] = stream
            threading.Thread(target=stream.send_lines, args=(first, outgoing), daemon=True).start()
        elif service == "FileStore" and method == "upload":
            uploads[id] = Upload(r.string())
        else:
            text = f"the service `{service}` has no method `{method}`"
            conn.send(response(id, outcome_err(UNKNOWN_METHOD, text)))
    except (ValueError, KeyError, UnicodeDecodeError) as error:
        conn.send(response(id, outcome_err(INVALID_ARGUMENTS, str(error))))


def add_after_greeting(conn, message, reverse, calculator):
    """`add`, for a client that serves `Greeter` back: it answers only if the client, called
    back, greets this server as `Greeter` should."""
    try:
        greeting = reverse.greet("Calc")
        if greeting != "Hello, Calc!":
            raise ValueError(f"the client greeted us with {greeting!r}")
        answer = outcome_ok(calculator.call("add", Reader(message["body"])))
    except Exception as error:  # any failure is answered, so that the client does not wait
        print(f"the call back failed: {error!r}", file=sys.stderr)
        answer = outcome_err(UNDISCLOSED, "")
    conn.send(response(message["id"], answer))


def item(conn, id, upload, frame, body, uploads):
    upload.take(frame, body)
    if upload.bytes > UPLOAD_LIMIT:
        del uploads[id]  # later items of this call are ignored (section 7)
        too_large = b"\x01\x00" + varint(UPLOAD_LIMIT)  # Err(TooLarge { limit })
        conn.send(response(id, outcome_ok(too_large)))
    elif upload.taken >= WINDOW // 4:
        conn.send(credit(id, upload.taken))
        upload.taken = 0


def connection(sock, calculator):
    conn = Connection(sock)
    try:
        serve(conn, calculator)
    except (EOFError, OSError, AssertionError, ValueError) as error:
        print(f"connection ended: {error!r}", file=sys.stderr)
    finally:
        sock.close()


def main():
    args = sys.argv[1:]
    if "--exit-with-stdin" in args:
        # For a harness: end when it closes our standard input, or when it dies.
        args.remove("--exit-with-stdin")
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    host, _, port = (args[0] if args else "127.0.0.1:7000").rpartition(":")
    listener = socket.create_server((host, int(port)))
    print("listening on %s:%d" % listener.getsockname(), flush=True)
    calculator = Calculator()
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=connection, args=(sock, calculator), daemon=True).start()


if __name__ == "__main__":
    main()
