"""The WebSocket client library every tool, bench and test speaks krt through."""
