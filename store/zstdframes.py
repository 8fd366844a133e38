"""Following the frame structure of a zstd stream, to tell a complete one from a cut one.

Why: a streaming decompressor reports corrupt data, but not a stream that simply stops
(python-zstandard's ``stream_writer.flush`` and ``stream_reader`` return what they have,
without error, when the input ends inside a frame). An object cut after its last block
but before its checksum, or in the middle of a block, would then pass for "valid zstd"
wherever only the NAR inside is hashed; ``zstd -t`` and Nix refuse it. ``FrameTracker``
is fed the compressed bytes alongside the decompressor and says at the end whether the
stream ended exactly at a frame boundary.

Theory of operation (RFC 8878 §3.1)
-----------------------------------
Pure format code: no I/O, constant memory, block contents are skipped, not read. The
stream is a sequence of frames, each either

- a zstd frame: magic ``28 B5 2F FD``, a frame header (descriptor byte, then the window
  descriptor, dictionary id and content size fields it announces), blocks (a 3-byte
  little-endian header: bit 0 last block, bits 1-2 type, bits 3-23 size; content of
  ``size`` bytes for raw and compressed blocks, 1 byte for RLE blocks; type 3 is
  reserved), and after the last block a 4-byte checksum if the descriptor says so; or
- a skippable frame: magic ``5? 2A 4D 18``, a 4-byte little-endian size, that many bytes.

The tracker is a table-driven state machine over fixed-size fields: each state names how
many bytes it waits for and what follows. Between fields it may skip content.

Invariants: ``complete()`` holds iff at least one zstd frame was seen and the input ended
at a frame boundary. Anything that is not a frame where one must start raises
``FormatError`` at once, naming the byte offset. Checking block contents (and checksums)
stays the decompressor's job.
"""

from __future__ import annotations

from .errors import FormatError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# states: the field awaited (its size is decided when the state is entered)
_MAGIC, _DESCRIPTOR, _HEADER, _BLOCK, _CHECKSUM, _SKIP_SIZE = range(6)
_NAMES = {
    _MAGIC: "a frame's magic number",
    _DESCRIPTOR: "a frame header",
    _HEADER: "a frame header",
    _BLOCK: "a block header",
    _CHECKSUM: "a frame checksum",
    _SKIP_SIZE: "a skippable frame's size",
}
_DICT_ID_SIZE = (0, 1, 2, 4)
_FCS_SIZE = (0, 2, 4, 8)  # (flag 0 with the single-segment bit: 1 byte)


class FrameTracker:
    """Feed it the compressed bytes in order (``update``); ask ``complete`` at the end."""

    __slots__ = ("_state", "_need", "_buf", "_skip", "_after", "_checksum", "_end", "offset", "frames")

    def __init__(self) -> None:
        self._state = _MAGIC
        self._need = 4
        self._buf = bytearray()
        self._skip = 0  # content bytes still to skip before ``_after``
        self._after = _MAGIC  # the state once the skip is done
        self._checksum = False  # the current frame ends with a checksum
        self.offset = 0  # bytes consumed
        self._end = 0  # offset just past the field being decided (for error messages)
        self.frames = 0  # zstd frames started

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next piece of the stream; ``FormatError`` if it cannot be zstd."""
        view = memoryview(data).cast("B")
        i, n = 0, len(view)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                if not self._skip:
                    self._enter(self._after)
                continue
            k = min(self._need - len(self._buf), n - i)
            self._buf += view[i : i + k]
            i += k
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._end = self.offset + i
                self._field(field)
        self.offset += n

    def complete(self) -> bool:
        """Whether the bytes so far are one or more whole frames (at least one zstd frame)."""
        return self.frames > 0 and self._state == _MAGIC and not self._buf and not self._skip

    def check_complete(self) -> None:
        """Raise ``FormatError`` unless ``complete()``, saying where the stream stopped."""
        if self.complete():
            return
        if self.frames == 0 and self._state == _MAGIC and not self._buf and not self._skip:
            raise FormatError(
                "not a zstd stream: empty" if self.offset == 0 else "no zstd frame in the stream"
            )
        what = "content" if self._skip else _NAMES[self._state]
        raise FormatError(
            f"zstd stream truncated after {self.offset} bytes, inside frame {self.frames} (expected {what})"
        )

    # ------------------------------------------------------------------ the state machine

    def _enter(self, state: int, need: int = 0) -> None:
        self._state = state
        self._need = need or {_MAGIC: 4, _DESCRIPTOR: 1, _BLOCK: 3, _CHECKSUM: 4, _SKIP_SIZE: 4}[state]

    def _skip_then(self, size: int, after: int) -> None:
        if size:
            self._skip, self._after = size, after
        else:
            self._enter(after)

    def _field(self, b: bytes) -> None:
        s = self._state
        if s == _MAGIC:
            if b == ZSTD_MAGIC:
                self.frames += 1
                self._enter(_DESCRIPTOR)
            elif b[1:] == b"\x2a\x4d\x18" and b[0] & 0xF0 == 0x50:
                self._enter(_SKIP_SIZE)
            else:
                raise FormatError(
                    f"not zstd data at byte {self._end - 4}: {b.hex()} is no frame's magic number"
                )
        elif s == _DESCRIPTOR:
            d = b[0]
            if d & 0x08:
                raise FormatError(
                    f"zstd frame {self.frames}: reserved bit set in its header (byte {self._end - 1})"
                )
            single = bool(d & 0x20)
            fcs = _FCS_SIZE[d >> 6] or (1 if single else 0)
            self._checksum = bool(d & 0x04)
            rest = (0 if single else 1) + _DICT_ID_SIZE[d & 0x03] + fcs
            if rest:
                self._enter(_HEADER, rest)
            else:
                self._enter(_BLOCK)
        elif s == _HEADER:
            self._enter(_BLOCK)
        elif s == _BLOCK:
            h = int.from_bytes(b, "little")
            last, kind, size = h & 1, (h >> 1) & 3, h >> 3
            if kind == 3:
                raise FormatError(f"zstd frame {self.frames}: reserved block type (byte {self._end - 3})")
            after = (_CHECKSUM if self._checksum else _MAGIC) if last else _BLOCK
            self._skip_then(1 if kind == 1 else size, after)
        elif s == _CHECKSUM:
            self._enter(_MAGIC)
        else:  # _SKIP_SIZE
            self._skip_then(int.from_bytes(b, "little"), _MAGIC)
