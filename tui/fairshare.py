"""The fair-share view: the account tree, share against decayed usage, factors, GPUs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from gshare.api import gshare_pb2 as pb

BAR = 12


def bar(value: float, style: str) -> Text:
    filled = max(0, min(BAR, round(value * BAR)))
    return Text("█" * filled + "·" * (BAR - filled), style=style)


class FairShareView(DataTable[Text | str]):
    """Filled from GetUsage every few seconds by the app."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns(
            "account / user",
            "share",
            "usage",
            "GPU-h",
            "level FS",
            "FS factor",
            "running",
            "pending",
        )

    def show(self, report: pb.GetUsageResponse) -> None:
        keep = self.cursor_row
        self.clear()
        for a in report.accounts:
            name = "  " * (len(a.path) - 1) + a.path[-1]
            level = "∞" if a.level_fairshare < 0 else f"{a.level_fairshare:.2f}"
            over = a.usage_share > a.share * 1.05
            self.add_row(
                Text(name, style="bold" if not a.is_user else ""),
                Text.assemble(bar(a.share, "green"), f" {a.share:5.1%}"),
                Text.assemble(
                    bar(a.usage_share, "red" if over else "cyan"), f" {a.usage_share:5.1%}"
                ),
                f"{a.usage / 3600:.1f}",
                level,
                f"{a.fairshare_factor:.3f}" if a.is_user else "",
                str(a.running_gpus),
                str(a.pending_gpus),
                key="/".join(a.path),
            )
        if self.row_count:
            self.move_cursor(row=min(keep, self.row_count - 1))
