"""Turning fuzz bytes into inputs: mutations of genuine messages, and chunked
feeding for streaming decoders. Used by every target in ``targets.py``."""

from __future__ import annotations


class Mutator:
    """Turns fuzz bytes into an input: byte 0 chooses the seed (``% len``)
    and the mode, the rest are the mutation's parameters."""

    def __init__(self, seeds: list[bytes]) -> None:
        self.seeds = seeds

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return b""
        sel, rest = data[0], data[1:]
        seed = self.seeds[(sel >> 3) % len(self.seeds)]
        mode = sel & 7
        if mode == 0:
            return rest  # raw bytes
        if mode == 1:
            return seed  # the genuine message itself
        if mode in (2, 3):  # xor bytes at positions: pairs (pos, value)
            b = bytearray(seed)
            for i in range(0, len(rest) - 1, 2):
                if b:
                    b[rest[i] * 7 % len(b) if mode == 3 else rest[i] % len(b)] ^= rest[i + 1] or 1
            return bytes(b)
        if mode == 4:  # truncate
            return seed[:rest[0] % (len(seed) + 1)] if rest else seed[:-1]
        if mode == 5:  # extend
            return seed + rest
        if mode == 6:  # splice: a prefix of the seed, then fuzz bytes
            cut = rest[0] % (len(seed) + 1) if rest else 0
            return seed[:cut] + rest[1:]
        # mode 7: overwrite a window starting at rest[0]
        if not rest:
            return seed
        b = bytearray(seed)
        start = rest[0] % (len(b) + 1)
        b[start:start + len(rest) - 1] = rest[1:]
        return bytes(b)


def chunks(data: bytes, sizes: bytes):
    """Splits ``data`` into pieces whose lengths follow ``sizes`` (1..16)."""
    i = j = 0
    while i < len(data):
        k = 1 + (sizes[j % len(sizes)] % 16 if sizes else 0)
        yield data[i:i + k]
        i += k
        j += 1
