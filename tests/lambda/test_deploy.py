"""`make lambda-deploy`, `lambda-update`, `lambda-rollback` and `lambda-undeploy` against moto's server.

The stage `moto` of zappa_settings.json (dev with `"touch": false` and its own bucket names) is deployed, updated
after a committed change, rolled back and undeployed with the commands the make targets run
(`python -m deploy zappa ...`), in a throwaway git repository holding HEAD's code and this checkout's deploy tooling,
against moto's server in a process of its own. Everything is read back through boto3. What an emulator cannot show
(DNS, certificates, RDS networking, IAM boundaries of a real account) is in the README, Deploy to AWS.

The bundle is built once per test session (the `lambda_zip` fixture, shared with the handler tests); the repository
here starts with it, and only the update builds another.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from lambda_helpers import STAGE, zappa_stage_settings

from deploy import build, project
from tests.support import moto_server_process

pytestmark = getattr(pytest.mark, "lambda")

FUNCTION = f"carsite-{STAGE}"
ROLE = f"{FUNCTION}-ZappaLambdaExecutionRole"
REGION = "us-east-1"
# The file the update changes: part of the bundle (deploy.project.PROJECT_PATHS), harmless to append a comment to.
CHANGED_FILE = "carsite/__init__.py"


def sha256_b64(path: Path) -> str:
    """A file's SHA-256 as Lambda reports a function's CodeSha256 (base64 of the digest)."""
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def _git(repository: Path, *args: str) -> str:
    identity = ("-c", "user.name=carsite deploy test", "-c", "user.email=deploy-test@localhost")
    command = ["git", *identity, *args]
    return subprocess.run(command, cwd=repository, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def repository(lambda_zip: Path) -> Iterator[Path]:
    """A git repository holding HEAD's project code and this checkout's deploy tooling, with the built bundle.

    Like a fresh clone of the commit being tested plus `make lambda-package`: the inputs of the bundle's stamp
    (requirements-lambda.txt, zappa_settings.json, deploy/*.py, HEAD's trees) are the same, so the bundle and the
    Lambda virtualenv built for this session are reused as they are, not built again.
    """
    root = Path(tempfile.mkdtemp(prefix="deploy-test-", dir=project.BUILD_DIR))
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", "HEAD", "--", *project.PROJECT_PATHS],
            cwd=project.ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        for path in (project.REQUIREMENTS, project.SETTINGS_FILE, *build.TOOLING_FILES):
            destination = root / path.relative_to(project.ROOT)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        (root / ".gitignore").write_text("/build/\n__pycache__/\n")
        _git(root, "init", "-q")
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "HEAD of the checkout under test")
        # The Lambda virtualenv as it is (9,000 files), not a copy: its stamp matches, so nothing rebuilds it.
        (root / "build").mkdir()
        (root / "build" / project.ENV_DIR.name).symlink_to(project.ENV_DIR, target_is_directory=True)
        for suffix in (".zip", ".inputs"):
            source = lambda_zip.with_suffix(suffix)
            shutil.copy2(source, root / "build" / source.name)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, str]]:
    """moto's server in its own process, with the stage's three buckets and its remote_env object.

    Yields the environment a deploy command needs: the endpoint and dummy credentials, nothing of this machine's
    AWS configuration.
    """
    settings = zappa_stage_settings(STAGE)
    with moto_server_process() as endpoint_url:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        environment.pop("PYTHONPATH", None)
        environment.update(
            AWS_ENDPOINT_URL=endpoint_url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        s3 = client(environment, "s3")
        config_bucket, config_key = str(settings["remote_env"]).removeprefix("s3://").split("/", 1)
        for bucket in (
            settings["s3_bucket"],
            config_bucket,
            settings["environment_variables"]["AWS_STORAGE_BUCKET_NAME"],
        ):
            s3.create_bucket(Bucket=bucket)
        secrets = {
            "SECRET_KEY": "deploy-test-" + uuid.uuid4().hex * 2,
            "DATABASE_URL": "postgres://u:p@db:5432/carsite",
        }
        s3.put_object(Bucket=config_bucket, Key=config_key, Body=json.dumps(secrets).encode())
        yield environment


def client(environment: dict[str, str], service: str) -> Any:
    """A boto3 client for moto's server."""
    return boto3.client(
        service,
        endpoint_url=environment["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def deploy_command(repository: Path, environment: dict[str, str], *args: str, expect: int = 0) -> str:
    """`python -m deploy zappa ARGS` in the repository (what `make lambda-deploy` and friends run); its output."""
    completed = subprocess.run(
        [sys.executable, "-m", "deploy", "zappa", *args],
        cwd=repository,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == expect, f"python -m deploy zappa {' '.join(args)}: {completed.returncode}\n{output}"
    return output


def published(lambda_client: Any) -> list[dict[str, Any]]:
    """The function's published versions, oldest first ($LATEST left out)."""
    versions = lambda_client.list_versions_by_function(FunctionName=FUNCTION)["Versions"]
    return sorted((v for v in versions if v["Version"] != "$LATEST"), key=lambda v: int(v["Version"]))


def test_it_deploys_updates_rolls_back_and_undeploys_the_checked_bundle(repository: Path, aws: dict[str, str]) -> None:
    settings = zappa_stage_settings(STAGE)
    lambda_client, s3 = client(aws, "lambda"), client(aws, "s3")
    checked = repository / "build" / f"lambda-{STAGE}.zip"

    # --- deploy: everything created, from the checked zip, which is built once ----------------------------------
    first_hash = sha256_b64(checked)
    output = deploy_command(repository, aws, "deploy", STAGE)
    assert f"build/lambda-{STAGE}.zip is up to date" in output
    assert "zappa package" not in output  # no second packaging: zappa is given the checked zip
    assert "slim_handler" not in output and "too large" not in output
    assert re.search(r"zipped +\d+\.\d MiB .*unzipped +\d+\.\d MiB in \d+ files \(Lambda limit 250 MiB", output, re.S)
    assert "Deployment complete!" in output
    assert "ERROR" not in output  # a deploy that worked must not read as failed

    function = lambda_client.get_function(FunctionName=FUNCTION)["Configuration"]
    assert function["Runtime"] == settings["runtime"] == "python3.11"
    assert function["Handler"] == "handler.lambda_handler"
    assert function["MemorySize"] == settings["memory_size"]
    assert function["Timeout"] == settings["timeout_seconds"]
    assert function["Role"] == f"arn:aws:iam::123456789012:role/{ROLE}"
    # zappa's handler sets the site up when Lambda imports it (init phase), not in the first request.
    assert function["Environment"]["Variables"]["INSTANTIATE_LAMBDA_HANDLER_ON_IMPORT"] == "true"
    assert (function["CodeSha256"], function["CodeSize"]) == (first_hash, checked.stat().st_size)
    assert [v["CodeSha256"] for v in published(lambda_client)] == [first_hash]

    from zappa.core import ASSUME_POLICY, ATTACH_POLICY

    iam = client(aws, "iam")
    role = iam.get_role(RoleName=ROLE)["Role"]
    assert role["AssumeRolePolicyDocument"] == json.loads(ASSUME_POLICY)
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == ["zappa-permissions"]
    attached = iam.get_role_policy(RoleName=ROLE, PolicyName="zappa-permissions")["PolicyDocument"]
    assert attached == json.loads(ATTACH_POLICY)

    apigateway = client(aws, "apigateway")
    (api,) = [api for api in apigateway.get_rest_apis()["items"] if api["name"] == FUNCTION]
    assert [stage["stageName"] for stage in apigateway.get_stages(restApiId=api["id"])["item"]] == [STAGE]
    resources = {resource["path"]: resource for resource in apigateway.get_resources(restApiId=api["id"])["items"]}
    assert set(resources) == {"/", "/{proxy+}"}
    for path in ("/", "/{proxy+}"):
        integration = apigateway.get_integration(
            restApiId=api["id"], resourceId=resources[path]["id"], httpMethod="ANY"
        )
        assert integration["type"] == "AWS_PROXY"
        assert f":function:{FUNCTION}/invocations" in integration["uri"]
    assert client(aws, "cloudformation").describe_stacks(StackName=FUNCTION)["Stacks"][0]["StackStatus"] == (
        "CREATE_COMPLETE"
    )
    # The sweep's schedule (zappa_settings.json "events") may invoke the function.
    statements = json.loads(lambda_client.get_policy(FunctionName=FUNCTION)["Policy"])["Statement"]
    assert [s["Action"] for s in statements if s["Principal"] == {"Service": "events.amazonaws.com"}] == [
        "lambda:InvokeFunction"
    ]

    # The handler reads its secrets from remote_env at every cold start: the deployed zip names the object made here.
    with zipfile.ZipFile(checked) as archive:
        baked = archive.read("zappa_settings.py").decode()
    config_bucket, config_key = str(settings["remote_env"]).removeprefix("s3://").split("/", 1)
    assert f"REMOTE_ENV='s3://{config_bucket}/{config_key}'" in baked
    assert f"API_STAGE='{STAGE}'" in baked
    remote_env = json.loads(s3.get_object(Bucket=config_bucket, Key=config_key)["Body"].read())
    assert set(remote_env) == {"SECRET_KEY", "DATABASE_URL"}

    # --- update: a committed change is built, checked and live, as a new version ---------------------------------
    marker = f"# deploy test {uuid.uuid4().hex}\n"
    with (repository / CHANGED_FILE).open("a") as handle:
        handle.write(marker)
    _git(repository, "commit", "-q", "-am", "A change to deploy")
    output = deploy_command(repository, aws, "update", STAGE)
    assert "slim_handler" not in output and "too large" not in output
    assert "Your updated Zappa deployment is live!" in output
    assert "ERROR" not in output
    second_hash = sha256_b64(checked)
    assert second_hash != first_hash
    with zipfile.ZipFile(checked) as archive:
        assert archive.read(CHANGED_FILE).decode().endswith(marker)
    function = lambda_client.get_function(FunctionName=FUNCTION)["Configuration"]
    assert (function["CodeSha256"], function["CodeSize"]) == (second_hash, checked.stat().st_size)
    assert [v["CodeSha256"] for v in published(lambda_client)] == [first_hash, second_hash]

    # --- rollback: the previous version's code runs again (a new version, as zappa rollback publishes) ----------
    output = deploy_command(repository, aws, "rollback", STAGE, "-n", "1")
    assert "Your updated Zappa deployment is live!" in output and "ERROR" not in output
    assert lambda_client.get_function(FunctionName=FUNCTION)["Configuration"]["CodeSha256"] == first_hash
    assert [v["CodeSha256"] for v in published(lambda_client)] == [first_hash, second_hash, first_hash]

    # --- undeploy: the function, its API, its role and its bundles go; the buckets and remote_env stay ----------
    deploy_command(repository, aws, "undeploy", STAGE, "--yes")
    assert lambda_client.list_functions()["Functions"] == []
    assert apigateway.get_rest_apis()["items"] == []
    assert client(aws, "cloudformation").describe_stacks()["Stacks"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == []
    assert client(aws, "events").list_rules()["Rules"] == []
    buckets = {bucket["Name"]: bucket for bucket in s3.list_buckets()["Buckets"]}
    assert set(buckets) == {
        settings["s3_bucket"],
        config_bucket,
        settings["environment_variables"]["AWS_STORAGE_BUCKET_NAME"],
    }
    contents = {name: [item["Key"] for item in s3.list_objects_v2(Bucket=name).get("Contents", [])] for name in buckets}
    assert contents == {name: ([config_key] if name == config_bucket else []) for name in buckets}


def test_it_explains_what_it_cannot_roll_back_or_deploy(aws: dict[str, str]) -> None:
    # Neither builds anything: this checkout will do.
    output = deploy_command(project.ROOT, aws, "rollback", STAGE, "-n", "1", expect=1)
    assert f"{FUNCTION} is not deployed (make lambda-deploy STAGE={STAGE})" in output
    assert "Traceback" not in output
    output = deploy_command(project.ROOT, aws, "deploy", STAGE, "--zip", "other.zip", expect=1)
    assert "the bundle is built and checked here" in output
    assert client(aws, "lambda").list_functions()["Functions"] == []
