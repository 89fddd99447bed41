"""Text in, batches out: corpora (`sources`), downloads (`download`), token shards (`shards`),
and the training batch loader (`loader`)."""
