"""The core: one runtime per served model (admission, tokenizer pool, batch queue and packer, backend thread) and
the registry of them. It speaks capabilities (:class:`~embedserve.core.capabilities.Capability`), never URLs or
wire types, and imports neither starlette, uvicorn, the HTTP layer, nor torch."""
