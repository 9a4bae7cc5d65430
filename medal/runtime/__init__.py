"""The plumbing every stage uses: device, distributed, seeds, signals, locks, file writes, logs, progress, plots."""
