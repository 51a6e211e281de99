"""A stand-in for one warm Lambda container: runs zappa's handler from an unzipped bundle.

Started by the Lambda tests as `python -I -S lambda_container.py TASK_ROOT RUNTIME_DIR`: isolated mode and no
`site`, so the interpreter sees the standard library, the unzipped bundle (/var/task on Lambda) and a folder holding
boto3 (/var/runtime on Lambda) and nothing else. It reads one JSON event per line on stdin, calls
`handler.lambda_handler(event, context)` and writes one JSON line per event to the original stdout:
{"response": ..., "seconds": ..., "cpu_seconds": ...} or {"error": traceback, ...}. Whatever the application
prints goes to stderr.

Standard library only: this file is not part of the bundle and must not depend on the test environment.
"""

import json
import os
import sys
import time
import traceback
import uuid


class LambdaContext:
    """The attributes of the context object the python3.11 runtime passes to the handler."""

    def __init__(self, timeout_s: float) -> None:
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "carsite-dev")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "2026/01/01/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    task_root, runtime_dir = sys.argv[1], sys.argv[2]
    # The runtime's order: the function's code first, then the runtime's own libraries (boto3).
    sys.path[:0] = [task_root, runtime_dir]
    os.chdir(task_root)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    timeout_s = float(os.environ.get("CARSITE_TEST_LAMBDA_TIMEOUT", "28"))

    import handler  # zappa's handler.py at the bundle's root, as Lambda imports it

    for line in sys.stdin:
        event = json.loads(line)
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            response = handler.lambda_handler(event, LambdaContext(timeout_s))
            reply = {"response": response}
        except BaseException:  # the runtime reports any failure of the handler as an invocation error
            reply = {"error": traceback.format_exc()}
        reply.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started)
        protocol.write(json.dumps(reply, default=str) + "\n")


if __name__ == "__main__":
    main()
