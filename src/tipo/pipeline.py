"""``TIPO``: a loaded model (tokenizer + backend + tag database) that expands prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backends import load_backend
from .backends.base import Backend, TokenCallback
from .checkpoints import Checkpoint, resolve
from .constraints import TagTrie, TokenTable, build_vocabulary
from .errors import TipoError
from .request import ExpandRequest
from .result import ExpandResult
from .run import RequestRun, RunContext
from .sampling import random_seed
from .tags import TagDatabase
from .tokenizer import TipoTokenizer


class TIPO:
    """Expand prompts with a TIPO checkpoint.

    >>> tipo = TIPO.load("KBlueLeaf/TIPO-200M-ft")          # doctest: +SKIP
    >>> tipo.expand(tags="1girl, scenery", seed=1).prompt    # doctest: +SKIP
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: TipoTokenizer,
        *,
        tag_db: TagDatabase | None = None,
        model_name: str = "custom",
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.tag_db = tag_db if tag_db is not None else TagDatabase.bundled()
        self.model_name = model_name
        self._token_table: TokenTable | None = None
        self._vocabulary: TagTrie | None = None

    @classmethod
    def load(
        cls,
        model: str | Path | Checkpoint | None = None,
        *,
        backend: str = "auto",
        device: str = "cpu",
        dtype: str | None = None,
        tag_csv: str | Path | None = None,
        offline: bool = False,
        **backend_options: Any,
    ) -> TIPO:
        """Load a checkpoint: a Hub id (default ``KBlueLeaf/TIPO-200M-ft``, cached after the
        first download), a local Hugging Face folder, or a ``.gguf`` file."""
        checkpoint = model if isinstance(model, Checkpoint) else resolve(model, offline=offline)
        tokenizer = checkpoint.load_tokenizer()
        engine = load_backend(backend, checkpoint, device=device, dtype=dtype, **backend_options)
        db = TagDatabase.bundled()
        if tag_csv is not None:
            db = db.with_csv(tag_csv)
        return cls(engine, tokenizer, tag_db=db, model_name=checkpoint.source)

    def expand(self, tags: str = "", nl: str = "", **options: Any) -> ExpandResult:
        """Expand one prompt. Options are those of :class:`ExpandRequest` (``tag_length``,
        ``nl_length``, ``template``, ``ban``, ``seed``, ``aspect``, ``temperature`` ...)."""
        return self.run(ExpandRequest.create(tags=tags, nl=nl, **options))

    def run(self, request: ExpandRequest, on_token: TokenCallback | None = None) -> ExpandResult:
        result = self.run_many([request], on_token)[0]
        if isinstance(result, TipoError):
            raise result
        return result

    def variants(
        self, request: ExpandRequest, count: int, on_token: TokenCallback | None = None
    ) -> list[ExpandResult]:
        """``count`` variants of one request (seeds seed, seed+1, ...), decoded as one batch."""
        seed = request.seed if request.seed is not None else random_seed()
        batch = [request.with_seed((seed + i) % 2**63) for i in range(count)]
        results = self.run_many(batch, on_token)
        for result in results:
            if isinstance(result, TipoError):
                raise result
        return results  # type: ignore[return-value]

    def run_many(
        self, requests: Sequence[ExpandRequest], on_token: TokenCallback | None = None
    ) -> list[ExpandResult | TipoError]:
        """Run requests together: each round, the next step of every unfinished request goes to
        the backend as one batch. A request that fails gives its error in its place.

        ``on_token(index, token_id)`` is called as tokens are generated (``index`` is the
        sequence's place in the round's batch), for progress; an exception it raises stops
        the run (a host's interrupt button)."""
        runs = self.start_runs(requests)
        while self._round(runs, on_token):
            pass
        return [r if isinstance(r, TipoError) else r.result() for r in runs]

    def start_runs(self, requests: Sequence[ExpandRequest]) -> list[RequestRun | TipoError]:
        """One RequestRun per request (or the error that stops it), for a caller that drives
        them itself, as ``run_many`` and the server's engine loop do."""
        context = self._context(requests)
        runs: list[RequestRun | TipoError] = []
        for request in requests:
            try:
                runs.append(RequestRun(request, context))
            except TipoError as error:
                runs.append(error)
        return runs

    def _context(self, requests: Sequence[ExpandRequest]) -> RunContext:
        """Token table and vocabulary are built on first need and kept (~0.1 s and ~0.2 s)."""
        controlled = self.backend.capabilities.constraints and any(r.control for r in requests)
        if controlled and self._token_table is None:
            self._token_table = TokenTable.build(self.tokenizer)
        wants_vocabulary = controlled and any(r.control and r.vocabulary for r in requests)
        if wants_vocabulary and self._vocabulary is None:
            self._vocabulary = build_vocabulary(self.tag_db, self._token_table)
        return RunContext(
            self.tag_db,
            self.tokenizer,
            self.backend.context_length,
            self._token_table if controlled else None,
            self._vocabulary,
            self.backend.capabilities.rollback,
        )

    def _round(self, runs: list[RequestRun | TipoError], on_token: TokenCallback | None) -> bool:
        active, batch = [], []
        for index, run in enumerate(runs):
            if isinstance(run, TipoError) or run.done:
                continue
            try:
                generation_request = run.next_generation()
            except TipoError as error:
                runs[index] = error
                continue
            if generation_request is not None:
                active.append(index)
                batch.append(generation_request)
        if not batch:
            return False
        try:
            generations = self.backend.generate(batch, on_token)
        except TipoError as error:
            for index in active:
                runs[index] = error
            return True
        for index, generation in zip(active, generations, strict=True):
            run = runs[index]
            assert isinstance(run, RequestRun)
            run.accept(generation)
        return True

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> TIPO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["TIPO"]
