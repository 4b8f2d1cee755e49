"""Sends bytes in pieces and says whether they got to the server.

argv: IP PORT; stdin: a JSON object of label -> list of parts, each part
a string of code points U+0000..U+00FF (one byte each). Every case
gets its own connection, all at once; its parts are written 50 ms apart
with Nagle off, so each is its own segment. Prints a JSON object of
label -> "reached" (the server answered, closed or reset: it read what
was sent), "timeout" (nothing within 6 s: the bytes never got there) or
the connect's errno name (EPERM once the kernel refuses the address).
"""
import errno
import json
import socket
import sys
import threading
import time

ip, port, cases = sys.argv[1], int(sys.argv[2]), json.load(sys.stdin)
results = {}


def attempt(label, parts):
    try:
        s = socket.create_connection((ip, port), timeout=5)
    except OSError as e:
        results[label] = errno.errorcode.get(e.errno, str(e))
        return
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i, part in enumerate(parts):
        if i:
            time.sleep(0.05)
        s.sendall(part.encode("latin-1"))
    s.settimeout(6)
    try:
        s.recv(1)
        results[label] = "reached"
    except socket.timeout:
        results[label] = "timeout"
    except OSError:
        results[label] = "reached"
    s.close()


threads = [threading.Thread(target=attempt, args=item) for item in cases.items()]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
