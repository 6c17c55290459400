"""tui: `gshare top`, the Textual cluster view."""
