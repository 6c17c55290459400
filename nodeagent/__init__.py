"""nodeagent: one per GPU node. Inventories GPUs, launches and signals jobs."""
