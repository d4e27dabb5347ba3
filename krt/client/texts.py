"""Texts the benchmarks and tools speak: what a voice agent actually sends."""

from __future__ import annotations

AGENT_REPLIES = (
    "Sure, I can help with that. Could you tell me your order number?",
    "Thanks for waiting. I found your reservation for two people on Friday at seven.",
    "Got it. Your new delivery address is saved.",
    "I'm sorry, that time slot is already taken. Would ten thirty work instead?",
    "Your current balance is one hundred twenty dollars and forty cents.",
    "Okay, I've canceled the subscription. You won't be charged again.",
    "Let me check that for you. It looks like the package left our warehouse this morning.",
    "Absolutely. I'll send a confirmation text to the number on file.",
    "The store opens at nine and closes at six on weekdays. On Saturdays it closes at four.",
    "Great, you're all set! Is there anything else I can do for you today?",
    "I didn't quite catch that. Could you repeat the last part?",
    "Your appointment is confirmed. Please arrive ten minutes early to fill out the forms.",
)
"""Short voice-agent replies, one to three sentences: what a call actually sends."""
