"""Read a GGUF file's key/value metadata (its header) without loading its tensors or vocabulary into llama.cpp.

Every stage that asks what a GGUF is uses it: which chat template it embeds (:func:`llamatune.chat.model_template`),
its tokenizer (the embedded model's round trip), what export wrote.

    from llamatune.gguf_meta import read_gguf_metadata
    read_gguf_metadata("model.gguf")["tokenizer.chat_template"]
"""

from __future__ import annotations

from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


def read_gguf_metadata(path: str | Path) -> dict:
    """The key/value metadata of a GGUF file (v2/v3), without its tensors.

    A small reader of the header only: ``gguf.GGUFReader`` takes ~15 s on Gemma's 262k-token vocabulary,
    this takes well under a second. Arrays of numbers come back as lists, strings as ``str``.
    """
    import struct

    import numpy as np

    with open(path, "rb") as f:
        head = f.read(24)
        if head[:4] != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version, _, n_kv = struct.unpack("<IQQ", head[4:24])
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        # the metadata is at the start of the file; read generously, then more if needed
        buf = memoryview(f.read(64 << 20))
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise ValueError(f"{path}: metadata larger than the part read")
        pos += n
        return buf[pos - n : pos]

    def string() -> str:
        (n,) = struct.unpack("<Q", take(8))
        return bytes(take(n)).decode("utf-8")

    def value(vtype: int):
        if vtype == 8:
            return string()
        if vtype == 9:
            etype, count = struct.unpack("<IQ", take(12))
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype])
                return np.frombuffer(take(dt.itemsize * count), dtype=dt).tolist()
            return [value(etype) for _ in range(count)]
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    meta = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack("<I", take(4))
        meta[key] = value(vtype)
    return meta
