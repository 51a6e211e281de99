"""Fixtures for the Lambda tests: the built bundle, PostgreSQL, a local S3 server and a warm "container".

Everything short of AWS is real: the zip that `make lambda-package` builds, zappa's own handler inside it, a
PostgreSQL cluster started in a temporary folder, and S3 over HTTP from moto's standalone server on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lambda_helpers import REGION, STAGE, LambdaContainer, zappa_stage_settings

from deploy import build
from tests.support import S3Server, moto_server, postgres_cluster, stop_by_closing_stdin

CONTAINER_SCRIPT = Path(__file__).with_name("lambda_container.py")


@pytest.fixture(scope="session")
def lambda_zip() -> Path:
    """build/lambda-<STAGE>.zip, built (or reused while its inputs are unchanged) and checked."""
    zip_path, _report = build.bundle_build(STAGE)
    return zip_path


@pytest.fixture(scope="session")
def lambda_task_root(lambda_zip: Path) -> Iterator[Path]:
    """The bundle unzipped, as Lambda unpacks it into /var/task."""
    root = Path(tempfile.mkdtemp(prefix="lambda-task-"))
    with zipfile.ZipFile(lambda_zip) as archive:
        archive.extractall(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def lambda_runtime_dir() -> Path:
    """boto3 and its dependencies, as the python3.11 runtime provides them in /var/runtime."""
    return build.runtime_build()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (Debian's postgresql; `make test` installs it)."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="session")
def lambda_s3() -> Iterator[S3Server]:
    """moto's S3 server over HTTP on 127.0.0.1, standing in for S3 (the container reaches it by URL)."""
    with moto_server() as endpoint_url:
        yield S3Server(endpoint_url=endpoint_url)


def lambda_secrets(postgres_url: str) -> dict[str, str]:
    """What the stage's remote_env file holds: a fresh SECRET_KEY and the database."""
    return {"SECRET_KEY": "lambda-test-" + uuid.uuid4().hex * 2, "DATABASE_URL": postgres_url}


def lambda_container_start(
    task_root: Path, runtime_dir: Path, s3_server: S3Server, secrets: dict[str, str]
) -> tuple[LambdaContainer, subprocess.Popen[str]]:
    """A cold container for the stage: the stage's remote_env file (``secrets``) and media bucket are put in the
    S3 server first; the caller stops the process (tests.support.stop_by_closing_stdin)."""
    settings = zappa_stage_settings(STAGE)
    s3 = s3_server.client()
    config_bucket, config_key = settings["remote_env"].removeprefix("s3://").split("/", 1)
    media_bucket = settings["environment_variables"]["AWS_STORAGE_BUCKET_NAME"]
    for bucket in (config_bucket, media_bucket):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    s3.put_object(Bucket=config_bucket, Key=config_key, Body=json.dumps(secrets).encode())
    environment = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(runtime_dir),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "AWS_LAMBDA_FUNCTION_NAME": f"carsite-{STAGE}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(settings["memory_size"]),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        # The execution role's credentials on Lambda; here, moto's.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        # The one thing that differs from AWS: S3 is the local server (boto3 reads this for every S3 client).
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        "CARSITE_TEST_LAMBDA_TIMEOUT": str(settings["timeout_seconds"]),
        # The function's own environment variables, which Lambda sets before it imports the handler.
        **settings.get("aws_environment_variables", {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(CONTAINER_SCRIPT), str(task_root), str(runtime_dir)],
        cwd=task_root,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return LambdaContainer(process=process), process


@pytest.fixture(scope="module")
def lambda_container(
    lambda_task_root: Path, lambda_runtime_dir: Path, lambda_s3: S3Server, postgres_url: str
) -> Iterator[LambdaContainer]:
    """A cold container for the dev stage: its secrets come from the stage's remote_env file in S3."""
    container, process = lambda_container_start(
        lambda_task_root, lambda_runtime_dir, lambda_s3, lambda_secrets(postgres_url)
    )
    try:
        yield container
    finally:
        stop_by_closing_stdin(process)


@pytest.fixture(scope="module")
def migrated_container(lambda_container: LambdaContainer) -> LambdaContainer:
    """The container after `zappa manage dev migrate` (zappa sends {"manage": "migrate"})."""
    assert lambda_container.invoke({"manage": "migrate --noinput"}) == {}
    return lambda_container
