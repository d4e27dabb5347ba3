"""Audio as bytes: PCM helpers, the output encoders (MP3, Opus, FLAC, …) and Ogg pages.

Below the engine and beside the text layer: nothing here knows about speech, sessions or
models, so the server, the client and the tools share it.
"""
