"""The test suite's database tests again, on PostgreSQL (what Lambda runs on): `python -m tests.on_postgres [pytest
options]`, the second half of `make test`.

Starts a throwaway PostgreSQL cluster (Debian's server, tests/support.py: postgres_cluster), then runs pytest with
DATABASE_URL pointing at it and only the tests that touch the database (CARSITE_DATABASE_TESTS_ONLY: see
tests/conftest.py); the others do not depend on the database and already ran once. Exits with pytest's status.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, postgres_cluster


def main(argv: list[str]) -> int:
    with postgres_cluster() as url:
        env = {**os.environ, "DATABASE_URL": url, "CARSITE_DATABASE_TESTS_ONLY": "1"}
        print(f"Running the database tests on PostgreSQL ({url})", flush=True)
        return subprocess.run([sys.executable, "-m", "pytest", *argv], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
