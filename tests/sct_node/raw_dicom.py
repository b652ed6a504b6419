"""A DICOM upper-layer client built from bytes, for sending what well-behaved toolkits refuse to send.

pynetdicom and dcmtk check UIDs and lengths before sending, so they cannot play a hostile peer. This
client writes the PDUs of PS3.8 9.3 by hand: an A-ASSOCIATE-RQ, C-STORE and C-ECHO requests as P-DATA-TF,
A-RELEASE-RQ. Everything can be cut short, mutated or sent raw (``send_raw``), and every socket has a
timeout so a test never hangs on the node.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = [
    "AssociationRefused", "RawAssociation", "associate_rq", "command_set", "element", "pdata", "pdv", "ui",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


class AssociationRefused(Exception):
    """The node answered the A-ASSOCIATE-RQ with something other than A-ASSOCIATE-AC, or closed."""


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _uid_bytes(uid: str) -> bytes:
    return uid.encode("ascii", "replace")


def associate_rq(calling_ae: str, called_ae: str = "SCT_NODE",
                 contexts: tuple[tuple[int, str, tuple[str, ...]], ...] = (
                     (1, VERIFICATION, (IMPLICIT_LE,)), (3, MR_IMAGE_STORAGE, (EXPLICIT_LE, IMPLICIT_LE))),
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    variable = struct.pack(">HH", 1, 0) + called_ae.encode().ljust(16) + calling_ae.encode().ljust(16) + bytes(32)
    variable += _item(0x10, _uid_bytes(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid_bytes(abstract)) + b"".join(_item(0x40, _uid_bytes(s)) for s in syntaxes)
        variable += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _uid_bytes("1.2.826.0.1.3680043.9.7433.1"))
    variable += _item(0x50, user)
    return struct.pack(">BBL", 0x01, 0, len(variable)) + variable


def element(group: int, elem: int, value: bytes) -> bytes:
    """One implicit VR little endian element (commands are always implicit VR LE, PS3.7 6.3.1)."""
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, elem, len(value)) + value


def ui(uid: str) -> bytes:
    return uid.encode("ascii", "replace")


def command_set(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return element(0x0000, 0x0000, struct.pack("<L", len(body))) + body


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return command_set([
        element(0x0000, 0x0002, ui(sop_class)),
        element(0x0000, 0x0100, struct.pack("<H", 0x0001)),
        element(0x0000, 0x0110, struct.pack("<H", message_id)),
        element(0x0000, 0x0700, struct.pack("<H", 0)),
        element(0x0000, 0x0800, struct.pack("<H", 0x0000)),
        element(0x0000, 0x1000, ui(sop_instance)),
    ])


def c_echo_rq(message_id: int) -> bytes:
    return command_set([
        element(0x0000, 0x0002, ui(VERIFICATION)),
        element(0x0000, 0x0100, struct.pack("<H", 0x0030)),
        element(0x0000, 0x0110, struct.pack("<H", message_id)),
        element(0x0000, 0x0800, struct.pack("<H", 0x0101)),
    ])


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """A presentation data value item: control bit 0 = command, bit 1 = last fragment."""
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def pdata(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


@dataclass
class Response:
    status: int | None
    comment: str | None


class RawAssociation:
    """One association opened by hand. ``source`` binds the client to a loopback address (127.0.0.x)."""

    def __init__(self, port: int, calling_ae: str = "PACS", *, source: str = "127.0.0.1",
                 timeout_s: float = 10.0, max_pdu: int = 16384, associate: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_pdu = max_pdu
        self.accepted: dict[int, str] = {}
        if associate:
            self.sock.sendall(associate_rq(calling_ae, max_pdu=max_pdu))
            pdu_type, body = self.read_pdu()
            if pdu_type != 0x02:
                self.close()
                raise AssociationRefused(f"answered with PDU type 0x{pdu_type:02X}" if pdu_type else "closed")
            self._parse_accept(body)

    def _parse_accept(self, body: bytes) -> None:
        offset = 68
        while offset + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, offset)
            if item_type == 0x21:
                context_id, result = body[offset + 4], body[offset + 6]
                if result == 0:
                    sub = body[offset + 8: offset + 4 + length]
                    self.accepted[context_id] = sub[4:4 + struct.unpack_from(">H", sub, 2)[0]].decode()
            offset += 4 + length

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                break
            data.extend(chunk)
        return bytes(data)

    def read_pdu(self) -> tuple[int | None, bytes]:
        """The next PDU's type and body; (None, b"") when the node closed the connection."""
        try:
            header = self.read_exactly(6)
        except (ConnectionResetError, TimeoutError, OSError):
            return None, b""
        if len(header) < 6:
            return None, b""
        pdu_type, _, length = struct.unpack(">BBL", header)
        return pdu_type, self.read_exactly(length)

    def _send_message(self, context_id: int, command: bytes, dataset: bytes | None) -> Response:
        self.sock.sendall(pdata(pdv(context_id, 0x03, command)))
        if dataset is not None:
            room = self.max_pdu - 6
            chunks = [dataset[i:i + room] for i in range(0, len(dataset), room)] or [b""]
            for index, chunk in enumerate(chunks):
                self.sock.sendall(pdata(pdv(context_id, 0x02 if index == len(chunks) - 1 else 0x00, chunk)))
        return self.read_response()

    def read_response(self) -> Response:
        command = bytearray()
        while True:
            pdu_type, body = self.read_pdu()
            if pdu_type != 0x04:
                return Response(None, None)
            offset, last = 0, False
            while offset + 6 <= len(body):
                length = struct.unpack_from(">L", body, offset)[0]
                control = body[offset + 5]
                command.extend(body[offset + 6: offset + 4 + length])
                last = last or bool(control & 0x02)
                offset += 4 + length
            if last:
                break
        status = comment = None
        offset = 0
        while offset + 8 <= len(command):
            group, elem, length = struct.unpack_from("<HHL", command, offset)
            value = bytes(command[offset + 8: offset + 8 + length])
            if (group, elem) == (0x0000, 0x0900):
                status = struct.unpack("<H", value)[0]
            elif (group, elem) == (0x0000, 0x0902):
                comment = value.decode(errors="replace").strip("\x00 ")
            offset += 8 + length
        return Response(status, comment)

    def echo(self) -> Response:
        return self._send_message(1, c_echo_rq(1), None)

    def store(self, sop_class: str, sop_instance: str, dataset: bytes, context_id: int = 3) -> Response:
        return self._send_message(context_id, c_store_rq(7, sop_class, sop_instance), dataset)

    def release(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBLL", 0x05, 0, 4, 0))
            self.read_pdu()
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
