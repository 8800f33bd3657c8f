#!/usr/bin/env python3
"""Records every message published on a NATS server (subscription `>`) into a file, raw
protocol frames included, until killed. The secret-leak scan (ops/leak_scan.py) reads it.

    ops/nats_capture.py OUT_FILE [HOST:PORT]   (default 127.0.0.1:4222)
"""
import socket
import sys


def main():
    out_path = sys.argv[1]
    host, port = (sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:4222").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(None)
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"inferno-leak-capture"}\r\n')
    sock.sendall(b"SUB > 1\r\n")
    sock.sendall(b"PING\r\n")
    pending = b""
    with open(out_path, "ab", buffering=0) as out:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            out.write(data)
            # Answer the server's keep-alive pings so the subscription stays.
            pending = (pending + data)[-64:]
            if b"PING\r\n" in pending:
                sock.sendall(b"PONG\r\n")
                pending = b""


if __name__ == "__main__":
    main()
