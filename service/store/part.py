"""What every part of the store works over (``state.Store`` builds them): the settings, the
backend (the topology) and its client, the scripts and the keys."""

from __future__ import annotations

from service.settings import Settings
from service.store.backends import Backend
from service.store.keyspace import Keys
from service.store.scripts import Scripts


class Part:
    def __init__(self, settings: Settings, backend: Backend, scripts: Scripts,
                 keys: Keys) -> None:
        self.settings = settings
        self.backend = backend
        self.redis = backend.client
        self.scripts = scripts
        self.keys = keys
