"""One scrape: this host's process figures added up, and the job figures from the database."""

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.config import Settings
from app.observability.folder import FOLDER_VARIABLE
from app.observability.jobs import JobFigures


class Scraper:
    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        # A registry of its own: the default one holds this process's metric objects, whose
        # values the folder's files already carry.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, os.environ[FOLDER_VARIABLE])
        registry.register(JobFigures(self.settings))
        return generate_latest(registry), CONTENT_TYPE_LATEST
