"""The rollback engine: plan, the state machines of rollback, stage and step, and execution.

Every transition is a conditional update (compare-and-set on the current state) in one
transaction together with its ledger entry; follow-up work goes through the outbox, so it
is published only after the commit and never lost. Celery messages only nudge: a worker
re-reads the database and claims a step with a lease and a fencing token, and a late answer
from an attempt whose token is stale is refused. See docs/engine.md.

One module a job, importing only each other's public names:

- ``base``: errors, the ``rollback_ended`` signal, the governance and drill hooks, the
  rollback's own transitions and summary;
- ``plan``: ``rollback_plan`` (a step per completed forward action, in stages);
- ``commands``: what operators and governance do (start, pause, resume, abort, retry,
  skip, resolve; release, reject, reopen);
- ``advance``: the one place stages move, and the dispatch of their steps;
- ``worker``: the claim rule, one attempt claimed, executed and recorded, and the
  starter's authority checked again before each step;
- ``loop``: the execution loop of a worker process (many steps in flight);
- ``sweeper``: what crashes left behind.

This package's namespace is the engine's API: ``from rollbacks import engine`` then
``engine.rollback_start(...)``.
"""

from rollbacks.engine.advance import advance, current_stage, dispatch, dispatch_due
from rollbacks.engine.base import (
    RUN_STEP,
    EngineError,
    drill_hooks,
    governance,
    locked,
    rollback_ended,
    rollback_outcome,
    transition_rollback,
    write_summary,
)
from rollbacks.engine.commands import (
    rollback_abort,
    rollback_nudge,
    rollback_pause,
    rollback_reject,
    rollback_release,
    rollback_reopen,
    rollback_require_approval,
    rollback_resume,
    rollback_start,
    step_resolve,
    step_retry,
    step_skip,
)
from rollbacks.engine.plan import rollback_plan, template_roots
from rollbacks.engine.sweeper import REDISPATCH_AFTER, expire_leases, sweep
from rollbacks.engine.worker import (
    LEASE,
    claim,
    claim_steps,
    claimable,
    executor_for,
    open_attempts,
    record,
    record_attempt_entry,
    record_locked,
    refusal,
    step_run,
    step_work,
    traceparent,
    tracer,
)

__all__ = [
    "LEASE",
    "REDISPATCH_AFTER",
    "RUN_STEP",
    "EngineError",
    "advance",
    "claim",
    "claim_steps",
    "claimable",
    "current_stage",
    "dispatch",
    "dispatch_due",
    "drill_hooks",
    "executor_for",
    "expire_leases",
    "governance",
    "locked",
    "open_attempts",
    "record",
    "record_attempt_entry",
    "record_locked",
    "refusal",
    "rollback_abort",
    "rollback_ended",
    "rollback_nudge",
    "rollback_outcome",
    "rollback_pause",
    "rollback_plan",
    "rollback_reject",
    "rollback_release",
    "rollback_reopen",
    "rollback_require_approval",
    "rollback_resume",
    "rollback_start",
    "step_resolve",
    "step_retry",
    "step_run",
    "step_skip",
    "step_work",
    "sweep",
    "template_roots",
    "traceparent",
    "transition_rollback",
    "tracer",
    "write_summary",
]
