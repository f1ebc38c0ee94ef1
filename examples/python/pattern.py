"""The stream writer.py sends and reader.py checks, byte for byte.

Buffer ``seq`` starts with ``seq`` as a little-endian u64, followed by a
pattern shifted by ``seq``. Every fourth buffer is small enough to travel
inline in the record queue (at most 4 KiB); the others go in heap blocks.
"""

CAPS = "application/x-shmring-example"
DURATION = 10_000_000  # ns: 100 buffers per second of stream time

_LARGEST = 200_000
_BASE = bytes((i * 7 + 3) & 0xFF for i in range(_LARGEST + 256))


def size(seq):
    return 8 + (seq * 7919) % (3000 if seq % 4 == 0 else _LARGEST)


def payload(seq):
    shift = seq % 251
    return seq.to_bytes(8, "little") + _BASE[shift : shift + size(seq) - 8]
