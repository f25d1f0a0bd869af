"""What makes the ledger's integrity independent of the database: a key it does not hold, and
signed checkpoints kept somewhere else.

Anyone with the database's credentials can recompute plain SHA-256 hashes, so the chain alone
cannot tell their edits from the bot's. From LEDGER_SIGNING_KEY two keys are derived (HKDF,
one label each): an HMAC key for the chain's hash version 3, and an Ed25519 key that signs
checkpoints, the ledger head (seq and hash) at a moment. Checkpoints go to a directory or are
PUT to an http(s) URL (write-once object storage), so that cutting the tail, re-chaining or
emptying the table shows against the last one signed, even by someone who can rewrite the head.
"""
from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT = "consent-ledger-checkpoint/1"
_CHAIN_LABEL = b"consent-ledger chain hmac-sha256 v3"
_SIGNING_LABEL = b"consent-ledger checkpoint ed25519 v1"


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


class LedgerKey:
    """The keys derived from LEDGER_SIGNING_KEY; only the public half of the signing key is ever written out."""

    def __init__(self, secret: str):
        material = secret.encode()
        self.chain = _derive(material, _CHAIN_LABEL)  # HMAC key of hash version 3
        self._signing = Ed25519PrivateKey.from_private_bytes(_derive(material, _SIGNING_LABEL))
        self.public_key = self._signing.public_key().public_bytes_raw().hex()

    def checkpoint(self, seq: int, head_hash: str, at: datetime) -> Checkpoint:
        """The ledger head at `at`, signed."""
        unsigned = Checkpoint(seq, head_hash, at.astimezone(UTC), self.public_key)
        return replace(unsigned, signature=self._signing.sign(unsigned.signed_part()).hex())

    def signed(self, checkpoint: Checkpoint) -> bool:
        """Whether this key signed exactly this checkpoint."""
        try:
            self._signing.public_key().verify(bytes.fromhex(checkpoint.signature), checkpoint.signed_part())
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Checkpoint:
    """The ledger head (seq and hash) at a moment (UTC), and who signed it: one JSON file."""

    seq: int
    head_hash: str
    at: datetime
    public_key: str
    signature: str = ""

    @property
    def name(self) -> str:
        """By seq and time, so that no checkpoint is ever written over another."""
        return f"ledger-{self.seq:012d}-{self.at:%Y%m%dT%H%M%S%fZ}.json"

    def _fields(self) -> dict:
        at = self.at.isoformat(timespec="microseconds")
        return {"format": FORMAT, "seq": self.seq, "head_hash": self.head_hash, "at": at, "public_key": self.public_key}

    def signed_part(self) -> bytes:
        return json.dumps(self._fields(), sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> bytes:
        return json.dumps({**self._fields(), "signature": self.signature}, sort_keys=True, indent=1).encode() + b"\n"


class CheckpointError(Exception):
    """A checkpoint could not be written, or one read back is not trustworthy: the message says which and why."""


def write_checkpoint(checkpoint: Checkpoint, where: str) -> str:
    """Write the checkpoint into the directory `where`, or PUT it under the http(s) URL `where`;
    never over an existing one. Returns where it went."""
    if kept_at_url(where):
        return _put(checkpoint, where)
    path = Path(where) / checkpoint.name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as out:  # exclusive: an existing file is an error, never replaced
            out.write(checkpoint.to_json())
            out.flush()
            os.fsync(out.fileno())
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint {path}: {error.strerror or error}") from None
    return str(path)


def _put(checkpoint: Checkpoint, base: str) -> str:
    url = urlsplit(base)
    target = f"{url._replace(netloc=url.netloc.rpartition('@')[2]).geturl().rstrip('/')}/{checkpoint.name}"  # no credentials
    headers = {"Content-Type": "application/json", "If-None-Match": "*"}  # write-once: the store refuses to replace
    if url.username:
        credentials = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    request = urllib.request.Request(target, data=checkpoint.to_json(), headers=headers, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as error:
        raise CheckpointError(f"cannot write checkpoint {target}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise CheckpointError(f"cannot write checkpoint {target}: {getattr(error, 'reason', error)}") from None
    return target


def load_checkpoints(directory: Path, key: LedgerKey) -> list[Checkpoint]:
    """Every checkpoint (`*.json`) in the directory, oldest seq first; raises CheckpointError naming the
    first one that cannot be read, was signed with another key, or whose signature does not match."""
    found = []
    for path in sorted(directory.glob("*.json")):
        checkpoint = read_checkpoint(path)
        if (problem := signature_problem(checkpoint, key)) is not None:
            raise CheckpointError(f"checkpoint {path.name} {problem}")
        found.append(checkpoint)
    return sorted(found, key=lambda checkpoint: (checkpoint.seq, checkpoint.at))


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint file as it is, its signature not checked; CheckpointError when it is not a checkpoint."""
    try:
        raw = json.loads(path.read_bytes())
        checkpoint = Checkpoint(
            int(raw["seq"]), str(raw["head_hash"]), datetime.fromisoformat(raw["at"]), str(raw["public_key"]), str(raw["signature"])
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path.name} cannot be read ({type(error).__name__}): it is not a checkpoint") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path.name} is not in the format {FORMAT}")
    return checkpoint


def signature_problem(checkpoint: Checkpoint, key: LedgerKey) -> str | None:
    """Why `key` cannot vouch for the checkpoint (worded to follow its name), or None when it signed it."""
    if checkpoint.public_key != key.public_key:
        return "was signed with another key than this LEDGER_SIGNING_KEY"
    if not key.signed(checkpoint):
        return "has a bad signature: it was changed after it was signed"
    return None


def kept_at_url(where: str) -> bool:
    """Whether LEDGER_CHECKPOINTS is a URL checkpoints are PUT under (write-once: they cannot be read back from here)."""
    return where.startswith(("http://", "https://"))


def checkpoint_directory(where: str) -> Path | None:
    """The directory LEDGER_CHECKPOINTS names, when it is one that exists."""
    return Path(where) if not kept_at_url(where) and Path(where).is_dir() else None


def newest_checkpoint(directory: Path) -> Path | None:
    """The file of the newest checkpoint in the directory: names sort by seq, then time (Checkpoint.name)."""
    return max(directory.glob("*.json"), key=lambda path: path.name, default=None)
