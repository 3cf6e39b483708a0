"""Prometheus figures: what each process counts (requests, predict passes, the model cache),
kept in per-process files one scrape adds up, and what the database knows (jobs), read
when scraped. `folder` imports no prometheus_client and must run before anything that
does: the library chooses its multiprocess mode when it is first imported."""
