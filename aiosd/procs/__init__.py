"""One module per manager process: llm, memory, storage, tools. Each runs `python -m aiosd.procs.NAME`."""
