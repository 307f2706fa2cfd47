"""Send 256 MiB from one socket to another with zcnet, blocking API, on this host's loopback.

The listener comes from ``make_mappable_listener`` (TCP_MAXSEG 4108: one page per segment), and
the sender keeps MSG_ZEROCOPY on, so the receiver maps pages instead of copying them. Every byte
is checked with a checksum. Run: ``python examples/bulk_transfer.py``.
"""

from __future__ import annotations

import hashlib
import socket
import threading

from zcnet import Receiver, RecvPolicy, Sender, SendPolicy, make_mappable_listener

TOTAL = 256 * 1024 * 1024
BLOCK = 1024 * 1024


def send_all(sock: socket.socket, digest: list[str]) -> None:
    h = hashlib.blake2b()
    # force_zerocopy: over loopback the kernel copies anyway, but only MSG_ZEROCOPY sends give
    # the receiver pages it can map (see docs/receive.md)
    with Sender(sock, SendPolicy(force_zerocopy=True)) as tx:
        buffers = [bytearray(i.to_bytes(1, "little") * BLOCK) for i in range(4)]
        for n in range(TOTAL // BLOCK):
            buf = buffers[n % 4]
            ticket = tx.send(buf)          # returns once queued; the kernel may still read buf
            h.update(buf)
            if n % 4 == 3:
                ticket.wait(timeout=10)    # completions arrive in order: all four are free now
        tx.flush(timeout=10)
        print("sender:", tx.stats)
    digest.append(h.hexdigest())


def main() -> None:
    listener = make_mappable_listener("127.0.0.1")
    client = socket.create_connection(listener.getsockname()[:2])
    server, _ = listener.accept()
    listener.close()
    digest: list[str] = []
    t = threading.Thread(target=send_all, args=(client, digest))
    t.start()
    h = hashlib.blake2b()
    received = 0
    with Receiver(server, RecvPolicy(rcvlowat=512 * 1024)) as rx:
        while True:
            with rx.recv(4 * 1024 * 1024, timeout=30) as chunk:   # read-only, valid in here
                if not len(chunk):
                    break                                        # EOF
                h.update(chunk.view)
                received += len(chunk)
        print("receiver:", rx.stats)
    t.join()
    assert received == TOTAL and h.hexdigest() == digest[0], "data differs"
    print(f"ok: {received >> 20} MiB, every byte checked")


if __name__ == "__main__":
    main()
