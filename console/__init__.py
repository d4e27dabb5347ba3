"""The Textual operator console; it attaches to a running server over the admin socket."""
