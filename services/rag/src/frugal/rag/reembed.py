"""Background re-embedding after an explicit model change of a tenant's index.

One task per service process works through the tenants with a change in progress (woken by
ChangeEmbeddingModel, and resuming rag_reembed_queue after a restart): it embeds the chunks that have no
vector in the target model yet, a batch at a time, stores them beside the current ones
(next_model/next_embedding), and when none is left swaps the index to the new model in one transaction.
Retrieval reads the current vectors until that commit. Ingests during the change embed with both models,
so the swap never waits for new documents. A failing batch is retried later, with the error shown in
ListDocuments; several replicas may work on one tenant at once without harm (stores skip chunks already
done, the swap re-checks under the tenant lock).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from frugal.rag import store
from frugal.rag.embedding.base import EmbeddingError
from frugal.rag.engine import Caller, RagEngine

log = logging.getLogger(__name__)


class Reembedder:
    def __init__(self, engine: RagEngine, *, batch: int = 64, retry_s: float = 5.0) -> None:
        self.engine = engine
        self.batch = batch
        self.retry_s = retry_s
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        engine.on_model_change = self.kick

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rag-reembed")
            self._task.add_done_callback(self._done)

    @staticmethod
    def _done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("re-embedder stopped", exc_info=task.exception())

    def kick(self, tenant_id: str) -> None:
        if tenant_id not in self._queued:
            self._queued.add(tenant_id)
            self._queue.put_nowait(tenant_id)

    async def _run(self) -> None:
        try:
            for tenant in await store.pending_tenants(self.engine.pool):
                self.kick(tenant)
        except Exception as err:  # noqa: BLE001 - the database may be down at start; kicks still work
            log.warning("could not list pending model changes: %s", err)
        while True:
            tenant = await self._queue.get()
            self._queued.discard(tenant)
            try:
                await self.run_tenant(tenant)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - reported, retried later
                log.warning("re-embedding for %s failed, retrying in %.1f s: %s", tenant, self.retry_s, err)
                try:
                    await store.note_reembed_error(self.engine.pool, tenant, f"{type(err).__name__}: {err}")
                except Exception:  # noqa: BLE001
                    log.warning("could not record the re-embedding error for %s", tenant)
                self._retry_later(tenant)

    def _retry_later(self, tenant: str) -> None:
        async def later() -> None:
            await asyncio.sleep(self.retry_s)
            self.kick(tenant)

        task = asyncio.get_running_loop().create_task(later())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def run_tenant(self, tenant: str) -> bool:
        """Works until the tenant's change is complete (True) or there is none (False)."""
        engine = self.engine
        caller = Caller(tenant, None, f"reembed-{uuid.uuid4().hex}")
        batch_no = 0
        while True:
            state = await engine.index_state(tenant)
            target = state.target_model
            if target is None:
                return False
            embedder = engine.embedder_for(target)
            if embedder is None:
                raise RuntimeError(f"embedding model {target!r} is not available in this deployment")
            pending = await store.pending_reembed(engine.pool, tenant, target, self.batch)
            if not pending:
                if await store.complete_model_change(engine.pool, tenant, target):
                    log.info("index of %s now uses %s", tenant, target)
                    return True
                continue
            try:
                batch, _ = await engine._embed(  # noqa: SLF001 - the engine's one embedding path (cost events)
                    caller, [p.text for p in pending], "document", deadline=None,
                    purpose=f"reembed:{target}", batch_no=batch_no, embedder=embedder,
                )
            except EmbeddingError as err:
                raise RuntimeError(f"embedding with {target} failed: {err}") from None
            batch_no += 1
            await store.store_reembedded(
                engine.pool, tenant, target,
                [(p, store.vector_literal(v)) for p, v in zip(pending, batch.vectors, strict=True)],
            )

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._retries) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
