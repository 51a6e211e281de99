"""`zappa <command> STAGE` on the checked bundle (what the lambda-deploy/-update/-rollback/-undeploy targets run).

python -m deploy zappa deploy STAGE       # build and check (or reuse) build/lambda-STAGE.zip, upload it, deploy it
python -m deploy zappa update STAGE       # the same, for a function that exists
python -m deploy zappa rollback STAGE -n 1  # run the bundle of the version before the newest again
python -m deploy zappa undeploy STAGE --yes # zappa undeploy, then the stage's bundles and execution role
python -m deploy zappa package STAGE [-o OUT]  # build and check; copy the zip to OUT
python -m deploy zappa status|tail|manage|invoke|... STAGE ...  # zappa as it is

Plain `zappa deploy` in the repository would zip the active virtualenv (.venv: torch, Pillow 13, ...). Here the
bundle is built and checked once (deploy.build), uploaded to the stage's s3_bucket (deploy.release) and given to zappa
as `--zip s3://...`: zappa packages nothing, and the function runs the very bytes that were checked.

Two things zappa 0.63 does not do right for this bundle, and what happens instead:
- `zappa deploy --zip` skips the IAM execution role that zappa otherwise creates: it is created here first, with
  zappa's own Zappa.create_iam_roles (execution_role_ensure).
- `zappa rollback` downloads the old code from the URL Lambda gives and uploads it again inline, which Lambda refuses
  for a zip over 50 MB (ours is ~63 MB), and which an emulator cannot serve. Rollback here is `zappa update --zip`
  with the retained bundle of that version (deploy.release.bundle_of_version): same result, through S3.
zappa's check for a newer zappa on PyPI is skipped (zappa is pinned in requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from deploy import release
from deploy.build import build_lock, bundle_build_locked
from deploy.project import ROOT, SETTINGS_FILE

USAGE = "usage: python -m deploy zappa deploy|update|rollback|undeploy|package|<other zappa command> STAGE [options]"


def _zappa_cli_class() -> type:
    """zappa's ZappaCLI, without its PyPI update check, tolerant of an endpoint without function URLs, and quiet about
    an AddPermission answered 200 instead of 201."""
    from zappa.cli import ZappaCLI

    class CheckedBundleCLI(ZappaCLI):
        def check_for_update(self) -> None:
            """No PyPI request: zappa is pinned (requirements-dev.txt); offline the check only prints an error."""

        def load_settings(self, *args: object, **kwargs: object) -> object:
            loaded = super().load_settings(*args, **kwargs)
            self.zappa.delete_lambda_function_url = _tolerate_missing_api(self.zappa.delete_lambda_function_url)
            self.zappa.lambda_client.add_permission = _created_means_201(self.zappa.lambda_client.add_permission)
            return loaded

    return CheckedBundleCLI


def execution_role_ensure(stage: str) -> None:
    """Create or update the stage's IAM execution role as `zappa deploy` does, unless the stage manages its own.

    `zappa deploy --zip` skips this step (zappa.cli.ZappaCLI.deploy, 0.63). It runs before the bundle is built and
    uploaded, as in zappa's own order (role, package, upload, function): IAM applies a new role after a few seconds,
    and Lambda refuses a role it cannot assume yet. Raises SystemExit when AWS refuses.
    """
    import botocore.exceptions

    cli = _zappa_cli_class()()
    cli.api_stage = stage
    cli.load_settings(str(SETTINGS_FILE))
    if not cli.manage_roles:
        return
    try:
        cli.zappa.create_iam_roles()
    except botocore.exceptions.ClientError as error:
        raise SystemExit(f"could not create or update the IAM execution role of {stage}: {error}") from None


def zappa_cli(argv: list[str]) -> int:
    """Run zappa's command line in this process, from the repository root (zappa_settings.json); its exit code."""
    print("+ zappa", " ".join(argv), flush=True)
    cli = _zappa_cli_class()()
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        cli.handle(argv)
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        cli.on_exit()
        os.chdir(previous)


def _tolerate_missing_api(delete_function_urls: Callable[[str], None]) -> Callable[[str], None]:
    """zappa's delete_lambda_function_url, for an endpoint without the function URL API.

    `zappa update` ends by deleting the function's URLs (ListFunctionUrlConfigs), which moto's server does not
    implement: it answers with a bare HTTP 404. An endpoint that has no such API has no function URL to delete.
    AWS itself answers every defined operation, so nothing changes there.
    """
    import botocore.exceptions

    def delete_lambda_function_url(function_name: str) -> None:
        try:
            delete_function_urls(function_name)
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") != "404":
                raise
            print("(this endpoint has no Lambda function URL API: no function URL to delete)", flush=True)

    return delete_lambda_function_url


def _created_means_201(add_permission: Callable[..., dict]) -> Callable[..., dict]:
    """The Lambda client's add_permission, for an endpoint that answers 200 where AWS answers 201 Created.

    zappa's create_event_permission (the sweep's schedule, "events" in zappa_settings.json) logs "ERROR:Problem
    creating permission to invoke Lambda function" for any status but 201, although the permission was made (a
    deploy that succeeds reads as failed). moto's server answers 200. AWS answers 201, so nothing changes there.
    """

    def wrapped(**kwargs: object) -> dict:
        response = add_permission(**kwargs)
        metadata = response.get("ResponseMetadata", {})
        if metadata.get("HTTPStatusCode") == 200:
            metadata["HTTPStatusCode"] = 201
        return response

    return wrapped


def zappa_run(zappa_args: list[str]) -> int:
    """`python -m deploy zappa COMMAND STAGE ...` (see the module docstring); the exit code.

    Raises SystemExit on a malformed command line, when the bundle fails its check or when there is no bundle to
    roll back to; botocore errors when AWS refuses an upload.
    """
    if len(zappa_args) < 2 or zappa_args[1].startswith("-"):
        raise SystemExit(USAGE)
    command, stage, options = zappa_args[0], zappa_args[1], zappa_args[2:]
    if command in ("deploy", "update"):
        if {"-z", "--zip", "-d", "--docker-image-uri"} & {option.split("=")[0] for option in options}:
            raise SystemExit("the bundle is built and checked here; deploy another zip with .venv/bin/zappa directly")
        if command == "deploy":
            execution_role_ensure(stage)
        with build_lock():
            zip_path, _report = bundle_build_locked(stage)
            url = release.bundle_upload(stage, zip_path)
        code = zappa_cli([command, stage, "--zip", url, *options])
        if code == 0:
            for key in release.bundles_prune(stage):
                print(f"removed s3://.../{key} (no version of the function runs it any more)", flush=True)
        return code
    if command == "rollback":
        parser = argparse.ArgumentParser(prog="python -m deploy zappa rollback STAGE")
        parser.add_argument("-n", "--num-rollback", type=int, default=1, help="versions back (1: the one before)")
        url = release.bundle_of_version(stage, parser.parse_args(options).num_rollback)
        code = zappa_cli(["update", stage, "--zip", url])
        if code == 0:
            release.bundles_prune(stage)
        return code
    if command == "undeploy":
        code = zappa_cli(zappa_args)
        if code == 0 and not release.function_exists(stage):
            for removed in release.stage_leftovers_remove(stage):
                print(f"removed {removed}", flush=True)
        return code
    if command == "package":
        parser = argparse.ArgumentParser(prog="python -m deploy zappa package STAGE")
        parser.add_argument("-o", "--output", type=Path)
        output = parser.parse_args(options).output
        with build_lock():
            zip_path, _report = bundle_build_locked(stage)
            if output:
                shutil.copyfile(zip_path, output)
                print(f"copied to {output}", flush=True)
        return 0
    return zappa_cli(zappa_args)
