"""Read a ``multipart/related`` body (RFC 2387, RFC 2046 5.1) from a file without loading it into memory.

The STOW-RS service streams a request's body to a temporary file, then walks its parts here over a memory
map: each part is a (headers, start, end) triple of offsets, so an instance is copied out only when it is
stored, and a request of a whole series never has to fit in memory. Malformed bodies raise
:class:`MultipartError` with what is wrong; the limits (number of parts, header size) bound what a request
can make the node do.
"""

from __future__ import annotations

import email.message
import mmap
from collections.abc import Iterator
from dataclasses import dataclass

from sct_node.errors import InputError

__all__ = ["MultipartError", "Part", "content_type", "parts"]

MAX_PARTS = 100_000
MAX_HEADER_BYTES = 8192
MAX_BOUNDARY = 200


class MultipartError(InputError):
    """The request's body is not the multipart/related it says it is."""


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names lower-cased) and where its content lies in the body."""

    headers: dict[str, str]
    start: int
    end: int

    @property
    def media_type(self) -> str:
        return content_type(self.headers.get("content-type", "application/octet-stream"))[0]


def content_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header's media type (lower case) and parameters (names lower case, quotes removed)."""
    message = email.message.Message()
    message["content-type"] = value
    params = {str(key).lower(): str(val) for key, val in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


def parts(body: mmap.mmap | bytes, boundary: str) -> Iterator[Part]:
    """The parts of ``body`` delimited by ``boundary``.

    Raises
    ------
    MultipartError
        No opening delimiter, an unterminated part or header block, too many parts, or headers too long.
    """
    # RFC 2046 says at most 70 characters; Orthanc's DICOMweb plugin sends 72 (two UUIDs). Be liberal, but
    # bounded.
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise MultipartError(f"the multipart boundary must be 1 to {MAX_BOUNDARY} characters")
    delimiter = b"--" + boundary.encode("latin-1")
    position = body.find(delimiter)
    if position < 0:
        raise MultipartError("the body has no part: its boundary never appears")
    count = 0
    while True:
        position += len(delimiter)
        if body[position:position + 2] == b"--":
            return  # the close delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise MultipartError("the body ends after a boundary (no closing '--')")
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end < 0 or header_end - line_end > MAX_HEADER_BYTES:
            raise MultipartError(f"part {count + 1}: its headers are not terminated by an empty line within "
                                 f"{MAX_HEADER_BYTES} bytes")
        headers = {}
        for line in bytes(body[line_end + 2:header_end]).decode("latin-1").split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        start = header_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise MultipartError(f"part {count + 1} is not terminated by the boundary (truncated body)")
        count += 1
        if count > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts in one request")
        yield Part(headers, start, end)
        position = end + 2
