"""Multi-process training beyond DDP: FSDP2 sharding of the base model (``thinkaloud.train.dist.fsdp``)."""
