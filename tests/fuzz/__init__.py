"""The fuzz campaign of tests/test_fuzz.py (issue 16): seeded mutations of engine manifests, model
files, run directories and frames, each judged by an oracle, run in worker subprocesses.

Oracle (docs/engine_format.md and the readers' shared manifest rules): every case ends in one of

- a clear refusal: an exception of an accepted type with a message (worker.accepted), or
- a result identical to the unmutated input's (a mutation that does not change meaning: key order,
  whitespace, a BOM, another memory layout of the same pixels), or
- for a change a valid engine may carry (another mean, sigma, threshold): finite scores on which the
  Python and the C++ reader agree within the documented 1e-5 relative.

Failures: a crash or hang of the worker, memory blow-up, an error of another type ("raw" errors:
KeyError, RecursionError, a torch RuntimeError...), a "silent change" (a mutation that should have
been refused, or that must not change the result, loads and gives other scores), readers that
disagree on accepting a manifest, non-finite scores given as a verdict, a later valid call spoiled
by an earlier bad one ("poisoned"), and an existing engine destroyed by a failed build ("lost").

Modules: jsontext (manifest text with raw tokens, the contract's strict parse), contract (the shared
manifest rules restated -> what a mutation must give), cases (the deterministic case list),
mutations and frames (applying a case), fixtures (the engines under test), worker and judge (one
case in a subprocess), runner (the parent: crash/hang/memory isolation, report tables).

The case list is a pure function of SEED (``cases.all_cases``), so pytest parametrizes on case ids;
a worker (``python -m fuzz.worker FIXTURES_JSON`` from tests/) reads case ids on stdin and prints
``START id reader`` before each reader call and ``RESULT {json}`` after each case, so the parent
knows which case and reader a crash or hang belongs to.
"""

