"""slurm_bridge: hands jobs to a Slurm cluster through slurmrestd.

`SlurmClient` speaks to one slurmrestd (async, httpx) in whichever supported REST API
version it serves; results come back as frozen dataclasses, failures as `SlurmError`
subclasses. See docs/slurm.md.
"""

from slurm_bridge._adapter import ApiUse
from slurm_bridge._client import SUPPORTED_VERSIONS, SlurmClient, api_contract
from slurm_bridge._errors import (
    SlurmAuthError,
    SlurmError,
    SlurmErrorDetail,
    SlurmJobNotFound,
    SlurmRejected,
    SlurmUnavailable,
    SlurmVersionError,
)
from slurm_bridge._models import JobState, SlurmJob, SlurmJobSpec, SlurmNode, SlurmPartition
from slurm_bridge._transport import RetryPolicy

__all__ = [
    "SUPPORTED_VERSIONS",
    "ApiUse",
    "JobState",
    "RetryPolicy",
    "SlurmAuthError",
    "SlurmClient",
    "SlurmError",
    "SlurmErrorDetail",
    "SlurmJob",
    "SlurmJobNotFound",
    "SlurmJobSpec",
    "SlurmNode",
    "SlurmPartition",
    "SlurmRejected",
    "SlurmUnavailable",
    "SlurmVersionError",
    "api_contract",
]
