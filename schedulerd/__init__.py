"""schedulerd: the central daemon. The only writer of cluster state."""
