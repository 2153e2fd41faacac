"""The batching engine: the one place where ledger state changes (``engine.engine.Engine``), the fee rules,
the settlement queue, and the commands services hand it."""
