"""Signed checkpoints of every chain's head.

A hash chain shows that nothing inside it changed, but not that the chain itself (or its
end) is still there. A checkpoint records each chain's head (seq and hash) and the total
number of entries, is chained to the previous checkpoint and signed with Ed25519, so that
verification can tell when entries a checkpoint saw are gone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils import timezone

from ledger import signing
from ledger.canonical import GENESIS, canonical_json
from ledger.models import ChainHead, Checkpoint

logger = logging.getLogger(__name__)


def checkpoint_hash(body: dict) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def checkpoint_take() -> Checkpoint | None:
    """Take a checkpoint if any chain moved since the last one; None if none did (or if a
    concurrent call took it). Safe to call from beat and from several processes at once.

    1. Load the signing key first, so that a missing key refuses before anything is written.
    2. Lock the latest checkpoint (the first one: the unique seq settles a race).
    3. Read every chain head in one statement (a consistent snapshot of committed appends)
       and keep those whose seq moved since they were last checkpointed.
    4. Sign and insert the checkpoint, then mark the heads it recorded, skipping rows that
       an append holds right now (they go into the next checkpoint instead of waiting).
    """
    key = signing.private_key()
    try:
        with transaction.atomic():
            last = Checkpoint.objects.select_for_update().order_by("-seq").first()
            heads = list(
                ChainHead.objects.filter(seq__gt=0).values_list(
                    "chain", "seq", "hash", "checkpointed_seq"
                )
            )
            moved = {chain: [seq, digest] for chain, seq, digest, done in heads if seq != done}
            if not moved:
                return None
            checkpoint = Checkpoint(
                seq=(last.seq + 1) if last else 1,
                taken_at=timezone.now(),
                prev_hash=last.hash if last else GENESIS,
                chain_count=len(heads),
                entry_count=sum(seq for _, seq, _, _ in heads),
                heads=moved,
                public_key=signing.public_key_b64(key),
            )
            body = canonical_json(checkpoint.body())
            checkpoint.hash = hashlib.sha256(body).hexdigest()
            checkpoint.signature = signing.sign(body, key)
            checkpoint.save(force_insert=True)
            free = ChainHead.objects.select_for_update(skip_locked=True).filter(chain__in=moved)
            ChainHead.objects.bulk_update(
                [
                    ChainHead(chain=chain, checkpointed_seq=moved[chain][0])
                    for chain in free.values_list("chain", flat=True)
                ],
                ["checkpointed_seq"],
                batch_size=1000,
            )
    except IntegrityError:
        return None  # another process took checkpoint number `seq` first
    logger.info(
        "ledger checkpoint %s: %s entries in %s chains, hash %s",
        checkpoint.seq,
        checkpoint.entry_count,
        checkpoint.chain_count,
        checkpoint.hash,
    )
    return checkpoint


@dataclass
class CheckpointState:
    """Every chain's head as the checkpoints recorded it, replayed in order."""

    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    # chain -> {seq: (hash, checkpoint seq)}: every head any checkpoint recorded.
    anchors: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    count: int = 0
    last: Checkpoint | None = None
    problems: list[dict] = field(default_factory=list)


def replay(checkpoints, trusted: set[str]) -> CheckpointState:
    """Check each checkpoint (hash, link to the previous one, signature by a trusted key,
    counts) and replay their heads. Problems name the checkpoint."""
    state = CheckpointState()
    prev_hash, expected_seq, entries = GENESIS, 1, 0

    def problem(cp: Checkpoint, what: str) -> None:
        state.problems.append(
            {
                "kind": "checkpoint",
                "checkpoint": cp.seq,
                "chain": "",
                "seq": None,
                "id": None,
                "message": f"checkpoint {cp.seq}: {what}",
            }
        )

    for cp in checkpoints:
        state.count += 1
        body = canonical_json(cp.body())
        if cp.seq != expected_seq:
            problem(cp, f"expected checkpoint {expected_seq} here (checkpoints missing)")
        if cp.prev_hash != prev_hash:
            problem(cp, "prev_hash does not match the previous checkpoint's hash")
        if hashlib.sha256(body).hexdigest() != cp.hash:
            problem(cp, "its content does not match its hash (changed)")
        if not signing.is_valid_signature(cp.public_key, body, cp.signature):
            problem(cp, "the signature does not verify")
        elif cp.public_key not in trusted:
            problem(cp, f"signed by key {signing.key_id(cp.public_key)}, which is not trusted")
        for chain, (seq, digest) in (cp.heads or {}).items():
            old = state.heads.get(chain, (0, GENESIS))[0]
            entries += seq - old
            state.heads[chain] = (seq, digest)
            state.anchors.setdefault(chain, {})[seq] = (digest, cp.seq)
        if len(state.heads) != cp.chain_count or entries != cp.entry_count:
            problem(
                cp,
                f"records {cp.entry_count} entries in {cp.chain_count} chains but its heads add "
                f"up to {entries} in {len(state.heads)}",
            )
        prev_hash, expected_seq, state.last = cp.hash, cp.seq + 1, cp
    return state
