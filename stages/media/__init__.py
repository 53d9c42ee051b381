"""Media helpers behind the ingest stage: source resolution, PyAV decoding, reconnect policy.

Nothing here knows about the stage runtime, so the decoder can be tested and benchmarked bare.
"""
