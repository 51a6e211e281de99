"""The checked bundles of a stage in its `s3_bucket`: uploaded once per build, found again by Lambda version.

Lambda takes a zip over 50 MB only from S3, so every deploy or update uploads the checked build/lambda-<stage>.zip to
`s3://<s3_bucket>/<function>-bundles/<sha256>.zip` and hands zappa that URL (`zappa deploy|update --zip s3://...`):
the zip deployed is byte for byte the zip that passed the checks. The objects stay while a published version of the
function runs them, which is what rollback needs: a version's CodeSha256 (base64 SHA-256 of its zip) names its
bundle, and rolling back is `zappa update --zip` with that bundle.

AWS is reached through boto3 as configured on the machine (credentials, AWS_PROFILE, AWS_ENDPOINT_URL for an
emulator such as moto's server).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from deploy.project import stage_settings

BUNDLE_PREFIX = "{function}-bundles/"
# zappa's default execution role (zappa.cli: role_name unless the stage sets one).
ZAPPA_ROLE_SUFFIX = "-ZappaLambdaExecutionRole"
# The description zappa gives the REST API it creates (zappa.core, apigateway_description's default).
ZAPPA_API_DESCRIPTION = "Created automatically by Zappa."


def function_name(stage: str) -> str:
    """The Lambda function's name as zappa derives it: `<project_name>-<stage>` ("carsite-dev")."""
    return f"{stage_settings(stage)['project_name']}-{stage}"


def stage_session(stage: str) -> Any:
    """A boto3 session in the stage's region (and `profile_name`, if it sets one), as the machine configures AWS."""
    import boto3

    settings = stage_settings(stage)
    return boto3.Session(profile_name=settings.get("profile_name"), region_name=str(settings["aws_region"]))


def stage_clients(stage: str) -> tuple[Any, Any, Any]:
    """boto3 clients for S3, Lambda and IAM in the stage's region (stage_session)."""
    session = stage_session(stage)
    return session.client("s3"), session.client("lambda"), session.client("iam")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def code_sha256_hex(code_sha256: str) -> str:
    """Lambda's CodeSha256 (base64 of the zip's SHA-256 digest) as hex."""
    return base64.b64decode(code_sha256).hex()


def bundle_key(stage: str, sha256_hex: str) -> str:
    """The S3 key of the stage's bundle with this SHA-256 in its s3_bucket."""
    return BUNDLE_PREFIX.format(function=function_name(stage)) + f"{sha256_hex}.zip"


def bundle_upload(stage: str, zip_path: Path) -> str:
    """Upload the checked zip to the stage's s3_bucket (unless that very zip is there already); its s3:// URL.

    Raises botocore.exceptions.ClientError (or BotoCoreError) when S3 refuses, e.g. a missing bucket.
    """
    s3, _lambda, _iam = stage_clients(stage)
    bucket = str(stage_settings(stage)["s3_bucket"])
    key = bundle_key(stage, file_sha256(zip_path))
    size = zip_path.stat().st_size
    try:
        present = s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
    except s3.exceptions.ClientError:
        present = False
    if present:
        print(f"s3://{bucket}/{key} holds this bundle already", flush=True)
    else:
        print(f"uploading {zip_path.name} ({size / 1024 / 1024:.1f} MiB) to s3://{bucket}/{key}", flush=True)
        s3.upload_file(str(zip_path), bucket, key)
    return f"s3://{bucket}/{key}"


def function_exists(stage: str) -> bool:
    """True when the stage's Lambda function exists."""
    _s3, lambda_client, _iam = stage_clients(stage)
    try:
        lambda_client.get_function(FunctionName=function_name(stage))
    except lambda_client.exceptions.ResourceNotFoundException:
        return False
    return True


def function_versions(stage: str) -> list[dict[str, Any]]:
    """The function's published versions, newest first (Lambda's configuration dicts; $LATEST left out).

    Raises SystemExit when the function does not exist.
    """
    if not function_exists(stage):
        raise SystemExit(f"{function_name(stage)} is not deployed (make lambda-deploy STAGE={stage})")
    _s3, lambda_client, _iam = stage_clients(stage)
    versions: list[dict[str, Any]] = []
    for page in lambda_client.get_paginator("list_versions_by_function").paginate(FunctionName=function_name(stage)):
        versions.extend(version for version in page["Versions"] if version["Version"] != "$LATEST")
    return sorted(versions, key=lambda version: -int(version["Version"]))


def bundle_of_version(stage: str, versions_back: int) -> str:
    """The s3:// URL of the bundle that the version `versions_back` before the newest one runs.

    Counts like `zappa rollback -n`: 1 is the version before the newest. Raises SystemExit when there is no such
    version or its bundle is no longer in the bucket.
    """
    versions = function_versions(stage)
    if versions_back < 1 or versions_back >= len(versions):
        raise SystemExit(
            f"{function_name(stage)} has {len(versions)} published version(s): cannot go back {versions_back}"
        )
    version = versions[versions_back]
    s3, _lambda, _iam = stage_clients(stage)
    bucket = str(stage_settings(stage)["s3_bucket"])
    key = bundle_key(stage, code_sha256_hex(version["CodeSha256"]))
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError:
        raise SystemExit(
            f"version {version['Version']} of {function_name(stage)} runs a bundle that is not in s3://{bucket}/{key} "
            "(deployed without `python -m deploy`?): check out its commit and run `make lambda-update` instead"
        ) from None
    print(f"version {version['Version']} ({version['LastModified']}) ran s3://{bucket}/{key}", flush=True)
    return f"s3://{bucket}/{key}"


def _bundle_keys(stage: str) -> list[str]:
    s3, _lambda, _iam = stage_clients(stage)
    bucket = str(stage_settings(stage)["s3_bucket"])
    prefix = BUNDLE_PREFIX.format(function=function_name(stage))
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def bundles_prune(stage: str) -> list[str]:
    """Delete the stage's bundles that no published version runs any more (zappa keeps num_retained_versions).

    Returns the deleted keys. Raises botocore.exceptions.ClientError when AWS refuses.
    """
    s3, _lambda, _iam = stage_clients(stage)
    bucket = str(stage_settings(stage)["s3_bucket"])
    running = {bundle_key(stage, code_sha256_hex(version["CodeSha256"])) for version in function_versions(stage)}
    stale = [key for key in _bundle_keys(stage) if key not in running]
    for key in stale:
        s3.delete_object(Bucket=bucket, Key=key)
    return stale


def stage_leftovers_remove(stage: str) -> list[str]:
    """After `zappa undeploy`: delete the stage's bundles and the execution role zappa made for it (zappa keeps both).

    Also deletes the stage's REST API where the endpoint kept it after zappa deleted its stack (see below).

    The role goes only when zappa manages it under its default name (no `role_name`/`role_arn` in the stage). Returns
    what was removed, as "s3://..." and "iam role ..." lines. Raises botocore.exceptions.ClientError when AWS refuses.
    """
    settings = stage_settings(stage)
    s3, _lambda, iam = stage_clients(stage)
    bucket = str(settings["s3_bucket"])
    removed = []
    for key in _bundle_keys(stage):
        s3.delete_object(Bucket=bucket, Key=key)
        removed.append(f"s3://{bucket}/{key}")
    # zappa removes the API by deleting its CloudFormation stack. An emulator may delete the stack and keep the API
    # (moto 5.2 cannot delete AWS::ApiGateway::RestApi through CloudFormation); on AWS nothing is left to find here.
    session_apis = stage_session(stage).client("apigateway")
    for page in session_apis.get_paginator("get_rest_apis").paginate():
        for api in page["items"]:
            if api["name"] == function_name(stage) and api.get("description") == ZAPPA_API_DESCRIPTION:
                session_apis.delete_rest_api(restApiId=api["id"])
                removed.append(f"api gateway rest api {api['id']} (its stack was deleted, the API was left)")
    if settings.get("manage_roles", True) and not settings.get("role_name") and not settings.get("role_arn"):
        role = function_name(stage) + ZAPPA_ROLE_SUFFIX
        try:
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                iam.delete_role_policy(RoleName=role, PolicyName=name)
            for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
            iam.delete_role(RoleName=role)
            removed.append(f"iam role {role}")
        except iam.exceptions.NoSuchEntityException:
            pass
    return removed
