"""The v0.0.38 adapter against the stored copy of the spec slurmrestd 22.05.8 serves
(tests/contracts); the live check is in tests/integration/test_slurm_bridge.py."""

from __future__ import annotations

import copy

from slurm_bridge import ApiUse, api_contract
from tests.contracts.openapi import contract_problems, stored_spec


def test_v0038_adapter_uses_only_what_the_stored_spec_describes() -> None:
    assert contract_problems(stored_spec("v0.0.38"), api_contract("v0.0.38")) == []


def test_the_contract_check_finds_what_is_missing() -> None:
    spec = copy.deepcopy(stored_spec("v0.0.38"))
    del spec["components"]["schemas"]["v0.0.38_job_response_properties"]["properties"]["exit_code"]
    del spec["paths"]["/slurm/v0.0.38/ping"]
    uses = (
        *api_contract("v0.0.38"),
        ApiUse(
            "submit", "POST", "/slurm/v0.0.38/job/submit", request_fields=("job.no_such_field",)
        ),
        ApiUse("jobs", "GET", "/slurm/v0.0.38/jobs", response_fields=("jobs[].name[]",)),
    )
    assert contract_problems(spec, uses) == [
        "GET /slurm/v0.0.38/ping: not in the spec",
        "GET /slurm/v0.0.38/jobs answer jobs[].exit_code: no property jobs[].exit_code",
        "GET /slurm/v0.0.38/job/{job_id} answer jobs[].exit_code: no property jobs[].exit_code",
        "POST /slurm/v0.0.38/job/submit request job.no_such_field: no property job.no_such_field",
        "GET /slurm/v0.0.38/jobs answer jobs[].name[]: jobs[].name[] is not an array",
    ]
