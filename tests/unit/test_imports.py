"""The one-way imports the layout promises (docs/architecture.md), checked in a fresh
interpreter each: what `gsub` loads, and that policies import nothing of ours."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_gsub_loads_no_scheduler_policy_tui_or_gshare_command() -> None:
    loaded = loaded_after("import gshare.cli.gsub")
    assert "gshare.client" in loaded  # it does load what it needs
    for name in loaded:
        top = name.split(".")[0]
        assert top not in {"schedulerd", "policies", "tui", "textual", "rich"}, name
    commands = ("commands", "usage", "nodes", "standalone")
    assert not {f"gshare.cli.{m}" for m in commands} & loaded
    assert "gshare.config" not in loaded


def test_gshare_loads_no_scheduler_policy_or_tui_until_a_command_needs_them() -> None:
    loaded = loaded_after("import gshare.cli.main")
    assert not {n for n in loaded if n.split(".")[0] in {"schedulerd", "policies", "tui"}}


def test_policies_import_nothing_of_ours() -> None:
    loaded = loaded_after("import policies")
    ours = {"gshare", "schedulerd", "nodeagent", "tui", "slurm_bridge"}
    assert not {n for n in loaded if n.split(".")[0] in ours}
