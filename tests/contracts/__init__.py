"""Contracts between the Slurm bridge and the REST API slurmrestd serves.

`slurmrestd-v0.0.38.json` is the part of the OpenAPI document Debian 12's slurmrestd
22.05.8 serves (`GET /openapi/v3`) that describes v0.0.38, trimmed by `trim_spec` to the
paths the bridge uses and the schemas they reach. The live contract test checks the
bridge against the spec a running slurmrestd serves and that this copy still matches it;
the offline one checks the bridge against this copy where there is no Slurm.
"""
