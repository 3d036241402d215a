"""Command-line tools, one module per command (circus style): aiosd, aios-run, aios-ps, aios-kill, aios-logs."""
