"""The realtime server: front door, sessions, responses, the process around them."""
