"""Pretrained weights as declared, verified files (config `weights`: name -> url, sha256, file, licence).

`fetch_weights` runs where the internet is (a login node; compute nodes are usually offline):
each declared file is downloaded with urllib into a partial file while its SHA-256 is computed,
and only a matching hash is moved into place (an entry without a declared hash is kept and its
hash reported, to be pinned). A file already present with the declared hash is
kept without touching the network, so a re-run offline uses the cache. Training rules list their
weight files as inputs, so a missing file stops a run at planning time, naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)
CHUNK = 1 << 20


class WeightsError(ValueError):
    """A weight file could not be fetched or does not have its declared hash."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_one(name: str, entry: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Make `entry['file']` hold the bytes of `entry['url']` whose SHA-256 is `entry['sha256']`."""
    target = Path(entry["file"])
    expected = entry["sha256"].lower()
    if target.is_file():
        found = sha256_of(target)
        if found == expected or not expected:
            return {"name": name, "file": str(target), "sha256": found, "action": "cached", "pinned": bool(expected)}
        raise WeightsError(f"weights {name!r}: {target} has SHA-256 {found}, the config declares {expected}; "
                           "delete the file to fetch it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry["url"], timeout=timeout) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"weights {name!r}: cannot download {entry['url']}: {error}") from error
    if expected and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise WeightsError(f"weights {name!r}: {entry['url']} has SHA-256 {digest.hexdigest()}, "
                           f"the config declares {expected}; refused")
    os.replace(partial, target)
    if not expected:
        LOGGER.warning("weights %s: no SHA-256 declared; pin %s in the config", name, digest.hexdigest())
    LOGGER.info("weights %s: %s (%s)", name, target, digest.hexdigest())
    return {"name": name, "file": str(target), "sha256": digest.hexdigest(), "action": "downloaded",
            "pinned": bool(expected)}


def fetch_weights(*, weights: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Rule entry: fetch and verify every declared weight file; the summary lists what was done."""
    results = [fetch_one(entry["name"], entry, timeout=timeout_s) for entry in weights]
    return {"files": results, "downloaded": sum(r["action"] == "downloaded" for r in results),
            "cached": sum(r["action"] == "cached" for r in results),
            "unpinned": [r["name"] for r in results if not r["pinned"]],
            "licences": {entry["name"]: entry["licence"] for entry in weights}}
