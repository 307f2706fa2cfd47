"""Send from a BufferPool: leases go back to the pool by themselves when the kernel is done.

Run: ``python examples/pool_send.py``.
"""

from __future__ import annotations

import hashlib
import socket
import threading

from zcnet import Account, BufferPool, Sender

COUNT = 200
SIZE = 256 * 1024


def main() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:      # a connected TCP pair
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    account = Account("sender", limit=8 * 1024 * 1024)           # pool memory is charged here
    pool = BufferPool(account=account)
    expected = hashlib.blake2b()
    got = hashlib.blake2b()

    def reader() -> None:
        left = COUNT * SIZE
        while left:
            data = b.recv(min(left, 1 << 20))
            got.update(data)
            left -= len(data)

    t = threading.Thread(target=reader)
    t.start()
    with Sender(a) as tx:
        for i in range(COUNT):
            lease = pool.acquire(SIZE, timeout=10)        # at the limit: waits for returns
            lease.view[:] = bytes([i % 251]) * SIZE       # fill it
            expected.update(lease.view)
            tx.send(lease)                                # back to the pool on completion
        tx.flush(timeout=10)
    t.join()
    b.close()
    print("pool:", pool.stats())
    print("account:", account.snapshot())
    assert got.hexdigest() == expected.hexdigest()
    pool.close()
    print(f"ok: {COUNT} leases sent and returned")


if __name__ == "__main__":
    main()
