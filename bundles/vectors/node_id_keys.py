#!/usr/bin/env python3
"""Golden vectors for sealing keys from node IDs (bundles/README.md §11.1), made without
Mycelium's code: Ed25519 and X25519 from Python's `cryptography` (OpenSSL), SHA-512 from
hashlib, and the birational map u = (1 + y) / (1 - y) mod p written out here.

Usage: python3 bundles/vectors/node_id_keys.py > bundles/vectors/node-id-keys.json
"""
import base64
import hashlib
import json

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

P = 2**255 - 19


def raw(pub):
    return pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


out = []
for name, seed in [
    ("zero seed", bytes(32)),
    ("counting seed", bytes(range(32))),
    ("a's seed in the tests", bytes([1] * 32)),
    ("b's seed in the tests", bytes([2] * 32)),
]:
    pk = raw(ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key())
    # The X25519 secret: the Ed25519 secret scalar, SHA-512(seed)[:32], clamped.
    s = bytearray(hashlib.sha512(seed).digest()[:32])
    s[0] &= 248
    s[31] &= 127
    s[31] |= 64
    by_dh = raw(x25519.X25519PrivateKey.from_private_bytes(bytes(s)).public_key())
    y = int.from_bytes(pk, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    by_map = u.to_bytes(32, "little")
    assert by_dh == by_map, name
    node = base64.b32encode(pk).decode().lower().rstrip("=")
    out.append({
        "name": name,
        "seed": seed.hex(),
        "ed25519_public": pk.hex(),
        "node_id": f"dtn://{node}/",
        "x25519_secret": bytes(s).hex(),
        "x25519_public": by_map.hex(),
    })
print(json.dumps(out, indent=2))
