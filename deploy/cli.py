"""Build, check and measure the AWS Lambda bundle, and deploy it with zappa (what the lambda-* make targets run).

python -m deploy build --stage dev      # -> build/lambda-dev.zip, checked
python -m deploy check build/lambda-dev.zip
python -m deploy measure --stage dev    # cold start and latency inside the bundle, JSON
python -m deploy runtime                # build/lambda-runtime (boto3 as the Lambda runtime provides it)
python -m deploy zappa deploy dev       # or update/rollback/undeploy/package: zappa on the checked zip
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deploy.build import bundle_build, runtime_build
from deploy.checks import bundle_check
from deploy.measure import bundle_measure
from deploy.zappa_wrapper import zappa_run


def main(argv: list[str] | None = None) -> None:
    """Parse the command line (sys.argv[1:] by default) and run the command; SystemExit(1) on a failed check."""
    description = "Build, check and measure the AWS Lambda bundle (what `make lambda-package` runs)."
    parser = argparse.ArgumentParser(prog="python -m deploy", description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and check build/lambda-<stage>.zip")
    build.add_argument("--stage", default="dev")
    build.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    check = commands.add_parser("check", help="check a zappa zip")
    check.add_argument("zip", type=Path)
    measure = commands.add_parser("measure", help="cold start and latency inside the bundle, as JSON")
    measure.add_argument("--stage", default="dev")
    measure.add_argument("--out", type=Path, help="also write the JSON here")
    commands.add_parser("runtime", help="build build/lambda-runtime (boto3 as the Lambda runtime provides it)")
    run_zappa = commands.add_parser(
        "zappa",
        help="zappa on the checked bundle: deploy/update/rollback/undeploy/package STAGE ... (deploy.zappa_wrapper)",
    )
    run_zappa.add_argument("zappa_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "build":
        bundle_build(args.stage, force=args.force)
    elif args.command == "check":
        report = bundle_check(args.zip)
        print(report.summary())
        if not report.ok:
            raise SystemExit(1)
    elif args.command == "measure":
        result = json.dumps(bundle_measure(args.stage), indent=2)
        print(result)
        if args.out:
            args.out.write_text(result + "\n")
    elif args.command == "runtime":
        print(runtime_build())
    elif args.command == "zappa":
        raise SystemExit(zappa_run(args.zappa_args))
