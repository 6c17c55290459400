"""`gsub`: submit a job. It loads the options, the client and nothing of gshare's other
commands, so that it starts as fast as Python and gRPC allow."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from gshare.address import AddressError
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
    except (ClientError, AddressError) as exc:
        return fail("gsub", str(exc))
    print(json.dumps({"job_id": job_id}) if args.json else job_id)
    return 0
