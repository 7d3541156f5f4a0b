"""The starting taxonomy of incident types (slug, name, scope, cause, description).

Seeded by a migration and by ``services.incident_types_ensure`` (the demo, and tests whose
database was flushed after a migration seeded it); admins add or change them in admin.
"""

INCIDENT_TYPES = [
    (
        "bad-deploy",
        "Bad deploy of one service",
        "service",
        "bad_deploy",
        "A release broke a service: undo what it wrote, in its stores and downstream.",
    ),
    (
        "bad-data-migration",
        "Bad data migration",
        "cross_team",
        "data_migration",
        "A migration wrote wrong or partial data across systems of several teams.",
    ),
    (
        "flag-misfire",
        "Feature flag misfire",
        "single_system",
        "config_change",
        "A flag or configuration change exposed something too early: switch it back, undo "
        "its effects.",
    ),
    (
        "third-party-failure",
        "Third-party failure",
        "cross_team",
        "third_party",
        "A provider failed half-way: undo our side of what it half did.",
    ),
]
