"""Making captures: the profiler (server, windows), the profile dir on disk, the run record and
manifest beside each capture, verification, the offline run and the live server's captures."""
