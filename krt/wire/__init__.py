"""What crosses a socket: the WebSocket protocol's events and the admin socket's messages.

Plain data and its encoding only (attrs + cattrs, no Trio, no engine), so the server, the
client library, the Pipecat service and the asyncio console all share one definition.
"""
