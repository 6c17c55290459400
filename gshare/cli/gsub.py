"""`gsub`: submit a job. It loads the options, the client and nothing of gshare's other
commands, so that it starts as fast as Python and gRPC allow."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import grpc

from gshare.address import AddressError
from gshare.arrays import parse_array
from gshare.cli.common import UsageError, fail
from gshare.cli.options import build_spec, gsub_parser
from gshare.client import Client, ClientError
from gshare.jobscript import ScriptError


def main(argv: Sequence[str] | None = None) -> int:
    parser = gsub_parser()
    try:
        args = parser.parse_intermixed_args(argv)
        spec = build_spec(args, dict(os.environ))
    except (UsageError, ScriptError) as exc:
        return fail("gsub", str(exc), 2)
    try:
        with Client(args.address) as client:
            job_id = client.submit(spec)
    except ClientError as exc:
        # the scheduler refused the request itself (bad input): the same exit as here
        return fail("gsub", str(exc), 2 if exc.code is grpc.StatusCode.INVALID_ARGUMENT else 1)
    except AddressError as exc:
        return fail("gsub", str(exc))
    if args.json:
        reply: dict[str, object] = {"job_id": job_id}
        if spec.array:
            reply["tasks"] = len(spec.task_params) or parse_array(spec.array, 1 << 30).count
        print(json.dumps(reply))
    else:
        print(job_id)
    return 0
