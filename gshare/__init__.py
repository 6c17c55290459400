"""gshare: what users and every component share (wire API, client, CLI, config)."""

__version__ = "0.1.0"
