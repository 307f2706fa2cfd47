"""The ``zc://`` Dask comm backend: Backend, Connector, Listener and Comm.

Theory of operation (distributed/comm/core.py, registry.py and tcp.py describe the contract):

* ``distributed.comm.registry.get_backend("zc")`` finds :class:`ZCBackend` through the
  ``distributed.comm.backends`` entry point; ``tcp`` is Dask's own and cannot be overridden, so
  the zero-copy transport gets a scheme of its own. Addresses are ``zc://host:port`` exactly as
  for ``tcp://`` (IPv6 hosts in brackets); an empty host listens on ``0.0.0.0`` and ``::`` (as
  tcp does) and advertises this machine's address.
* ``distributed.comm.core.connect`` retries the connector on ``OSError`` until the connect
  timeout, then performs the handshake (a message each way) through :meth:`ZCComm.write` /
  :meth:`ZCComm.read` and reads the comm's private ``_local_addr`` / ``_peer_addr``; listeners do
  the same in ``BaseListener.on_connection`` before handing the comm to the server.
* A message is ``distributed.protocol`` frames behind a prelude of sizes (see
  :mod:`zcnet.contrib.dask.framing`); large frames are sent alone (with ``MSG_ZEROCOPY`` where
  the transport uses it); every frame is received into a buffer of its own, which Dask's
  deserializers wrap without copying and which lives only as long as its object (as on tcp).
  Received frames are writeable: Dask copies a read-only frame whose
  array was writeable at the sender, so handing it mapped, read-only pages would only move the
  copy (the policy and its measured cost are in docs/dask.md).
* Completion semantics follow Dask's TCP comm (docs/dask.md): ``write`` returns once the
  message is queued for the comm's send task, not once the kernel has it; an idle comm notices
  its peer's close (so ``ConnectionPool`` never hands out a dead comm).
* ``close`` lets the send task finish while it progresses, drains outstanding zero-copy
  completions (bounded by ``drain-timeout``, then a reset) and closes; ``abort`` closes at once.
  Any failure in the middle of a message leaves the stream in an unknown state, so the comm is
  aborted, as Dask's TCP comm does. Failures surface as ``CommClosedError``. TLS is not offered:
  ``require_encryption`` is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import socket
import sys
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import dask.config
from dask.utils import parse_timedelta
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import BaseListener, Comm, CommClosedError, Connector
from distributed.comm.registry import Backend
from distributed.comm.utils import ensure_concrete_host, from_frames, to_frames
from distributed.utils import ensure_ip, ensure_memoryview, get_ip

from zcnet.contrib.dask.aio_transport import AioTransport
from zcnet.contrib.dask.config import ZCOptions, options_from_config
from zcnet.contrib.dask.framing import (
    COUNT_SIZE,
    FramingError,
    decode_count,
    decode_sizes,
    encode_prelude,
    frame_groups,
    plan_segments,
)
from zcnet.contrib.dask.transport import FrameTransport, TransportStats
from zcnet.errors import ZcnetError

__all__ = ["PREFIX", "ZCBackend", "ZCComm", "ZCConnector", "ZCListener"]

logger = logging.getLogger(__name__)

PREFIX = "zc://"
CommHandler = Callable[[Comm], Awaitable[None] | None]


def _configure_socket(sock: socket.socket) -> None:
    """``TCP_NODELAY`` and keep-alive/user timeouts from ``distributed.comm.timeouts.tcp``."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    timeout = int(parse_timedelta(dask.config.get("distributed.comm.timeouts.tcp"), "seconds"))
    nprobes = 10
    if timeout < nprobes + 1:
        return
    interval = max(1, (timeout - max(2, timeout // 4)) // nprobes)
    idle = timeout - interval * nprobes
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if sys.platform.startswith("linux"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, nprobes)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout * 1000)
    except OSError:
        logger.exception("could not set TCP keep-alive on a zc:// socket")


def _sockname(sock: socket.socket) -> str:
    return PREFIX + unparse_host_port(*sock.getsockname()[:2])


class ZCComm(Comm):
    """An established ``zc://`` connection carrying Dask messages.

    ``max_shard_size``: frames above this many bytes are split into shards when written; None
    (the default) reads ``distributed.comm.shard`` at each write. Set it on a comm (or the
    class) to override, as on Dask's TCP comm.
    """

    max_shard_size: int | None = None

    def __init__(self, transport: FrameTransport, local_addr: str, peer_addr: str,
                 deserialize: bool = True, options: ZCOptions | None = None) -> None:
        self._closed = False
        super().__init__(deserialize=deserialize)
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        self._transport: FrameTransport | None = transport
        self._opts = options or ZCOptions()
        self._outbox: deque[_Outgoing] = deque()  # messages written, not yet sent
        self._sender: asyncio.Task[None] | None = None
        self._sent = asyncio.Event()  # set each time the send task stops
        self._send_error: BaseException | None = None
        self._finalizer = weakref.finalize(self, _finalize, transport, repr(self))
        self._finalizer.atexit = False
        # An idle comm notices its peer's close, as Dask's TCP comm does (Tornado's close
        # callback marks it closed), so a ConnectionPool never hands out a dead comm.
        transport.watch_eof(_watch_peer(self))

    # -- addresses and state ---------------------------------------------------------------------
    @property
    def local_address(self) -> str:
        """``zc://host:port`` of this end."""
        return self._local_addr

    @property
    def peer_address(self) -> str:
        """``zc://host:port`` of the other end."""
        return self._peer_addr

    def closed(self) -> bool:
        """Whether the comm was closed, aborted or lost its connection."""
        return self._closed

    @property
    def extra_info(self) -> dict[str, Any]:
        """Backend-specific information: nothing that varies (as for ``tcp://``)."""
        return {}

    @property
    def transport(self) -> FrameTransport | None:
        """The transport while the comm is open."""
        return self._transport

    def transport_stats(self) -> TransportStats | None:
        """Counters of the transport (zero-copy bytes, completions, ...), or None once closed."""
        t = self._transport
        return t.stats() if t is not None else None

    def _closed_error(self) -> CommClosedError:
        err = CommClosedError(f"in {self!r}: comm is closed")
        err.__cause__ = self._send_error  # why a background send closed it, if it did
        return err

    def _lost(self, exc: BaseException) -> CommClosedError:
        self.abort()
        err = CommClosedError(f"in {self!r}: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    # -- messages --------------------------------------------------------------------------------
    async def read(self, deserializers: Any = None) -> Any:
        """Read one message: prelude, then each frame into a buffer of its own."""
        t = self._transport
        if t is None:
            raise self._closed_error()
        try:
            with t.receiving():
                head = memoryview(bytearray(COUNT_SIZE))
                await t.recv_into(head)
                count = decode_count(head)
                sizes_buf = memoryview(bytearray(8 * count))
                await t.recv_into(sizes_buf)
                sizes, joined = decode_sizes(sizes_buf, count)
                frames = await self._read_frames(t, sizes, joined)
        except (ZcnetError, OSError, FramingError) as e:
            raise self._lost(e) from e
        except BaseException:
            self.abort()
            raise
        try:
            return await from_frames(  # type: ignore[no-untyped-call]
                frames, deserialize=self.deserialize, deserializers=deserializers,
                allow_offload=self.allow_offload)
        except EOFError as e:
            raise self._lost(e) from e

    async def _read_frames(self, t: FrameTransport, sizes: list[int], joined: list[bool]
                           ) -> list[memoryview]:
        # One right-sized buffer per frame (shards of one sender buffer share one, see
        # framing.frame_groups): like Dask's TCP comm, which reads each buffer into its own
        # allocation so that one small array does not keep the others' memory alive.
        frames: list[memoryview] = []
        for start, stop in frame_groups(joined):
            buf = await t.recv_frame(sum(sizes[start:stop]))
            pos = 0
            for size in sizes[start:stop]:
                frames.append(buf[pos : pos + size])
                pos += size
        return frames

    async def write(self, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        """Serialize one message and queue it for sending; returns the bytes it takes on the wire
        (prelude included).

        Returns once the message is queued, before the kernel has taken its bytes, as Dask's
        TCP comm returns once its frames are in Tornado's write buffer: a task may write a large
        message and then read on the same event loop. The comm's send task sends queued
        messages in order; if sending fails the comm is aborted, and the next ``write`` or
        ``read`` raises :class:`CommClosedError`. The frames stay referenced until sent (and,
        for zero-copy sends, until the kernel's completion).
        """
        if self._transport is None:
            raise self._closed_error()
        shard = self.max_shard_size
        if shard is None:
            shard = dask.utils.parse_bytes(dask.config.get("distributed.comm.shard"))
        frames = await to_frames(  # type: ignore[no-untyped-call]
            msg, allow_offload=self.allow_offload, serializers=serializers, on_error=on_error,
            context={"sender": self.local_info, "recipient": self.remote_info,
                     **self.handshake_options},
            frame_split_size=shard,
        )
        views = [ensure_memoryview(f) for f in frames]
        sizes = [v.nbytes for v in views]
        threshold = self._opts.zerocopy_threshold
        # shards of one buffer (same exporter after a large frame) share one receive buffer
        joined = [i > 0 and sizes[i - 1] >= threshold and views[i].obj is views[i - 1].obj
                  for i in range(len(views))]
        prelude = encode_prelude(sizes, joined)
        t = self._transport
        if t is None:  # closed while serializing
            raise self._closed_error()
        self._outbox.append(_Outgoing(prelude, views, sizes, joined))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_queued(t))
        return len(prelude) + sum(sizes)

    async def _send_queued(self, t: FrameTransport) -> None:
        """The comm's send task: send queued messages in order until the queue is empty."""
        try:
            while self._outbox:
                await self._send_message(t, self._outbox[0])
                self._outbox.popleft()
        except asyncio.CancelledError:
            self.abort()  # cancelled mid-message (abort, loop shutdown): the stream is cut
            t.abort()
        except BaseException as e:
            # Any failure leaves the byte stream cut at an unknown point: close the comm, as
            # Tornado does for a failed write (Dask's TCP comm then reports it closed); the
            # next write() or read() raises CommClosedError with this error as its cause.
            if isinstance(e, (ZcnetError, OSError)):
                logger.info("zc:// comm %r: send failed, closing: %s", self, e)
            else:
                logger.error("zc:// comm %r: send failed, closing", self, exc_info=e)
            self._send_error = e
            self.abort()
            t.abort()  # also when close() took the transport already
            if not isinstance(e, Exception):
                raise  # KeyboardInterrupt, SystemExit
        finally:
            self._outbox.clear()
            if self._sender is asyncio.current_task():
                self._sender = None
            self._sent.set()

    async def _send_message(self, t: FrameTransport, m: _Outgoing) -> None:
        first = True
        for seg in plan_segments(m.sizes, self._opts.zerocopy_threshold, m.joined):
            part = m.views[seg.start : seg.stop]
            if first and not seg.large:
                part = [memoryview(m.prelude), *part]
            elif first:
                await t.send([memoryview(m.prelude)], False)
            first = False
            await t.send(part, seg.large)
        if first:
            await t.send([memoryview(m.prelude)], False)

    async def _flush(self, t: FrameTransport) -> None:
        """Wait for the send task to empty the queue while it makes progress: give up (and
        leave the rest to the caller's reset) once ``drain-timeout`` passes without a byte
        handed to the kernel."""
        last = -1
        while self._sender is not None:
            sent = t.stats().bytes_sent
            if sent == last:
                logger.warning("zc:// close: queued messages made no progress for %.1f s; "
                               "resetting", self._opts.drain_timeout)
                return
            last = sent
            self._sent.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._opts.drain_timeout):
                    await self._sent.wait()

    # -- closing ---------------------------------------------------------------------------------
    async def close(self) -> None:
        """Send what is queued (while it progresses), flush (bounded wait for zero-copy
        completions), shut down and close."""
        t, self._transport = self._transport, None
        self._closed = True
        if t is not None:
            self._finalizer.detach()
            try:
                await self._flush(t)
                if self._sender is not None:  # stalled: cut the connection
                    self._sender.cancel()
                    t.abort()
                else:
                    await t.close()
            except BaseException:
                t.abort()
                raise

    def abort(self) -> None:
        """Close immediately (queued messages are dropped)."""
        t, self._transport = self._transport, None
        self._closed = True
        sender = self._sender
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
        if t is not None:
            self._finalizer.detach()
            t.abort()

    def _peer_closed(self) -> None:
        """The transport saw the peer close (or reset) the idle connection."""
        if not self._closed:
            logger.debug("zc:// comm %r: the peer closed the connection", self)
            self.abort()


class _Outgoing(NamedTuple):
    """A serialized message waiting in a comm's send queue."""

    prelude: bytes
    views: list[memoryview]
    sizes: list[int]
    joined: list[bool]


def _watch_peer(comm: ZCComm) -> Callable[[], None]:
    """The transport's end-of-file callback for ``comm``, holding it weakly (so an unreferenced
    comm is still finalized)."""
    ref = weakref.ref(comm)

    def on_eof() -> None:
        c = ref()
        if c is not None:
            c._peer_closed()

    return on_eof


def _finalize(transport: FrameTransport, r: str) -> None:
    if not transport.closed:
        logger.warning("Closing dangling zc:// comm %s", r)
        with contextlib.suppress(Exception):
            transport.abort()


def _check_encryption(address: str, connection_args: dict[str, Any]) -> None:
    if connection_args.get("require_encryption"):
        raise RuntimeError(
            "encryption required by Dask configuration, refusing communication "
            f"from/to {PREFIX + address!r}: zc:// does not offer TLS")


async def _resolve(host: str, port: int, passive: bool = False
                   ) -> list[tuple[int, tuple[Any, ...]]]:
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV | (socket.AI_PASSIVE if passive else 0)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror as e:
        if e.errno != socket.EAI_NONAME:
            raise
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE if passive else 0)
    return [(fam, addr) for fam, _, _, _, addr in infos]


class ZCConnector(Connector):
    """Opens ``zc://`` connections."""

    prefix = PREFIX

    async def connect(self, address: str, deserialize: bool = True,
                      **connection_args: Any) -> ZCComm:
        """Connect to ``host:port``; raises ``CommClosedError`` (an ``OSError``) on failure."""
        _check_encryption(address, connection_args)
        host, port = parse_host_port(address)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for family, sockaddr in await _resolve(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                _configure_socket(sock)
                await loop.sock_connect(sock, sockaddr)
            except OSError as e:
                sock.close()
                last = e
                continue
            except BaseException:
                sock.close()
                raise
            try:
                opts = options_from_config()
                local = _sockname(sock)
                transport = AioTransport(sock, opts)
            except BaseException:
                sock.close()
                raise
            return ZCComm(transport, local, PREFIX + address, deserialize, opts)
        raise CommClosedError(f"in {self!r}: could not connect to {PREFIX + address}: {last}"
                              ) from last


class ZCListener(BaseListener):
    """Accepts ``zc://`` connections and hands each, after the handshake, to ``comm_handler``."""

    prefix = PREFIX  # read by distributed.worker when it logs its listening address

    def __init__(self, address: str, comm_handler: CommHandler, deserialize: bool = True,
                 allow_offload: bool = True, default_host: str | None = None,
                 default_port: int = 0, **connection_args: Any) -> None:
        super().__init__()
        _check_encryption(address, connection_args)
        self.ip, self.port = parse_host_port(address, default_port)
        self.default_host = default_host
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self._socks: list[socket.socket] = []
        self._bound: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind, listen and start accepting on the running loop.

        An empty host listens on every address family there is (``0.0.0.0`` and ``::``, one
        socket each, the IPv6 one ``IPV6_V6ONLY``, on the same port), as Dask's TCP listener
        does (Tornado's ``bind_sockets`` with no address); the bound address reported is the
        IPv4 one when there is one.
        """
        passive = not self.ip
        infos = await _resolve(self.ip, self.port, passive=True)
        if not passive:
            infos = infos[:1]
        if not infos:
            raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {self.ip!r}")
        # an ephemeral port may collide in the second family: retry a few times, as tcp does
        for attempt in range(5):
            try:
                socks = self._bind_all(infos)
                break
            except OSError as e:
                if self.port or e.errno != errno.EADDRINUSE or attempt == 4:
                    raise
        socks.sort(key=lambda s: s.family != socket.AF_INET)  # IPv4 first
        self._socks = socks
        name = socks[0].getsockname()
        self._bound = (name[0], name[1])
        loop = asyncio.get_running_loop()
        for sock in socks:
            loop.add_reader(sock.fileno(), self._accept_ready, sock)

    def _bind_all(self, infos: list[tuple[int, tuple[Any, ...]]]) -> list[socket.socket]:
        """One listening socket per address; the port of the first is reused for the others."""
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        socks: list[socket.socket] = []
        port = self.port
        try:
            for family, sockaddr in dict.fromkeys(infos):  # unique, in order
                try:
                    sock = socket.socket(family, socket.SOCK_STREAM)
                except OSError as e:  # a family the kernel lacks (IPv6 disabled): skip it
                    if e.errno != errno.EAFNOSUPPORT:
                        raise
                    continue
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
                port = sock.getsockname()[1]
                sock.listen(backlog)
                sock.setblocking(False)
            if not socks:
                raise OSError(errno.EAFNOSUPPORT, "no address family to listen on")
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks

    def stop(self) -> None:
        """Stop accepting; established comms are not affected."""
        socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _accept_ready(self, lsock: socket.socket) -> None:
        while self._socks:
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger.warning("zc:// listener %s: accept failed: %s", self._bound, e)
                return
            task = asyncio.get_running_loop().create_task(self._handle(conn, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, conn: socket.socket, addr: tuple[Any, ...]) -> None:
        peer = PREFIX + unparse_host_port(*addr[:2])
        if not self._socks:
            conn.close()  # stopped after accept: nobody would finish the handshake
            return
        try:
            conn.setblocking(False)
            _configure_socket(conn)
            opts = options_from_config()
            comm = ZCComm(AioTransport(conn, opts), _sockname(conn), peer,
                          self.deserialize, opts)
        except (OSError, ZcnetError) as e:
            logger.info("zc:// connection from %s failed before the handshake: %s", peer, e)
            conn.close()
            return
        except BaseException:
            conn.close()  # e.g. a ValueError from the configuration: do not leak the socket
            raise
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            logger.info("Connection from %s closed before handshake completed", peer)
            return
        result = self.comm_handler(comm)
        if inspect.isawaitable(result):
            await result

    def get_host_port(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._bound is None:
            raise ValueError("invalid operation on non-started ZCListener")
        return self._bound

    @property
    def listen_address(self) -> str:
        """``zc://`` plus the bound host and port."""
        return PREFIX + unparse_host_port(*self.get_host_port())

    @property
    def contact_address(self) -> str:
        """An address peers can connect to (a concrete host instead of a wildcard)."""
        host, port = self.get_host_port()
        return PREFIX + unparse_host_port(
            ensure_concrete_host(host, self.default_host), port)  # type: ignore[no-untyped-call]


class ZCBackend(Backend):
    """The ``zc://`` scheme: TCP addresses, zero-copy transport."""

    def get_connector(self) -> ZCConnector:
        """A connector for ``zc://`` addresses."""
        return ZCConnector()

    def get_listener(self, loc: str, handle_comm: CommHandler, deserialize: bool,
                     **connection_args: Any) -> ZCListener:
        """A listener on the scheme-less address ``loc``."""
        return ZCListener(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        """The host part of ``host:port``."""
        host: str = parse_host_port(loc)[0]
        return host

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        """``(host, port)`` of ``loc``."""
        host, port = parse_host_port(loc)
        return host, int(port)

    def resolve_address(self, loc: str) -> str:
        """``loc`` with its host resolved to an IP address."""
        host, port = parse_host_port(loc)
        resolved: str = unparse_host_port(ensure_ip(host), port)
        return resolved

    def get_local_address_for(self, loc: str) -> str:
        """The local address (no port) that routes to ``loc``."""
        host, _ = parse_host_port(loc)
        local: str = unparse_host_port(get_ip(ensure_ip(host)), None)  # type: ignore[no-untyped-call]
        return local
