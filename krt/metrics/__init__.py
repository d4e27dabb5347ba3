"""Per-response records on the hot path, and the reports read from them."""
