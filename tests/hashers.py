"""The password hasher the tests use (``tests/conftest.py`` installs it).

Django's PBKDF2 at 1,000,000 iterations costs about 0.3 s here for every user a test
creates or logs in: most of the suite's set-up time. This is the same algorithm with fewer
iterations. A hash records its iteration count, so the processes a test starts (uvicorn, a
Celery worker), which run the real settings, still verify these passwords.
"""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 1_000
