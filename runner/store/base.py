"""The base of the store's per-table classes: each holds the Store and runs its own SQL in the
Store's transactions (one class per table, as rq keeps one class per registry)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from runner.store.database import Store


class StorePart:
    """One table's statements over one Store: `store.leases`, `store.files`, `store.daemons`,
    `store.state`. Cheap: made on each access, it holds nothing but the Store."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def begin(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction of the Store (its writer queue, its fault mapping)."""
        return self._store.begin()

    def read(self) -> AbstractContextManager[sa.Connection]:
        """A read-only transaction of the Store."""
        return self._store.read()
