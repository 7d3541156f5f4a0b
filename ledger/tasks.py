"""Celery tasks: thin, like views. Beat runs ``checkpoint`` (settings.CELERY_BEAT_SCHEDULE)."""

from celery import shared_task

from ledger.checkpoints import checkpoint_take


@shared_task(ignore_result=True, acks_late=True, max_retries=0)
def checkpoint() -> None:
    """Take a signed checkpoint if any chain moved; several at once are harmless."""
    checkpoint_take()


@shared_task(ignore_result=True, acks_late=True, max_retries=0)
def verify() -> None:
    """Verify every chain and checkpoint; /metrics reports the result (docs/metrics.md)."""
    from ledger.verification import verification_run

    verification_run(actor="beat")
