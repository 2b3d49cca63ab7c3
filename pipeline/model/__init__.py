"""The MoE language model VAR routes: architecture (:mod:`.moe`), training (:mod:`.train`),
checkpoints (:mod:`.checkpoint`), its gates as per-layer learned routers (:mod:`.router`),
exact chunked passes (:mod:`.windows`), LM quality (:mod:`.evaluate`), token-id determinism
(:mod:`.determinism`) and the training text's routing statistics (:mod:`.corpus_stats`)."""
