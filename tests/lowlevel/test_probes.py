"""zcnet.lowlevel.probes against what the kernel really does, and the Sender/Receiver refusals
of RAW and AF_PACKET sockets that use the same rule."""

from __future__ import annotations

import errno
import socket

import pytest

from tests.restricted_child import io_uring_refusal_unavailable_reason, run_child_json
from zcnet import Receiver, Sender, UnsupportedSocketError
from zcnet.lowlevel.constants import SO_ZEROCOPY
from zcnet.lowlevel.probes import (
    IORING_OP_SEND_ZC,
    SO_ZEROCOPY_RULE,
    TCP_ZC_COPYBUF_END,
    errno_name,
    probe_io_uring,
    probe_so_zerocopy,
    probe_tcp_zerocopy_receive,
    probe_udp_segment,
    raw_or_packet_refusal,
    so_zerocopy_refusal,
)
from zcnet.lowlevel.uring import unavailable_reason

INET_KINDS = [
    (socket.AF_INET, socket.SOCK_STREAM, 0),
    (socket.AF_INET6, socket.SOCK_STREAM, 0),
    (socket.AF_INET, socket.SOCK_DGRAM, 0),
    (socket.AF_INET6, socket.SOCK_DGRAM, 0),
]
REFUSED_KINDS = [
    (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP),
    (socket.AF_PACKET, socket.SOCK_RAW, 0),
    (socket.AF_PACKET, socket.SOCK_DGRAM, 0),
    (socket.AF_UNIX, socket.SOCK_STREAM, 0),
]


def _kernel_says(family: int, type_: int, proto: int) -> int:
    """0 if the kernel accepts SO_ZEROCOPY on a new such socket, else its errno."""
    try:
        sock = socket.socket(family, type_, proto)
    except OSError as e:
        pytest.skip(f"cannot create socket {family}/{type_}/{proto}: {e}")
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError as e:
            return e.errno or -1
    return 0


@pytest.mark.parametrize("kind", INET_KINDS + REFUSED_KINDS)
def test_so_zerocopy_rule_and_probe_match_the_kernel(kind: tuple[int, int, int]) -> None:
    truth = _kernel_says(*kind)
    probe = probe_so_zerocopy(*kind)
    rule = so_zerocopy_refusal(*kind)
    assert probe.supported is (truth == 0)
    assert (rule is None) is (truth == 0)
    if truth:
        assert truth == errno.EOPNOTSUPP
        assert probe.errno == "EOPNOTSUPP"
        assert rule is not None and SO_ZEROCOPY_RULE in rule


def test_vsock_rule_matches_the_kernel() -> None:
    truth = _kernel_says(socket.AF_VSOCK, socket.SOCK_STREAM, 0)
    assert (so_zerocopy_refusal(socket.AF_VSOCK, socket.SOCK_STREAM) is None) is (truth == 0)


def test_raw_or_packet_refusal_only_for_raw_and_packet() -> None:
    for family, type_, _ in INET_KINDS:
        assert raw_or_packet_refusal(family, type_) is None
    assert raw_or_packet_refusal(socket.AF_UNIX, socket.SOCK_STREAM) is None
    for family, type_ in ((socket.AF_INET, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_DGRAM),
                          (socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_NONBLOCK)):
        assert SO_ZEROCOPY_RULE in (raw_or_packet_refusal(family, type_) or "")


def test_errno_name_uses_the_kernel_name() -> None:
    assert errno_name(errno.EOPNOTSUPP) == "EOPNOTSUPP"
    assert errno_name(errno.EPERM) == "EPERM"


def test_sender_refuses_raw_and_packet_sockets_naming_the_rule() -> None:
    for family, type_, proto in REFUSED_KINDS[:3]:
        sock = socket.socket(family, type_, proto)
        with sock, pytest.raises(UnsupportedSocketError, match="EOPNOTSUPP") as info:
            Sender(sock)
        assert SO_ZEROCOPY_RULE in str(info.value)


def test_receiver_refuses_raw_and_packet_sockets_naming_the_rule() -> None:
    for family, type_, proto in REFUSED_KINDS[:3]:
        sock = socket.socket(family, type_, proto)
        with sock, pytest.raises(UnsupportedSocketError) as info:
            Receiver(sock)
        assert SO_ZEROCOPY_RULE in str(info.value)


def test_sender_still_accepts_udp_and_its_copy_path_works() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    payload = bytes(range(256)) * 4
    with rx, Sender(tx) as sender:
        sender.send(payload).wait(timeout=10)
        assert rx.recv(2048) == payload


def test_udp_segment_probe_reads_back_the_value() -> None:
    result = probe_udp_segment()
    assert result.supported is True
    assert result.value == 1400


def test_tcp_zerocopy_receive_probe_knows_the_copybuf_fields() -> None:
    result = probe_tcp_zerocopy_receive()
    assert result.supported is True
    assert result.value is not None and result.value >= TCP_ZC_COPYBUF_END


def test_io_uring_probe_here_and_under_a_seccomp_refusal() -> None:
    here = probe_io_uring()
    assert here.setup_errno is None
    assert here.supports(0)  # IORING_OP_NOP, in every io_uring
    if unavailable_reason() is None:  # zcnet's own ring (its C probe) found SEND_ZC here
        assert here.supports(IORING_OP_SEND_ZC)
    reason = io_uring_refusal_unavailable_reason()
    if reason:
        pytest.skip(reason)
    child = run_child_json("""
        import json
        from zcnet.lowlevel.probes import probe_io_uring
        p = probe_io_uring()
        print(json.dumps({"errno": p.setup_errno, "send_zc": p.supports(47)}))
    """, refuse_io_uring=True)
    assert child == {"errno": "EPERM", "send_zc": False}
    assert IORING_OP_SEND_ZC == 47
