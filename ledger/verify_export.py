"""Verify a ledger export against its manifest, offline.

    python -m ledger.verify_export EXPORT MANIFEST [--public-key BASE64 | --public-key-file PEM]

Needs Python and ``cryptography`` only: no database, no Django settings. Checks, in order:

1. the manifest's Ed25519 signature over its canonical JSON, by the key it names, and that
   this key is the one you pinned with ``--public-key`` (else it says whose key it is);
2. the file's size and SHA-256 against the manifest;
3. every entry: its hash recomputed from its fields, ids increasing and below the
   export's bound, the count and the first and last hash against the manifest, and
   ``prev_hash`` against the hash of the entry before it wherever both are in the file.

Prints ``OK: …`` and exits 0, or prints what failed and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.canonical import CanonicalError, canonical_json, entry_from_csv, entry_hash


class ExportInvalid(Exception):
    pass


def _public_key_b64(args) -> str | None:
    if args.public_key:
        return args.public_key.strip()
    if args.public_key_file:
        key = serialization.load_pem_public_key(Path(args.public_key_file).read_bytes())
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()
    return None


def check_signature(document: dict, pinned: str | None) -> dict:
    """The signed manifest, once its signature and key are checked."""
    try:
        manifest, signature = document["manifest"], document["signature"]
        public = manifest["public_key"]
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public, validate=True))
        key.verify(base64.b64decode(signature, validate=True), canonical_json(manifest))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportInvalid(f"the manifest is malformed: {exc}") from exc
    except InvalidSignature:
        raise ExportInvalid("the manifest's signature does not verify: it was altered") from None
    if pinned is not None and pinned != public:
        raise ExportInvalid(
            f"the manifest is signed by key {public}, not by the key you trust ({pinned})"
        )
    return manifest


def _entries(path: Path, fmt: str):
    """(line number, entry fields, hash) for each entry of the file."""
    if fmt == "jsonl":
        with path.open(encoding="utf-8", newline="") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    raise ExportInvalid(f"line {number} is cut short")
                entry = json.loads(line)
                yield number, entry, entry.pop("hash")
    elif fmt == "csv":
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                entry, digest = entry_from_csv(row)
                yield number, entry, digest
    else:
        raise ExportInvalid(f"unknown format {fmt!r}")


def verify_export(path: Path, document: dict, pinned: str | None = None) -> str:
    manifest = check_signature(document, pinned)
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
            size += len(block)
    if size != manifest["bytes"] or sha.hexdigest() != manifest["sha256"]:
        raise ExportInvalid(
            f"the file is not the one the manifest describes: SHA-256 {sha.hexdigest()} "
            f"({size} bytes), manifest says {manifest['sha256']} ({manifest['bytes']} bytes)"
        )
    count, first, last, last_id, links = 0, "", "", 0, 0
    previous: dict[str, tuple[int, str]] = {}
    try:
        for number, entry, digest in _entries(path, manifest["format"]):
            where = f"line {number} (entry #{entry.get('id')}, {entry.get('chain')} seq {entry.get('seq')})"
            if entry_hash(entry) != digest:
                raise ExportInvalid(f"{where}: the entry does not match its hash")
            if not last_id < entry["id"] < manifest["upto_id"]:
                raise ExportInvalid(
                    f"{where}: ids must increase and stay below {manifest['upto_id']}"
                )
            before = previous.get(entry["chain"])
            if before is not None and before[0] == entry["seq"] - 1:
                if entry["prev_hash"] != before[1]:
                    raise ExportInvalid(
                        f"{where}: prev_hash is not the hash of the entry before it"
                    )
                links += 1
            previous[entry["chain"]] = (entry["seq"], digest)
            first = first or digest
            last, last_id = digest, entry["id"]
            count += 1
    except (CanonicalError, KeyError, TypeError, ValueError) as exc:
        raise ExportInvalid(f"malformed entry: {exc}") from exc
    if (count, first, last) != (manifest["count"], manifest["first_hash"], manifest["last_hash"]):
        raise ExportInvalid(
            f"{count} entries from {first or '-'} to {last or '-'}; the manifest says "
            f"{manifest['count']} from {manifest['first_hash'] or '-'} to {manifest['last_hash'] or '-'}"
        )
    key_note = "the key you pinned" if pinned else f"key {manifest['public_key']} (not pinned)"
    return (
        f"OK: {count} entries, {links} chain links checked, SHA-256 {manifest['sha256']}, "
        f"signed by {key_note}, export {manifest['export_id']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.verify_export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("export", type=Path, help="the exported .jsonl or .csv file")
    parser.add_argument("manifest", type=Path, help="its manifest (.manifest.json)")
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--public-key", help="the Ed25519 public key you trust (base64)")
    pin.add_argument("--public-key-file", help="the same as a PEM file")
    args = parser.parse_args(argv)
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True)
    try:
        document = json.loads(args.manifest.read_text(encoding="utf-8"))
        message = verify_export(args.export, document, _public_key_b64(args))
    except (ExportInvalid, OSError, json.JSONDecodeError) as exc:
        out.write(f"FAILED: {exc}\n")
        return 1
    out.write(message + "\n")
    if not (args.public_key or args.public_key_file):
        out.write(
            "Pin the key to be sure who signed: --public-key "
            f"{document['manifest']['public_key']} (compare it with the ledger page).\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
