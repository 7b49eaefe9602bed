"""The files of a run, shared by the side that writes them (`capture`) and the sides that read
them (`analysis`, `service`, the CLIs): their typed schema (`record.py`, `parts.py`), where runs
live on disk (`layout.py`) and the one validating reader and atomic writer (`files.py`).
Nothing here drives a profiler or imports another `profiling` package."""
