"""MetaSchedule plug-ins: `WarmBuilder` (builder workers that live across batches and skip TVM's
tensor intrinsics), `TrackerRunner` (runner workers, one RPC session per share of a batch), their
worker functions (`_workers`) and the fast import of the tensor intrinsics (`_fastimport`).

Nothing is imported here: `import gos_tvm.hw` stays free of TVM (see `gos_tvm.hw`)."""
