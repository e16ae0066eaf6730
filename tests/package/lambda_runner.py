"""Run one handler of the unzipped package the way Lambda's Python runtime does: started with
``python -I -S`` (no site-packages, no user paths, no PYTHON* variables), sys.path = the code
folder, then the runtime's own boto3/botocore. Prints one JSON line: the handler's answer, or the
error Lambda would report (``errorType`` / ``errorMessage``).

usage: python -I -S lambda_runner.py CODE_DIR RUNTIME_DIR MODULE.FUNCTION EVENT_JSON
"""
import json
import sys
import time
import traceback

code_dir, runtime_dir, handler, event = sys.argv[1:5]
sys.path[:0] = [code_dir, runtime_dir]


class Context:
    """The attributes Powertools and kip read from Lambda's context object."""
    function_name = "kip-rehearsal"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:kip-rehearsal"
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    log_group_name = "/aws/lambda/kip-prod/rehearsal"
    log_stream_name = "rehearsal"

    def __init__(self):
        self._deadline = time.time() + 120

    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.time()) * 1000)


try:
    module_name, function = handler.rsplit(".", 1)
    module = __import__(module_name)
    answer = getattr(module, function)(json.loads(event), Context())
    out = {"ok": True, "answer": answer}
except Exception as exc:    # what Lambda reports: Runtime.ImportModuleError or the handler's error
    out = {"ok": False, "errorType": type(exc).__name__, "errorMessage": str(exc),
           "trace": traceback.format_exc()}
outside = sorted({m.__file__ for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) and "site-packages" in m.__file__})
out["site_packages_modules"] = outside
print("\n" + json.dumps(out, default=str))
