"""The manifest's own digest recomputed by hand (hashlib, not earlytom's code), for tests that craft manifests as
a forger would: compact JSON with sorted keys, without the `manifest_sha256` key itself."""

import hashlib
import json


def redigested(data: dict) -> dict:
    """`data` (a manifest object) with `manifest_sha256` set to the SHA-256 of its canonical form."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return body | {"manifest_sha256": hashlib.sha256(text.encode()).hexdigest()}
