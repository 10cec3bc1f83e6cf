#!/usr/bin/env python3
"""Print a free TCP port on 127.0.0.1 (or, with --pair, a port P such that P and
P+1 are both free: the bridge binds both). The port is released before we
exit, so a race with another program is possible but unlikely."""
import socket
import sys


def free(port=0):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()


def main():
    pair = "--pair" in sys.argv[1:]
    for _ in range(200):
        p = free()
        if p is None:
            continue
        if not pair:
            print(p)
            return
        if p < 65535 and free(p + 1) == p + 1:
            print(p)
            return
    sys.exit("freeport: no free port found")


if __name__ == "__main__":
    main()
